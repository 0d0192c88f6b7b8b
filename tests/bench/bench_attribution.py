"""Attribution screening on SmolLM2: every MLP neuron (30 x 1536) and every head (30 x 9) on the
default battery (``battery(model)``: 16 template sentences, 16 random sequences shown twice),
then exact confirmation, against the stacked exact atlas of all units.

Measured in one run, side by side:

* one backward pass over the battery's tokens (a plain forward with a graph, then the gradient of
  the summed next-token loss at the residual entering block 0), and the forward pass itself;
* plain AtP over the whole battery (one shared forward per stimuli set, one backward per
  behaviour): its wall time, and per behaviour ``(screen - forward) / behaviours`` against one
  backward pass (goal <= 1.5x; the whole battery <= 3 min);
* AtP* on a user's pick, every head for ``copying``: its wall time in backward passes (GradDrop
  runs ``L + 1`` backward passes; the QK fix one partial attention pass per head and later layer);
* confirmation: the union of the top units of every behaviour (k grown until the union holds
  ~50 units) lesioned exactly with :func:`~llmscope.analysis.attribution.confirm` (goal <= 5 min),
  and the false-negative bound's uniform sample of 100 unconfirmed units lesioned exactly with
  the atlas, its cost and the bound per behaviour;
* the stacked exact atlas of all 46,350 units, extrapolated from the sample's per-lesion cost
  (uniformly drawn units: the mix of layers and kinds of the whole), against screen + confirm
  (goal >= 100x).

Runs on every core, as a user's screen would, unless the load average already reaches the
number of cores: then on one thread (on this 2-core machine shared by other jobs, two threads
made SmolLM2's passes 4x slower than one). Read the times beside the load and threads printed
with them.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

import llmscope
from llmscope.analysis.atlas import battery, lesion_atlas
from llmscope.analysis.attribution import confirm, false_negative_bound, screen
from llmscope.analysis.key_neurons import constant_weights
from llmscope.behaviour import cross_entropy

UNION = 50
N_SAMPLE = 100
N_RANDOM = 20


def timed(fn, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, load average at the start, result)."""
    load, start = os.getloadavg()[0], time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, load, out


def plain_passes(model, bat) -> tuple[float, float]:
    """Seconds of one forward pass with a graph and of one backward pass over the battery's tokens
    (the summed next-token loss, differentiated at the residual entering block 0)."""
    forward = backward = 0.0
    held: list[torch.Tensor] = []

    def leaf(act, hook):
        held.append(act.detach().requires_grad_(True))
        return held[-1]

    with constant_weights(model), torch.enable_grad(), model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", leaf)]):
        for stim in {id(b.stimuli): b.stimuli for b in bat}.values():
            start = time.perf_counter()
            logits = model(stim.ids, return_type="logits")
            loss = cross_entropy(logits[:, :-1], stim.ids[:, 1:]).sum()
            forward += time.perf_counter() - start
            start = time.perf_counter()
            torch.autograd.grad(loss, held[-1])
            backward += time.perf_counter() - start
    return forward, backward


def union_k(screened, names: list[str], size: int) -> int:
    """The smallest k whose union of every behaviour's top k holds at least ``size`` units."""
    for k in range(1, len(screened.df)):
        if len({u for b in names for u in screened.top(k, b).index}) >= size:
            return k
    return len(screened.df)


def run() -> list[dict]:
    threads = torch.get_num_threads()
    if os.getloadavg()[0] >= (os.cpu_count() or 1):  # a loaded machine: a second thread only waits for the first
        torch.set_num_threads(1)
    try:
        return measure()
    finally:
        torch.set_num_threads(threads)


def measure() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    bat = battery(model)
    names, n_layers = bat.names, model.cfg.n_layers
    threads = torch.get_num_threads()
    rows: list[dict] = []

    def row(benchmark: str, case: str, value: float, unit: str, goal: str = "") -> None:
        rows.append(dict(benchmark=benchmark, case=case, value=value, unit=unit, goal=goal))

    forward, backward = plain_passes(model, bat)
    wall, load, screened = timed(screen, model, bat, method="atp", progress=False)
    n_units = len(screened.df)
    case = f"smollm2-135m, {n_units} units, {len(names)} behaviours, {threads} threads, load {load:.1f}"
    row("one forward pass (graph) on the battery", case, forward, "s")
    row("one backward pass on the battery", case, backward, "s")
    row("AtP screen, whole battery", case, wall, "s", "<= 180 s")
    row("AtP per behaviour / one backward", case, (wall - forward) / len(names) / backward, "ratio", "<= 1.5")

    heads = [(f"attn.{L}", None) for L in range(n_layers)]
    wall_star, load, star = timed(screen, model, bat, heads, method="atp*", behaviours=["copying"], progress=False)
    case_star = f"smollm2-135m, {len(star.df)} heads, copying, load {load:.1f}"
    row("AtP* screen (GradDrop + QK fix)", case_star, wall_star, "s")
    row("AtP* per behaviour / one backward", case_star, (wall_star - forward) / backward, "ratio",
        f"<= L + 2 = {n_layers + 2}")

    k = union_k(screened, names, UNION)
    wall_confirm, load, confirmed = timed(confirm, model, bat, screened, k=k, n_sample=0, n_random=N_RANDOM,
                                          progress=False)
    union = int(confirmed.df["exact"].sum())
    case_confirm = f"top {k} per behaviour, {union} units + {N_RANDOM} random groups, load {load:.1f}"
    row("confirm the union exactly", case_confirm, wall_confirm, "s", "<= 300 s")
    quality = confirmed.behaviours
    row("Spearman estimate vs exact harm (median over behaviours)", case_confirm,
        float(quality["spearman"].median()), "rho")
    row("breakers found in the top k (all behaviours)", case_confirm, float(quality["breakers_top"].sum()), "units")

    pool = screened.df.index[~confirmed.df["exact"].to_numpy()]
    sample = pool[np.sort(np.random.default_rng(0).choice(len(pool), N_SAMPLE, replace=False))]
    wall_sample, load, exact = timed(lesion_atlas, model, bat, sample, n_random=1, progress=False)
    case_sample = f"{N_SAMPLE} uniform unconfirmed units, load {load:.1f}"
    row("false-negative sample, exact", case_sample, wall_sample, "s")
    for b in names:
        hits = int(exact.df[f"breaks_{b}"].sum())
        row(f"missed breakers of {b} (95% bound; sample breakers {hits})", case_sample,
            false_negative_bound(hits, N_SAMPLE, len(pool)), "units")
    per_lesion = wall_sample / (len(exact.df) + len(exact.controls) + 1)
    full = per_lesion * (n_units + N_RANDOM + 1)
    row("stacked exact atlas of all units (extrapolated)", case_sample, full, "s (extrapolated)")
    row("exact atlas / (AtP screen + confirm)", case, full / (wall + wall_confirm), "ratio", ">= 100")
    return rows
