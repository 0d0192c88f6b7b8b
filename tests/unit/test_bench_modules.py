"""The benchmarks are not timed in the unit suite, but they must keep up with the API: each
``tests/bench/bench_*.py`` imports and exposes ``run()``."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHES = sorted(p.stem for p in (Path(__file__).parents[1] / "bench").glob("bench_*.py"))


@pytest.mark.parametrize("name", BENCHES)
def test_bench_module_imports(name):
    module = importlib.import_module(f"tests.bench.{name}")
    assert callable(getattr(module, "run", None))
