"""Key-neuron scoring (seed 002) against plain forward+backward passes on the same tokens.

The floor is one plain training-style pass per batch: a forward, the summed log-probability of
the actual next tokens, and ``backward()`` (weight gradients included, as anyone would write
it). Scoring is timed side by side with it (interleaved medians), in tokens scored per second:

* ``activation`` — one forward pass, no gradient, that unembeds nothing;
* ``grad_x_act`` — one position-separated forward and one backward for every layer at once;
* ``ig`` — per layer, ``steps`` separated forward+backward passes from the layer's block on, and
  one more forward (the completeness check). Its ratio is also given per pass (tokens x layers x steps per second),
  which says how close each of its passes comes to a plain one.

On the organism every layer is scored; on SmolLM2 IG is timed on one layer (``mlp.15``) and
the 30-layer time is extrapolated from it (a pass for ``mlp.L`` runs blocks L.. only, so the
middle layer stands for the average one). The sizing rows time one full run of the seed-002
scoring on ``templates(smol, n=200, seed=0)``: ``grad_x_act`` measured beside a plain pass over
the same sentences, ``ig`` extrapolated from that pass and IG's cost ratio (times on a shared
machine swing several-fold within minutes; ratios measured interleaved do not).

Run alone: ``python -m tests.bench key_neurons``.
"""

from __future__ import annotations

import os
import warnings

import torch

import llmscope
from llmscope.analysis.key_neurons import check_separation, key_neurons
from llmscope.behaviour import next_token_loss
from llmscope.stimuli import Stimuli, grammar, templates
from tests.bench.bench_forward import interleaved_medians

REPEATS = 3
BATCH = 16
IG_STEPS = 8
SMOL_IG_SITE = "mlp.15"
SIZING_SENTENCES = 200


def plain_pass(model, stim: Stimuli) -> None:
    """The floor: forward, summed next-token log-probability, backward (weights' gradients too)."""
    for lo, ids in stim.batches(BATCH):
        real = torch.arange(1, ids.shape[1]) < torch.as_tensor(stim.lengths[lo: lo + len(ids)])[:, None]
        next_token_loss(model(ids, return_type="logits"), ids)[:, 1:][real].sum().backward()
    model.zero_grad(set_to_none=True)


def measure(model, stim: Stimuli, ig_sites: list[str] | None) -> tuple[dict[str, float], int, int]:
    """Median seconds per method on ``stim``; the number of samples and of IG layers."""
    check_separation(model)  # once per model, not part of the throughput
    n_layers = model.cfg.n_layers if ig_sites is None else len(ig_sites)
    runs = {
        "plain forward+backward": lambda: plain_pass(model, stim),
        "activation": lambda: key_neurons(model, stim, method="activation", batch_size=BATCH, progress=False),
        "grad_x_act": lambda: key_neurons(model, stim, method="grad_x_act", batch_size=BATCH, progress=False),
        "ig": lambda: key_neurons(model, stim, method="ig", units=ig_sites, steps=IG_STEPS, batch_size=BATCH,
                                  progress=False),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # IG's completeness warning at few steps is not the point here
        med = interleaved_medians(runs, REPEATS)
    n = key_neurons(model, stim, method="activation", units=["mlp.0"], k=1, progress=False).meta["n_samples"]
    return med, n, n_layers


def rows_for(name: str, model, stim: Stimuli, ig_sites: list[str] | None) -> tuple[list[dict], dict, int, int]:
    load = os.getloadavg()[0]
    med, n, layers = measure(model, stim, ig_sites)
    base = n / med["plain forward+backward"]
    case = f"{name}: {stim.n_seqs} seqs, {n} samples, load {load:.1f}"
    rows = [dict(benchmark=f"{m} throughput", case=case, value=n / sec, unit="tokens/s (median)", goal="")
            for m, sec in med.items()]
    for m in ("activation", "grad_x_act", "ig"):
        rows.append(dict(benchmark=f"{m} / plain forward+backward", case=case, value=n / med[m] / base,
                         unit="ratio", goal=">= 0.5" if m == "grad_x_act" else ""))
    per_pass = n * layers * IG_STEPS / med["ig"] / base
    rows.append(dict(benchmark="ig per pass (tokens x layers x steps) / plain", case=f"{case}, {layers} layer(s), "
                     f"{IG_STEPS} steps", value=per_pass, unit="ratio", goal=">= 0.5"))
    return rows, med, n, layers


def sizing(model, ig_cost: float) -> list[dict]:
    """One full seed-002 scoring of SmolLM2 on the template sentences, what the lead's run costs:
    ``grad_x_act`` measured beside a plain pass over the same sentences; IG over all 30 layers
    extrapolated from that plain pass and ``ig_cost`` (IG's time per layer and step over a plain
    pass's, measured interleaved), since on a shared machine a ratio travels better than a time."""
    stim = templates(model, n=SIZING_SENTENCES, seed=0)
    load = os.getloadavg()[0]
    med = interleaved_medians({
        "plain": lambda: plain_pass(model, stim),
        "grad_x_act": lambda: key_neurons(model, stim, method="grad_x_act", batch_size=BATCH, progress=False)}, 1)
    n = key_neurons(model, stim, method="activation", units=["mlp.0"], k=1, progress=False).meta["n_samples"]
    case = f"templates(n={SIZING_SENTENCES}): {n} samples, 30 layers, load {load:.1f}"
    rows = [dict(benchmark="smollm2 plain forward+backward over them", case=case, value=med["plain"], unit="s",
                 goal=""),
            dict(benchmark="smollm2 grad_x_act, all layers (measured)", case=case, value=med["grad_x_act"], unit="s",
                 goal="whole replication <= 600")]
    for steps in (IG_STEPS, 64):
        rows.append(dict(benchmark=f"smollm2 ig, all 30 layers, {steps} steps (extrapolated)", case=case,
                         value=ig_cost * med["plain"] * 30 * steps, unit="s", goal=""))
    return rows


def run() -> list[dict]:
    organism = llmscope.load("grammar-2l")
    rows, _, _, _ = rows_for("grammar-2l", organism, grammar(organism, n_docs=8, seed=0), None)
    smol = llmscope.load("smollm2-135m")
    smol_rows, med, _, _ = rows_for("smollm2-135m", smol, templates(smol, n=48, seed=0), [SMOL_IG_SITE])
    ig_cost = med["ig"] / med["plain forward+backward"] / IG_STEPS  # one layer, one step, over a plain pass
    return rows + smol_rows + sizing(smol, ig_cost)


if __name__ == "__main__":
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(pd.DataFrame(run()).to_string(index=False))
