"""Lesion atlas cost, stacked (as shipped: many lesions in one forward pass, each pass resumed at
the first block its lesions change) against one intervened forward pass per lesion and stimulus
set (``stack=False``, the plain way).

* grammar-2l: every MLP neuron (2 x 512) and head (8) over the whole default battery
  (``battery(model)``: 16 documents, 64 agreement pairs), plus the 20 random-group controls, in
  full; the plain side on a random sample of the same units, extrapolated per lesion. The two
  sides run interleaved in ``SLICES`` rounds (the machine's speed drifts by +-20% over
  minutes): each round lesions a slice of the plain sample one forward at a time, then the
  next slice of the units (and its share of the controls) stacked, so drift hits both alike.
* smollm2-135m: all 270 heads and 20 random-group controls on a 64-sequence battery
  (``battery(model, n_docs=32)``: 32 template sentences, 32 random sequences shown twice;
  SmolLM2 has no agreement pairs), in full (6-7 minutes); the plain side on one head of every
  third layer (a lesion's cost depends on its layer), extrapolated per lesion, its halves
  (alternate sampled layers) before and after the stacked run as for the organism.

Each side reports wall and CPU seconds and the load average when it started. The organism runs
on one torch thread (its small matrices gain little from a second one, and CPU seconds of one
thread are what an idle core would take); SmolLM2 runs on every core, as a user's atlas would,
since its goal is the wall time on this machine (on a shared machine, read it beside the load).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

import llmscope
from llmscope.analysis.atlas import battery, lesion_atlas
from llmscope.sites import unit_index

ORGANISM_UNITS = [("mlp.0", None), ("mlp.1", None), ("attn.0", None), ("attn.1", None)]
N_CONTROLS = 20
PLAIN_SAMPLE = 40
SLICES = 4  # rounds of (a quarter of the plain sample, a quarter of the units stacked)


def combined(*runs: dict) -> dict:
    """The runs of one side as one: seconds and lesions added, the first run's load."""
    return dict(wall=sum(r["wall"] for r in runs), cpu=sum(r["cpu"] for r in runs), load=runs[0]["load"],
                lesions=sum(r["lesions"] for r in runs))


def timed(model, bat, units, **kwargs) -> dict:
    """Run one atlas; its wall and CPU seconds, lesions run (units or groups, controls, intact)."""
    load, start, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = lesion_atlas(model, bat, units, progress=False, **kwargs)
    lesions = len(result.df) + len(result.controls) + 1
    return dict(wall=time.perf_counter() - start, cpu=time.process_time() - cpu, load=load, lesions=lesions,
                result=result)


def rows(name: str, stacked: dict, plain: dict, total: int, goal: str, ratio_goal: str) -> list[dict]:
    """Per-lesion costs of both sides, the ratio, and the whole atlas's seconds (``total`` lesions);
    the goals are the issue's: a ratio for the organism, wall seconds for both."""
    out = []
    for side, run in (("stacked", stacked), ("one forward per lesion", plain)):
        case = f"{name}, {run['lesions']} lesions run, load {run['load']:.1f}"
        out += [dict(benchmark=f"atlas {side}: wall per lesion", case=case, value=run["wall"] / run["lesions"],
                     unit="s", goal=""),
                dict(benchmark=f"atlas {side}: CPU per lesion", case=case, value=run["cpu"] / run["lesions"],
                     unit="s", goal="")]
    for clock in ("wall", "cpu"):
        ratio = (plain[clock] / plain["lesions"]) / (stacked[clock] / stacked["lesions"])
        out.append(dict(benchmark=f"atlas one-per-lesion / stacked ({clock})", case=name, value=ratio,
                        unit="ratio", goal=ratio_goal))
        seconds = stacked[clock] / stacked["lesions"] * total
        out.append(dict(benchmark=f"atlas stacked, {total} lesions ({clock})", case=name, value=seconds,
                        unit="s" if stacked["lesions"] == total else "s (extrapolated)",
                        goal=goal if clock == "wall" else ""))
    return out


def organism() -> list[dict]:
    model = llmscope.load("grammar-2l")
    bat = battery(model)
    units = unit_index(model, ORGANISM_UNITS)
    slices = np.array_split(np.arange(len(units)), SLICES)
    plain, stacked = [], []
    for i, part in enumerate(slices):  # plain and stacked in alternating slices
        plain.append(timed(model, bat, ORGANISM_UNITS, seed=i, n_sample=PLAIN_SAMPLE // SLICES, n_controls=1,
                           stack=False))
        stacked.append(timed(model, bat, units[part], n_controls=N_CONTROLS // SLICES, seed=i))
    return rows(f"grammar-2l, {len(units)} units + {N_CONTROLS} controls in {SLICES} interleaved slices",
                combined(*stacked), combined(*plain), len(units) + N_CONTROLS + 1, "<= 120 s", ">= 3")


def smollm2() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    bat = battery(model, n_docs=32)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    sample = [(f"attn.{L}", [L % n_heads]) for L in range(0, n_layers, 3)]
    before = timed(model, bat, sample[::2], n_controls=1, stack=False)
    stacked = timed(model, bat, [(f"attn.{L}", None) for L in range(n_layers)], n_controls=N_CONTROLS)
    plain = combined(before, timed(model, bat, sample[1::2], n_controls=1, stack=False))
    total = n_layers * n_heads + N_CONTROLS + 1
    return rows(f"smollm2-135m, {n_layers * n_heads} heads + {N_CONTROLS} controls, {torch.get_num_threads()} threads",
                stacked, plain, total, "<= 600 s", "")


def run() -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = organism()
    finally:
        torch.set_num_threads(threads)
    return rows + smollm2()
