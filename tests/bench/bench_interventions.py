"""Intervention overhead: a slider move (a new gain on 10 neurons, entered, one forward, exited)
vs a bare forward of SmolLM2 at 1x64 tokens, timed side by side (interleaved); the cost of
entering and leaving the ``with`` block alone, which is all an intervention adds besides its hook;
and an activation-patching map (``patching``, positions stacked into one pass) vs the same map
run the plain way, one intervened forward per site x position."""

from __future__ import annotations

import itertools
import time

import torch

import llmscope
from llmscope.analysis.patching import patching
from llmscope.behaviour import evaluate, logit_diff
from llmscope.interventions import gain, intervene, patch
from llmscope.stimuli import Stimuli, ioi
from tests.bench.bench_forward import interleaved_medians

REPEATS = 7
BLOCKS = 200
PATCH_SITES = ["resid.0", "resid.6", "resid.12", "resid.18", "resid.24", "resid.30"]


def slider() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    ids = torch.randint(100, model.cfg.d_vocab, (1, 64), generator=torch.Generator().manual_seed(0))
    factors = itertools.cycle([0.0, 0.5, 2.0, 4.0])

    def slider_move() -> None:
        with intervene(model, gain("mlp.15", range(10), factor=next(factors))):
            model(ids)

    with torch.no_grad():
        med = interleaved_medians({"bare forward": lambda: model(ids), "gain forward": slider_move}, REPEATS)
    t = time.perf_counter()
    for _ in range(BLOCKS):
        with intervene(model, gain("mlp.15", range(10), factor=next(factors))):
            pass
    block = (time.perf_counter() - t) / BLOCKS
    ratio = med["gain forward"] / med["bare forward"]
    row = dict(case="1x64", unit="ms (median)", goal="")
    return [
        dict(row, benchmark="bare bridge forward", value=med["bare forward"] * 1e3),
        dict(row, benchmark="gain(10 neurons) forward", value=med["gain forward"] * 1e3),
        dict(row, benchmark="gain forward / bare", value=ratio, unit="ratio", goal="<= 1.15"),
        dict(benchmark="intervene enter + exit (new gain)", case="no forward", value=block * 1e6,
             unit="µs (mean)", goal=""),
    ]


def ioi_diff(logits, stim: Stimuli):
    return logit_diff(logits, stim, good="io_id", bad="s_id")


def patching_speed() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    clean = ioi(model, n=1, seed=0, corrupt=True)
    corrupt = clean.corrupt
    width = int(clean.lengths.max())

    def plain() -> None:  # the definition: one intervened forward per site x position
        _, source = model.run_with_cache(clean.ids)
        target = Stimuli(corrupt.ids, corrupt.lengths, clean.tokens.assign(token=corrupt.tokens["token"]))
        for s in PATCH_SITES:
            for p in range(width):
                with intervene(model, patch(source, s, positions=[p])):
                    evaluate(model, target, ioi_diff, batch_size=target.n_seqs)

    with torch.no_grad():
        med = interleaved_medians({"plain": plain, "stacked": lambda: patching(model, clean, corrupt, ioi_diff,
                                                                             sites=PATCH_SITES, progress=False)}, 1)
    case = f"1 IOI prompt x {width} positions x {len(PATCH_SITES)} resid sites"
    row = dict(case=case, unit="s (median)", goal="")
    return [
        dict(row, benchmark="patching map, one forward per site x position", value=med["plain"]),
        dict(row, benchmark="patching map, positions stacked (patching())", value=med["stacked"]),
        dict(row, benchmark="patching speed-up", value=med["plain"] / med["stacked"], unit="x"),
    ]


def run() -> list[dict]:
    return slider() + patching_speed()
