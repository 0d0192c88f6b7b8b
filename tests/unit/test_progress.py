"""Progress bars: TQDM_DISABLE silences every llmscope bar, whatever the progress argument says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import llmscope
from llmscope.analysis.spikes import spikes
from llmscope.analysis.tuning import tuning
from llmscope.progress import progress_bar
from llmscope.recording import record

PACKAGE = Path(llmscope.__file__).parent


def test_tqdm_disable_silences_record_tuning_and_spikes(organism, monkeypatch, capfd):
    stim = llmscope.stimuli.grammar(organism, n_docs=3, seed=0)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    record(organism, stim, "mlp.0")
    assert "record" in capfd.readouterr().err  # shown by default: the check below can fail
    monkeypatch.setenv("TQDM_DISABLE", "1")  # set in a running process, after tqdm was imported
    rec = record(organism, stim, "mlp.0")
    tuning(rec, "mlp.0", "pos_tag")
    spikes(rec, "mlp.0")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("value,shown", [(None, True), ("1", False), ("true", False), ("0", True), ("", True),
                                         ("False", True)])
def test_progress_bar_reads_tqdm_disable_at_each_bar(monkeypatch, value, shown):
    if value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", value)
    with progress_bar(total=1) as bar, progress_bar(total=1, show=False) as hidden:
        assert bar.disable is not shown and hidden.disable


def test_every_bar_is_made_by_progress_bar():
    direct = [f"{path.relative_to(PACKAGE)}:{n}" for path in PACKAGE.rglob("*.py") if path.name != "progress.py"
              for n, line in enumerate(path.read_text().splitlines(), 1) if re.search(r"\b(tqdm|trange)\(", line)]
    assert direct == []
