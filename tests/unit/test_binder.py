"""binder/ as Binder reads it: the requirements' pin, index and extras, and repo2docker's own check.

`make binder-check` builds and runs it (slow, not part of `make test`); these tests are the fast part.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def makefile_torch_pin() -> str:
    pins = set(re.findall(r"pip install [^\n]*\btorch==([\w.+]+)", (ROOT / "Makefile").read_text()))
    assert len(pins) == 1, f"the Makefile should install one exact torch, found {pins}"
    return pins.pop()


def test_requirements_pin_torch_like_the_makefile_from_the_cpu_index():
    found = lines(BINDER / "requirements.txt")
    assert f"--extra-index-url {CPU_INDEX}" in found or f"--index-url {CPU_INDEX}" in found, found
    torch = [Requirement(line) for line in found if re.match(r"torch\b", line)]
    assert [str(r.specifier) for r in torch] == [f"=={makefile_torch_pin()}"], found


def test_requirements_install_the_package_non_editable_with_its_extras():
    found = lines(BINDER / "requirements.txt")
    local = [line for line in found if re.match(r"(-e\s+|--editable\s+)?\.(\[|$)", line)]
    assert len(local) == 1 and not local[0].startswith("-"), f"one non-editable '.[...]' line: {local}"
    extras = set(re.search(r"\[(.*)\]", local[0]).group(1).replace(" ", "").split(","))
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert extras == {"smollm2", "english"}, extras
    assert extras <= set(declared["optional-dependencies"]), "an extra pyproject.toml does not declare"
    assert any(Requirement(line).name == "jupyterlab" for line in found if line[0].isalpha())
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert re.fullmatch(r"python-3\.\d+", runtime), runtime
    assert runtime.removeprefix("python-") + ".0" in SpecifierSet(declared["requires-python"])


def test_the_check_swaps_only_the_index_line():
    spec = importlib.util.spec_from_file_location("binder_check", BINDER / "check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    text = (BINDER / "requirements.txt").read_text()
    kept, dropped = check.local_requirements(text)
    assert dropped == [f"--extra-index-url {CPU_INDEX}"]
    assert kept.splitlines() == [line for line in text.splitlines() if line not in dropped]


def repo2docker(folder: Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("repo2docker") is None:
        pytest.fail("jupyter-repo2docker is not installed: `pip install -e '.[dev]'` installs it "
                    "(this test validates binder/ the way Binder reads it, so it must not skip)")
    return subprocess.run([sys.executable, "-m", "repo2docker", "--no-build", "--debug", str(folder)],
                          capture_output=True, text=True, timeout=120)


def test_repo2docker_reads_binder_with_its_runtime_and_postbuild():
    out = repo2docker(ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    from escapism import escape  # repo2docker's own escaping of the files its Dockerfile copies

    dockerfile = out.stdout  # --debug prints the Dockerfile it would build
    runtime = (BINDER / "runtime.txt").read_text().strip().removeprefix("python-")
    assert f"Building conda environment for python={runtime}" in out.stderr
    assert escape(f"environment.py-{runtime}-linux-64.lock", escape_char="-").lower() in dockerfile.lower()
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in dockerfile
    assert "RUN ./binder/postBuild" in dockerfile


def test_repo2docker_refuses_a_runtime_it_cannot_build(tmp_path):
    shutil.copytree(BINDER, tmp_path / "binder")
    (tmp_path / "binder" / "runtime.txt").write_text("python-2.9\n")
    assert repo2docker(tmp_path).returncode != 0
