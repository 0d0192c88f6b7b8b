"""Widgets in the kernel: an AblationPanel slider move (the `_move` command: the gains checked,
one intervened forward, the metric, the top-k distributions and the reply's buffers) vs a bare
forward of SmolLM2 on the same 1x32 tokens, timed side by side (interleaved)."""

from __future__ import annotations

import itertools

import torch

import llmscope
from llmscope.widgets.ablation import AblationPanel
from tests.bench.bench_forward import interleaved_medians

REPEATS = 9
TOKENS = 32


def ablation_move() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    ids = torch.randint(100, model.cfg.d_vocab, (1, TOKENS), generator=torch.Generator().manual_seed(0))
    stim = llmscope.Stimuli.from_ids(model, ids.tolist(), name="bench")
    panel = AblationPanel(model, stim, units=[("attn.15", 0), ("attn.20", 3), ("mlp.10", 7)])
    factors = itertools.cycle([[0.0, 1.0, 1.0], [0.5, 2.0, 1.0], [1.0, 0.0, 1.5]])
    seqs = itertools.count(1)

    def move() -> None:
        reply, _ = panel._move({"seq": next(seqs), "factors": next(factors), "mode": "zero"}, [])
        assert reply["ok"], reply["error"]

    with torch.no_grad():
        med = interleaved_medians({"bare forward": lambda: model(ids), "slider move": move}, REPEATS)
    row = dict(case=f"smollm2-135m, 1x{TOKENS}", unit="ms (median)", goal="")
    return [
        dict(row, benchmark="bare bridge forward", value=med["bare forward"] * 1e3),
        dict(row, benchmark="AblationPanel slider move (kernel)", value=med["slider move"] * 1e3),
        dict(row, benchmark="slider move / bare forward", value=med["slider move"] / med["bare forward"],
             unit="ratio", goal="<= 1.15"),
    ]


def run() -> list[dict]:
    return ablation_move()
