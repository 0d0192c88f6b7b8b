"""Tuning cost on SmolLM2: every MLP neuron (30 layers x 1536 = 46,080) over ~20,000 recorded
tokens, against one plain read of the same store from disk, the floor (the data must be read once).

The store is recorded once (fp16, all 30 ``mlp.L`` sites, English template sentences with gold
``pos_tag``) into a temporary folder, and deleted at the end; recording is timed but is not the
goal. Then fresh processes, interleaved ``REPEATS`` times, each measure one side:

* ``read``: open the store with zarr and read every site array, one whole site at a time;
* ``tuning``: ``Recording.open`` + ``tuning(rec, all 30 sites, "pos_tag")`` with its shuffle
  control (one table, FDR over all 46,080 neurons).

Each child prints its wall time, its CPU time (for tuning, its worker processes' too: one per
core, each reading and analysing its own parts of the store), the load average when it started,
and its peak RSS (``VmHWM``; the tuning child imports llmscope, so torch, which the read child
does not; its largest worker's is reported beside it). On a shared 2-core machine other work
slows both sides, the two-process tuning more than the one-threaded read; the CPU times give
the ratio an idle machine would approach (tuning CPU over two cores).

Run alone: ``python -m tests.bench tuning``; a child: ``python -m tests.bench.bench_tuning read STORE``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.bench_recording import _status_mib

REPO = Path(__file__).resolve().parents[2]
N_LAYERS = 30
SITES = [f"mlp.{i}" for i in range(N_LAYERS)]
N_SENTENCES = 2600  # ~7.7 tokens each with SmolLM2's tokenizer (BOS included): ~20,000 tokens
LABEL = "pos_tag"
REPEATS = 3


def record_store(store: Path) -> tuple[int, float]:
    """Record the stimuli into ``store``; return the number of tokens and the seconds it took."""
    import llmscope
    from llmscope.stimuli import templates

    model = llmscope.load("smollm2-135m")
    stim = templates(model, n=N_SENTENCES, seed=0)
    start = time.perf_counter()
    llmscope.record(model, stim, SITES, store=store, batch_size=64, progress=False)
    return len(stim), time.perf_counter() - start


def read(store: str) -> dict:
    """The floor: every site array read from disk once, by zarr alone."""
    import numpy as np
    import zarr

    load, start, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    group = zarr.open_group(store, mode="r")
    total = 0.0
    for site in SITES:
        total += float(np.asarray(group[site][:])[-1, -1])  # touch the data: nothing is left lazy
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "load": load, "check": total}


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (tuning's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def tune(store: str) -> dict:
    from llmscope.analysis.tuning import tuning
    from llmscope.recording import Recording

    load, start, cpu = os.getloadavg()[0], time.perf_counter(), _cpu()
    result = tuning(Recording.open(store), SITES, LABEL, progress=False)
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "cpu": _cpu() - cpu, "load": load, "workers_peak": children,
            "units": len(result.df), "tokens": result.meta["n_tokens"],
            "significant": result.meta["n_significant"], "shuffled": result.meta["n_significant_shuffled"][0]}


def child(mode: str, store: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.bench.bench_tuning", mode, str(store)], cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run() -> list[dict]:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        store = Path(tmp) / "smol.zarr"
        n_tokens, rec_seconds = record_store(store)
        runs: dict[str, list[dict]] = {"read": [], "tuning": []}
        for _ in range(REPEATS):
            for mode in runs:
                runs[mode].append(child(mode, store))
    seconds = {m: statistics.median(r["seconds"] for r in v) for m, v in runs.items()}
    cpu = {m: statistics.median(r["cpu"] for r in v) for m, v in runs.items()}
    loads = [r["load"] for v in runs.values() for r in v]
    peak = {m: max(r["peak"] for r in v) for m, v in runs.items()}
    workers_peak = max(r["workers_peak"] for r in runs["tuning"])
    last = runs["tuning"][-1]
    case = (f"{last['units']} neurons x {last['tokens']} tokens ({n_tokens} recorded, fp16 zarr), "
            f"median of {REPEATS} fresh processes")
    row = dict(case=case, goal="")
    return [
        dict(row, benchmark="load average (1 min) before", value=load, unit="", case="2-core machine, shared"),
        dict(row, benchmark="record 30 mlp sites (not the goal)", value=rec_seconds, unit="s"),
        dict(row, benchmark="read every site array (zarr, the floor)", value=seconds["read"], unit="s (median)"),
        dict(row, benchmark="tuning over pos_tag, with shuffle control", value=seconds["tuning"], unit="s (median)",
             goal="<= 60"),
        dict(row, benchmark="tuning / read", value=seconds["tuning"] / seconds["read"], unit="ratio", goal="<= 3"),
        dict(row, benchmark="load average (1 min) at the children's starts", value=max(loads),
             unit=f"max (min {min(loads):.2f})"),
        dict(row, benchmark="read CPU, all threads", value=cpu["read"], unit="s (median)"),
        dict(row, benchmark="tuning CPU, all threads", value=cpu["tuning"], unit="s (median)",
             case=f"{cpu['tuning'] / last['units'] * 1e6:.0f} us per neuron, reading included"),
        dict(row, benchmark="tuning CPU / 2 cores / read (idle-machine ratio)", value=cpu["tuning"] / 2 / seconds["read"],
             unit="ratio", case="if both cores were free and the workers never waited"),
        dict(row, benchmark="read peak RSS", value=peak["read"], unit="MiB"),
        dict(row, benchmark="tuning peak RSS", value=peak["tuning"], unit="MiB", goal="< 1536"),
        dict(row, benchmark="tuning worker process peak RSS", value=workers_peak, unit="MiB (largest worker)",
             case="a forked worker shares its parent's pages until it writes them; each counts those it touched"),
        dict(row, benchmark="FDR-significant neurons, real / shuffled", value=last["significant"],
             unit=f"neurons (shuffled: {last['shuffled']})"),
    ]


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    result = {"read": read, "tuning": tune}[mode](path)
    print(json.dumps({**result, "peak": _status_mib("VmHWM")}))
