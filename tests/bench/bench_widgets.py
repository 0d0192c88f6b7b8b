"""Widgets in the kernel, and what they send.

* AblationPanel: a slider move (the `_move` command: the gains checked, one intervened forward,
  the metric, the top-k distributions and the reply's buffers) vs a bare forward of SmolLM2 on
  the same 1x32 tokens, timed side by side (interleaved).
* AttentionMap on SmolLM2 (all 270 heads): bytes of the first paint (the `_overview` reply) and
  of one focused head (`_head`), as `wire.reply_bytes` counts them (JSON plus buffers), against
  the HTML CircuitsVis's `attention_patterns` writes for the same tokens (what Jupyter shows
  offline: its props JSON plus its inline script), at 128 and 512 tokens. Long prompts (2,048
  and 4,096 tokens) are bench_long_prompts.
* Raster, kernel half of the first paint: building a 1,000 units x 1,000 tokens raster of
  SmolLM2's mlp.0, and its first `_window` reply (time and bytes).
* The front-end bundle: every file of llmscope/static/, raw and gzipped.
"""

from __future__ import annotations

import gzip
import itertools
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

import llmscope
from llmscope.widgets import wire
from llmscope.widgets.ablation import AblationPanel
from llmscope.widgets.attention import AttentionMap
from llmscope.widgets.base import STATIC
from llmscope.widgets.raster import Raster
from tests.bench.bench_forward import interleaved_medians

REPEATS = 9
TOKENS = 32
ATTENTION_TOKENS = (128, 512)
CV_HEADS = 12  # the CircuitsVis case: 12 heads at 512 tokens
RASTER = (1000, 1000)  # units x tokens
PROSE = Path(__file__).resolve().parents[2] / "ARCHITECTURE.md"  # varied English, over 1,000 tokens


def _median_s(fn: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _english(model, n: int) -> llmscope.Stimuli:
    """The first ``n`` tokens of English prose (BOS first), as stimuli."""
    ids = model.to_tokens(PROSE.read_text())[0, :n]
    if len(ids) < n:
        raise ValueError(f"{PROSE.name} has only {len(ids)} tokens; the bench needs {n}")
    return llmscope.Stimuli.from_ids(model, [ids.tolist()], name=f"english {n}", n_bos=1)


def ablation_move(model) -> list[dict]:
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


def circuitsvis_bytes(model, stim: llmscope.Stimuli, tokens: list[str], n_heads: int) -> int:
    """Bytes of the HTML ``circuitsvis.attention.attention_patterns`` writes for the first
    ``n_heads`` heads (layer by layer) on ``stim``: its offline form, the one Jupyter shows
    without a network (``local_src``; its ``_repr_html_`` would probe the network first)."""
    from circuitsvis.attention import attention_patterns

    layers = -(-n_heads // model.cfg.n_heads)
    patterns = []
    hooks = [(f"blocks.{L}.attn.hook_pattern", lambda p, hook: patterns.append(p[0].float())) for L in range(layers)]
    with torch.no_grad():
        model.run_with_hooks(stim.ids, fwd_hooks=hooks, return_type=None)
    html = attention_patterns(tokens=tokens, attention=torch.cat(patterns)[:n_heads])
    return len(html.local_src.encode())


def attention_bytes(model) -> list[dict]:
    rows = []
    n_all = model.cfg.n_layers * model.cfg.n_heads
    for n in ATTENTION_TOKENS:
        stim = _english(model, n)
        amap = AttentionMap(model, stim)
        first = wire.reply_bytes(*amap._overview({"seq": 1}, []))
        head = wire.reply_bytes(*amap._head({"seq": 2, "layer": amap.focus[0], "head": amap.focus[1]}, []))
        largest = max(p["buffer"].nbytes for layer in amap._view.heads for p in layer)
        cv = circuitsvis_bytes(model, stim, amap._view.tokens, CV_HEADS)
        case = f"smollm2-135m, {n} tokens"
        rows += [
            dict(benchmark=f"AttentionMap first paint (all {n_all} heads)", case=case, value=first / 1e3, unit="kB",
                 goal=""),
            dict(benchmark="AttentionMap one focused head", case=case, value=head / 1e3, unit="kB",
                 goal="<= 40" if n == 512 else ""),
            dict(benchmark=f"largest head's pattern of the {n_all}", case=case, value=largest / 1e3, unit="kB",
                 goal="<= 40" if n == 512 else ""),
            dict(benchmark=f"CircuitsVis attention_patterns HTML, {CV_HEADS} heads", case=case, value=cv / 1e3,
                 unit="kB", goal=""),
            dict(benchmark=f"(first paint + one head) / CircuitsVis {CV_HEADS} heads", case=case,
                 value=(first + head) / cv, unit="ratio", goal="<= 0.05" if n == 512 else ""),
        ]
    return rows


def raster_kernel(model) -> list[dict]:
    n_units, n_tokens = RASTER
    rec = llmscope.record(model, _english(model, n_tokens + 1), ["mlp.0"], dtype="float32", progress=False)
    units = list(range(n_units))
    build_s = _median_s(lambda: Raster(rec, "mlp.0", units=units), repeats=3)
    raster = Raster(rec, "mlp.0", units=units)
    seqs = itertools.count(1)
    window = {"u0": 0, "u1": n_units, "t0": 0, "t1": n_tokens}
    ask = lambda: raster._window({"seq": next(seqs), **window}, [])  # noqa: E731
    reply_bytes = wire.reply_bytes(*ask())
    case = f"smollm2-135m mlp.0, {n_units} units x {n_tokens} tokens"
    return [
        dict(benchmark="Raster build (spikes, sort, codes)", case=case, value=build_s * 1e3, unit="ms (median)",
             goal=""),
        dict(benchmark="Raster first window reply (kernel)", case=case, value=_median_s(ask) * 1e3,
             unit="ms (median)", goal=""),
        dict(benchmark="Raster first window reply", case=case, value=reply_bytes / 1e3, unit="kB", goal=""),
    ]


def bundle() -> list[dict]:
    files = sorted(p for p in STATIC.iterdir() if p.suffix in (".js", ".css"))
    raw = [p.read_bytes() for p in files]
    case = f"llmscope/static: {len(files)} files"
    return [
        dict(benchmark="front-end bundle", case=case, value=sum(map(len, raw)) / 1e3, unit="kB", goal=""),
        dict(benchmark="front-end bundle, gzipped", case=case,
             value=sum(len(gzip.compress(b, compresslevel=9)) for b in raw) / 1e3, unit="kB", goal="<= 300"),
    ]


def run() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    return ablation_move(model) + attention_bytes(model) + raster_kernel(model) + bundle()
