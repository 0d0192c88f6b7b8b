"""`make binder-check`: build what Binder builds from ``binder/``, then run every tutorial in it.

Binder (repo2docker) clones the repository, runs ``pip install -r binder/requirements.txt`` in it
and then ``binder/postBuild``. This script does the same in a fresh venv outside the repository:

1. the committed HEAD is exported (``git archive``), as Binder clones it: uncommitted changes are
   not seen (a warning says so);
2. ``binder/requirements.txt`` alone is installed from the export's root, so ``.[extras]`` is a
   non-editable install, as Binder's is. Its one line that this machine cannot reach, the CPU-torch
   index, is dropped: pip's own configuration here names the local package source, which serves
   the same CPU build. The pin stays;
3. ``binder/postBuild`` runs with the venv first on PATH and a fresh ``LLMSCOPE_CACHE``;
4. every file of the package at HEAD (organism weights, widget bundles, data) must be in
   site-packages, byte for byte, and the installed package must load the organism and the widgets;
5. each notebook runs with ``jupyter nbconvert --execute`` into a temporary copy (never in place),
   offline, one at a time, while the kernel's RSS (kernel plus its children, summed) is sampled.

Prints a table (notebook, wall time, peak RSS, status) with the build time and sizes, writes it to
``artifacts/binder_check.json``, and exits 1 when a notebook fails, a package file is missing, or a
kernel goes over the budget (mybinder.org gives a pod about 2 GB).

    python binder/check.py [--only 04] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MB = 1536  # 1.5 GiB per notebook: a Binder pod has about 2 GB
INDEX_LINE = re.compile(r"^\s*--(extra-)?index-url\b")
SAMPLE_S = 0.1

# What the installed package must do (run by the venv's Python, from outside the repository).
SMOKE = """
import json, sysconfig, llmscope
from llmscope.organisms.facts import read_card
from llmscope.widgets import AblationPanel, AttentionMap, Raster  # their bundles load at import
model = llmscope.load("grammar-2l")
logits = model(model.to_tokens("the dog"))
print(json.dumps({"package": llmscope.__path__[0], "purelib": sysconfig.get_paths()["purelib"],
                  "n_layer": read_card("grammar-2l")["training"]["config"]["n_layer"],
                  "logits": list(logits.shape)}))
"""


def local_requirements(text: str) -> tuple[str, list[str]]:
    """``binder/requirements.txt`` as installable here: index lines dropped (pip's configuration
    names the local source), everything else, pins and the ``.[extras]`` line, kept as written."""
    dropped = [line for line in text.splitlines() if INDEX_LINE.match(line)]
    kept = [line for line in text.splitlines() if not INDEX_LINE.match(line)]
    return "\n".join(kept) + "\n", dropped


def run(cmd: list[str], **kw) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run(cmd, check=True, **kw)


def du_mb(path: Path) -> float:
    total = sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 2**20


def build(work: Path, env: dict[str, str]) -> dict:
    """Export HEAD, make the venv, install the requirements, run postBuild; return timings."""
    if subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                      text=True).stdout.strip():
        print("warning: uncommitted changes are not checked: Binder builds the committed HEAD",
              flush=True)
    src = work / "src"
    src.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    requirements = src / "binder" / "requirements.txt"
    text, dropped = local_requirements(requirements.read_text())
    requirements.write_text(text)
    print(f"swapped for the local package source: {dropped}", flush=True)

    start = time.perf_counter()
    run([sys.executable, "-m", "venv", str(work / "venv")])
    run([str(work / "venv/bin/python"), "-m", "pip", "install", "--no-cache-dir", "-r",
         "binder/requirements.txt"], cwd=src, env=env)
    installed = time.perf_counter()
    run(["./binder/postBuild"], cwd=src, env=env)
    done = time.perf_counter()
    return {"install_s": installed - start, "postbuild_s": done - installed, "build_s": done - start}


def check_package(work: Path, env: dict[str, str]) -> list[str]:
    """Problems with the installed package: files of HEAD's llmscope/ missing or different in
    site-packages, a package imported from anywhere else, or a smoke run that fails."""
    out = subprocess.run([str(work / "venv/bin/python"), "-c", SMOKE], cwd=work, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        return [f"the installed package does not load the organism and widgets:\n{out.stderr[-2000:]}"]
    smoke = json.loads(out.stdout.strip().splitlines()[-1])
    package = Path(smoke["package"])
    if not package.is_relative_to(smoke["purelib"]):
        return [f"llmscope was imported from {package}, not from the venv's site-packages"]
    problems = []
    tracked = subprocess.run(["git", "ls-tree", "-r", "--name-only", "HEAD", "llmscope"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        here = package / Path(name).relative_to("llmscope")
        if not here.is_file():
            problems.append(f"{name} is not in the wheel")
        elif here.read_bytes() != (work / "src" / name).read_bytes():
            problems.append(f"{name} differs in site-packages")
    print(f"package data: {len(tracked)} files of HEAD's llmscope/ checked in {package}; "
          f"grammar-2l loads (n_layer {smoke['n_layer']}, logits {smoke['logits']})", flush=True)
    return problems


def cell_errors(executed: Path) -> list[str]:
    """``cell N: ErrorName: message`` for each code cell of an executed notebook that raised."""
    cells = json.loads(executed.read_text())["cells"]
    return [f"cell {i}: {o['ename']}: {o['evalue'][:80]}" for i, cell in enumerate(cells)
            for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def execute(notebook: Path, work: Path, env: dict[str, str]) -> dict:
    """Run one notebook into ``work/executed``; sample the kernel's RSS while it runs."""
    out, log = work / "executed", work / "logs" / f"{notebook.stem}.log"
    out.mkdir(exist_ok=True)
    log.parent.mkdir(exist_ok=True)
    # --allow-errors: a failing cell does not stop the run, so the peak covers the whole notebook
    cmd = [str(work / "venv/bin/jupyter"), "nbconvert", "--to", "notebook", "--execute",
           "--allow-errors", "--ExecutePreprocessor.timeout=1800", "--output-dir", str(out),
           notebook.name]
    venv = work / "venv"
    peak, kernel_exe, children = 0, None, 0
    start = time.perf_counter()
    with open(log, "w") as sink:
        proc = psutil.Popen(cmd, cwd=notebook.parent, env=env, stdout=sink, stderr=sink)
        while proc.poll() is None:
            try:
                for kernel in proc.children(recursive=True):
                    if "ipykernel_launcher" not in " ".join(kernel.cmdline()):
                        continue
                    kernel_exe = kernel_exe or shutil.which(kernel.cmdline()[0], path=env["PATH"])
                    family = [kernel, *kernel.children(recursive=True)]
                    children = max(children, len(family) - 1)
                    peak = max(peak, sum(p.memory_info().rss for p in family))
            except psutil.Error:  # a process ended between listing and reading it
                pass
            time.sleep(SAMPLE_S)
    wall = time.perf_counter() - start
    errors = cell_errors(out / notebook.name) if proc.returncode == 0 else []
    if proc.returncode:
        status = "error"
        print(log.read_text()[-3000:], flush=True)
    elif kernel_exe is None:
        status = "error: no kernel seen"
    elif not Path(kernel_exe).is_relative_to(venv):  # argv[0], as the kernel spec names it
        status = f"error: kernel ran {kernel_exe}, not the venv's Python"
    elif errors:
        status = f"error in {len(errors)} cells, first {errors[0]}"
    elif peak > BUDGET_MB * 2**20:
        status = f"over {BUDGET_MB} MiB"
    else:
        status = "ok"
    return {"notebook": notebook.name, "wall_s": wall, "peak_rss_mb": peak / 2**20,
            "children": children, "status": status}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the notebooks whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the venv and executed notebooks")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmscope-binder-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{work / 'venv/bin'}:{env['PATH']}", VIRTUAL_ENV=str(work / "venv"),
               LLMSCOPE_CACHE=str(work / "cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", JUPYTER_CONFIG_DIR=str(work / "jupyter/config"),
               JUPYTER_DATA_DIR=str(work / "jupyter/data"), JUPYTER_RUNTIME_DIR=str(work / "jupyter/run"),
               IPYTHONDIR=str(work / "ipython"))
    print(f"working in {work}", flush=True)
    try:
        timings = build(work, env)
        problems = check_package(work, env)
        rows = []
        for notebook in sorted((work / "src/notebooks").glob("*.ipynb")):
            if args.only in notebook.name:
                rows.append(execute(notebook, work, env))
                print(rows[-1], flush=True)
        sizes = {"venv_mb": du_mb(work / "venv"), "cache_mb": du_mb(work / "cache")}
        site = next((work / "venv/lib").glob("python3.*/site-packages"))
        biggest = sorted(((du_mb(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:10]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'notebook':<40} {'wall s':>7} {'peak RSS MiB':>12}  status")
    for r in rows:
        note = f" (kernel + {r['children']} children)" if r["children"] else ""
        print(f"{r['notebook']:<40} {r['wall_s']:7.1f} {r['peak_rss_mb']:12.0f}  {r['status']}{note}")
    print(f"\nbuild {timings['build_s']:.0f} s (venv + pip install -r {timings['install_s']:.0f} s, "
          f"postBuild {timings['postbuild_s']:.0f} s); venv {sizes['venv_mb']:.0f} MiB, "
          f"LLMSCOPE_CACHE (SmolLM2 converted by postBuild) {sizes['cache_mb']:.0f} MiB; "
          f"load {os.getloadavg()[0]:.2f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("largest in site-packages: " + ", ".join(f"{name} {mb:.0f} MiB" for mb, name in biggest))
    for problem in problems:
        print("PACKAGE:", problem)
    (ROOT / "artifacts").mkdir(exist_ok=True)
    (ROOT / "artifacts/binder_check.json").write_text(json.dumps(
        {"rows": rows, **timings, **sizes, "problems": problems}, indent=1))
    failed = problems or [r for r in rows if r["status"] != "ok"]
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
