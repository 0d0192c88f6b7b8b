"""Recording cost on SmolLM2: tokens/s of ``record`` (two MLP sites, fp16, into a zarr store
on disk) vs a bare forward of the same batches, timed side by side (interleaved); the cost of
the crc32c checksum on every chunk, on record and on read (organism stores written with and without
the codec, so that the forward pass weighs little; timed interleaved in CPU time on one torch thread,
which a crowded machine disturbs less than wall time; reads come from the page cache: they price the
CPU work); and peak
RSS while recording 1x vs 10x the stimuli, each in a fresh process so the peaks are independent.

The child process is this module: ``python -m tests.bench.bench_recording N_SEQS STORE``
loads the model, warms it up, resets the kernel's peak-RSS mark (loading weights peaks
higher than recording does, and would hide it), records N_SEQS induction sequences into
STORE and prints the peak RSS during the recording and the RSS just before it, in MiB
(Linux ``/proc``), and the file-backed part of the RSS at the end.

The warm-up is one full forward pass and a one-sequence recording in memory. The full pass
matters: the weights are memory-mapped from the cached safetensors file, and a pass that
stops early reads only the embedding rows of the tokens it sees. Without it, recording more
random-token sequences pages in more embedding rows (file-backed RSS, bounded by the file's
size and shared with other processes that map it), which looks like growth with the number
of stimuli but is the model, not the recording; the ``file-backed`` rows show this part.
"""

from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch
import zarr

import llmscope
from llmscope import recording
from llmscope.recording import Recording, record
from llmscope.stimuli import induction
from tests.bench.bench_forward import interleaved_medians

REPO = Path(__file__).resolve().parents[2]
SPEED_SITES = ["mlp.15", "mlp.29"]  # the last layer too, so the forward pass cannot stop early
SPEED_SEQS, HALF_LEN, BATCH = 16, 31, 8  # 16 x 63 tokens, 2 batches
REPEATS = 3
CRC_DOCS, CRC_SITES, CRC_REPEATS, READ_REPEATS = 80, ["mlp.0", "mlp.1", "attn.0", "attn.1"], 7, 41
RSS_SITES = ["mlp.3", "resid.4"]
RSS_SEQS = 16  # 1x; 10x is 160


def speed() -> list[dict]:
    model = llmscope.load("smollm2-135m")
    stim = induction(model, n_seqs=SPEED_SEQS, half_len=HALF_LEN, seed=0)
    batches = [ids for _, ids in stim.batches(BATCH)]
    tmp = tempfile.TemporaryDirectory(prefix="bench-recording-")
    runs = iter(range(10**6))

    def bare() -> None:
        with torch.no_grad():
            for ids in batches:
                model(ids)

    def recording() -> None:  # a new store each time: an existing one would be resumed, not redone
        record(model, stim, SPEED_SITES, store=Path(tmp.name) / f"r{next(runs)}.zarr",
               batch_size=BATCH, progress=False)

    with tmp:
        med = interleaved_medians({"bare": bare, "record": recording}, REPEATS)
    case = f"{SPEED_SEQS}x{2 * HALF_LEN + 1} tok, batch {BATCH}, {'+'.join(SPEED_SITES)} fp16 -> zarr"
    rate = {k: len(stim) / v for k, v in med.items()}
    return [
        dict(benchmark="bare forward", case=case, value=rate["bare"], unit="tokens/s (median)", goal=""),
        dict(benchmark="record", case=case, value=rate["record"], unit="tokens/s (median)", goal=""),
        dict(benchmark="record / bare forward", case=case, value=rate["record"] / rate["bare"],
             unit="ratio", goal=">= 0.85"),
    ]


@contextmanager
def _unchecksummed() -> Iterator[None]:
    """Stores made inside are written without the crc32c codec: the baseline that prices it."""
    codecs, recording._CHECKSUM = recording._CHECKSUM, ()
    try:
        yield
    finally:
        recording._CHECKSUM = codecs


def checksums() -> list[dict]:
    model = llmscope.load("grammar-2l")  # a small forward: the writes and reads weigh the most here
    stim = llmscope.stimuli.grammar(model, n_docs=CRC_DOCS, seed=0)
    tmp = tempfile.TemporaryDirectory(prefix="bench-recording-crc-")
    root, runs = Path(tmp.name), iter(range(10**6))

    def recorder(context: Callable) -> Callable[[], None]:
        def run() -> None:  # a new store each time: an existing one would be resumed, not redone
            with context():
                record(model, stim, CRC_SITES, store=root / f"r{next(runs)}.zarr", progress=False)
        return run

    def reader(rec: Recording, dtype: str | None) -> Callable[[], object]:
        return lambda: [rec.responses(s, dtype=dtype) for s in CRC_SITES]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time of a forward on 1 thread is steady; on 2, waiting threads spin it up
    with tmp:
        rec_med = interleaved_medians({"crc": recorder(nullcontext), "plain": recorder(_unchecksummed)},
                                      CRC_REPEATS, time.process_time)
        with _unchecksummed():
            record(model, stim, CRC_SITES, store=root / "plain.zarr", progress=False)
        record(model, stim, CRC_SITES, store=root / "crc.zarr", progress=False)
        crc, plain = Recording.open(root / "crc.zarr"), Recording.open(root / "plain.zarr")
        bare = [zarr.open_array(root / "plain.zarr" / s, mode="r") for s in CRC_SITES]
        read_med = interleaved_medians({
            "crc, stored": reader(crc, None), "plain, stored": reader(plain, None),
            "crc, float32": reader(crc, "float32"), "plain, float32": reader(plain, "float32"),
            "zarr": lambda: [a[:] for a in bare]}, READ_REPEATS, time.process_time)
    torch.set_num_threads(threads)
    mb = len(stim) * sum(llmscope.site(model, s).n_units * math.prod(llmscope.site(model, s).shape[1:])
                         for s in CRC_SITES) * 2 / 2**20
    case = f"grammar-2l, {CRC_DOCS} docs ({len(stim)} tok), {'+'.join(CRC_SITES)} fp16 ({mb:.0f} MB), 1 thread"
    ms = dict(case=case, unit="ms CPU (median)", goal="")
    ratio = dict(case=case, unit="ratio", goal="<= 1.05")
    return [
        dict(ms, benchmark="record, crc32c chunks", value=1e3 * rec_med["crc"]),
        dict(ms, benchmark="record, no checksum", value=1e3 * rec_med["plain"]),
        dict(ratio, benchmark="record: crc32c / no checksum", value=rec_med["crc"] / rec_med["plain"]),
        dict(ms, benchmark="read every row as stored (fp16), crc32c", value=1e3 * read_med["crc, stored"]),
        dict(ms, benchmark="read every row as stored (fp16), no checksum", value=1e3 * read_med["plain, stored"]),
        dict(ratio, benchmark="read as stored: crc32c / no checksum",
             value=read_med["crc, stored"] / read_med["plain, stored"]),
        dict(ms, benchmark="read every row as float32, crc32c", value=1e3 * read_med["crc, float32"]),
        dict(ms, benchmark="read every row as float32, no checksum", value=1e3 * read_med["plain, float32"]),
        dict(ratio, benchmark="read as float32: crc32c / no checksum",
             value=read_med["crc, float32"] / read_med["plain, float32"]),
        dict(ms, benchmark="bare zarr read of the unchecksummed store (a floor)", value=1e3 * read_med["zarr"]),
    ]


def _status_mib(field: str) -> float:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``RssFile``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child_rss(n_seqs: int, store: Path) -> dict[str, float]:
    """``{"before", "peak"}`` RSS (MiB) of a fresh process recording ``n_seqs`` sequences."""
    out = subprocess.run([sys.executable, "-m", "tests.bench.bench_recording", str(n_seqs), str(store)],
                         cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-recording-rss-") as tmp:
        one = child_rss(RSS_SEQS, Path(tmp) / "x1.zarr")
        ten = child_rss(10 * RSS_SEQS, Path(tmp) / "x10.zarr")
    case = f"{'+'.join(RSS_SITES)}, {RSS_SEQS} vs {10 * RSS_SEQS} x {2 * HALF_LEN + 1} tok, fresh processes"
    row = dict(case=case, unit="MiB", goal="")
    return [
        dict(row, benchmark="record peak RSS, 1x stimuli", value=one["peak"]),
        dict(row, benchmark="record peak RSS, 10x stimuli", value=ten["peak"]),
        dict(row, benchmark="record peak above pre-record RSS, 1x", value=one["peak"] - one["before"]),
        dict(row, benchmark="record peak above pre-record RSS, 10x", value=ten["peak"] - ten["before"]),
        dict(row, benchmark="file-backed RSS (mapped weights) after, 1x", value=one["file"]),
        dict(row, benchmark="file-backed RSS (mapped weights) after, 10x", value=ten["file"]),
        dict(benchmark="record peak RSS growth 1x -> 10x", case=case,
             value=100 * (ten["peak"] - one["peak"]) / one["peak"], unit="%", goal="< 10"),
    ]


def run() -> list[dict]:
    return speed() + checksums() + memory()


if __name__ == "__main__":
    n_seqs, store = int(sys.argv[1]), sys.argv[2]
    model = llmscope.load("smollm2-135m")
    stim = induction(model, n_seqs=n_seqs, half_len=HALF_LEN, seed=0)
    with torch.no_grad():
        model(stim.ids[:1])  # every weight paged in: see the module's docstring
    record(model, stim.select_seqs([0]), RSS_SITES, progress=False)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM, the peak RSS mark
    before = _status_mib("VmRSS")
    record(model, stim, RSS_SITES, store=store, batch_size=BATCH, progress=False)
    print(json.dumps({"before": before, "peak": _status_mib("VmHWM"), "file": _status_mib("RssFile")}))
