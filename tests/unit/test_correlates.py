"""Behavioural correlates on the organism: units vs the loss, hit, confidence and entropy of the
prediction they precede, with p-values calibrated against circularly shifted behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import llmscope
from llmscope.analysis.correlates import CorrelatesResult, behaviour_correlates, circular_shifts, confidence, entropy
from llmscope.analysis.responses import scalar
from llmscope.behaviour import evaluate, loss
from llmscope.errors import AnalysisError, RecordingError, SiteError
from llmscope.sites import resolve_units
from llmscope.stimuli import Stimuli, grammar
from tests.unit.renames import assert_renamed


@pytest.fixture(scope="module")
def rec(organism):
    stim = grammar(organism, n_docs=16, seed=2)
    return llmscope.record(organism, stim, ["mlp.0", "mlp.1", "attn.1"], dtype="float32", progress=False)


@pytest.fixture(scope="module")
def by_loss(organism, rec):
    return behaviour_correlates(organism, rec, "loss", n_controls=100, progress=False)


def test_rho_is_scipys_spearman_on_context_aligned_behaviour(organism, rec, by_loss):
    table = evaluate(organism, rec.stimuli, {"next": "loss"}, align="context").df
    keep = ~table["is_bos"].to_numpy() & np.isfinite(table["next"].to_numpy())
    for s, u in by_loss.df.index[[0, 7, 300]]:
        x = scalar(rec, s, [u])[keep, 0]
        assert by_loss.df.loc[(s, u), "rho"] == pytest.approx(stats.spearmanr(x, table["next"][keep]).statistic, abs=1e-10)
    assert by_loss.meta["n_rows"] == int(keep.sum()) and by_loss.meta["align"] == "context"


def test_the_induction_head_goes_with_good_predictions(by_loss):
    heads = by_loss.df.xs("attn.1", level="site", drop_level=False)
    assert heads.index[0] == ("attn.1", 0)
    assert heads["rho"].iloc[0] < -0.2 and heads["q"].iloc[0] < 0.05


def test_correlates_exist_beyond_the_shifted_control(organism, by_loss):
    meta, n_units = by_loss.meta, len(by_loss.df)
    assert n_units == 2 * 512 + 4
    assert meta["n_significant"] > 0.1 * n_units
    assert meta["n_significant_control"] <= 0.05 * n_units
    # scipy's independent-token p-values would report the control's chance alignment as findings
    assert meta["n_significant_control_iid"] > meta["n_significant_control"]
    assert np.all(np.diff(by_loss.df["rho"].abs().to_numpy()) <= 0)
    assert resolve_units(organism, by_loss.df.head(3))  # passes straight to lesion()
    assert isinstance(by_loss, CorrelatesResult) and by_loss.kind == "behaviour_correlates"
    assert by_loss.top(5).index.tolist() == by_loss.df.index[:5].tolist()  # the strongest, of either sign
    np.testing.assert_array_equal(by_loss.df.abs_rho, by_loss.df.rho.abs())


@pytest.mark.parametrize("behaviour, sign", [("confidence", 1), ("entropy", -1), ("correct", 1)])
def test_other_behaviours_agree_on_the_induction_head(organism, rec, behaviour, sign):
    r = behaviour_correlates(organism, rec, behaviour, "attn.1", n_controls=30, progress=False)
    assert r.df.index[0] == ("attn.1", 0) and sign * r.df["rho"].iloc[0] > 0.2
    units, control = r.plot().data
    assert units.name == "units" and control.name == "shifted behaviour (control)"
    np.testing.assert_array_equal(units.x, r.df.rho)  # rho against -log10 p, for the units and for the control
    np.testing.assert_allclose(units.y, -np.log10(r.df.p))
    np.testing.assert_array_equal(control.x, r.df.rho_control)
    assert list(units.text) == [f"attn.1:{u}" for u in r.df.index.get_level_values("unit")]


def test_confidence_and_entropy_align_as_loss_does(organism):
    stim = Stimuli.from_ids(organism, [[1, 5, 6, 7], [1, 8]], n_bos=1)
    logits = torch.randn(2, 4, organism.cfg.d_vocab)
    logp = logits.log_softmax(-1)
    for align in ("target", "context"):
        nan_where = np.isnan(loss(logits, stim, align))
        assert np.array_equal(np.isnan(confidence(logits, stim, align)), nan_where)
        assert np.array_equal(np.isnan(entropy(logits, stim, align)), nan_where)
    ctx = confidence(logits, stim, "context")  # row (0, 1) describes the prediction made from position 1
    assert ctx[1] == pytest.approx(float(logp[0, 1].exp().max()), rel=1e-6)
    tgt = entropy(logits, stim, "target")      # row (0, 2) describes the prediction of position 2
    assert tgt[2] == pytest.approx(float(-(logp[0, 1].exp() * logp[0, 1]).sum()), rel=1e-5)
    flat = torch.zeros(1, 3, organism.cfg.d_vocab)
    three = Stimuli.from_ids(organism, [[1, 5, 6]], n_bos=1)
    assert entropy(flat, three)[1] == pytest.approx(np.log(organism.cfg.d_vocab), rel=1e-6)


def test_circular_shifts_move_rows_within_their_sequence():
    seq = np.repeat([0, 1, 2, 3], [5, 1, 3, 2])
    idx = circular_shifts(seq, 50, np.random.default_rng(0))
    assert idx.shape == (11, 50)
    assert np.all(seq[idx] == seq[:, None])
    assert all(sorted(col) == list(range(11)) for col in idx.T)
    longer = seq != 1
    assert np.all(idx[longer] != np.arange(11)[longer, None]) and np.all(idx[seq == 1] == 5)


def test_correlates_bad_input(organism, tiny, rec):
    with pytest.raises(AnalysisError, match="unknown behaviour"):
        behaviour_correlates(organism, rec, "accuracy", progress=False)
    with pytest.raises(AnalysisError, match="reads a Recording"):
        behaviour_correlates(organism, rec.stimuli, progress=False)
    with pytest.raises(AnalysisError, match="n_controls"):
        behaviour_correlates(organism, rec, n_controls=1, progress=False)
    with pytest.raises(AnalysisError, match="was made for .*; this model is"):
        behaviour_correlates(tiny, rec, progress=False)
    with pytest.raises(RecordingError, match="whole recording"):
        behaviour_correlates(organism, rec.select("pos > 3"), progress=False)
    with pytest.raises(SiteError, match="not recorded"):
        behaviour_correlates(organism, rec, units="attn.0", progress=False)


def test_the_old_name_warns_and_gives_the_same_result(organism, rec):
    assert_renamed(lambda: behaviour_correlates(organism, rec, "entropy", "attn.1", n_null=10, progress=False),
                   lambda: behaviour_correlates(organism, rec, "entropy", "attn.1", n_controls=10, progress=False))
