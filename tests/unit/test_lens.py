"""Prediction error on the organism: the logit lens and the surprise response to agreement violations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from llmscope.analysis.lens import _contrast, lens_logits, logit_lens, surprise
from llmscope.behaviour import metric
from llmscope.errors import AnalysisError, ColumnError, SiteError
from llmscope.sites import resolve_units
from llmscope.stimuli import agreement, grammar


@pytest.fixture(scope="module")
def stim(organism):
    return grammar(organism, n_docs=8, seed=1)


@pytest.fixture(scope="module")
def lens(organism, stim):
    return logit_lens(organism, stim, progress=False)


@pytest.fixture(scope="module")
def pairs(organism):
    return agreement(organism, n=128, seed=0)


@pytest.fixture(scope="module")
def response(organism, pairs):
    return surprise(organism, pairs, tail=". the", progress=False)


def _pristine(model, ids, before):
    with torch.no_grad():
        assert torch.equal(model(ids), before)


@pytest.mark.parametrize("name", ["organism", "tiny"])
def test_lens_at_the_last_residual_site_is_the_model_output(request, name):
    model = request.getfixturevalue(name)
    ids = torch.tensor([[1, 5, 9, 4, 7, 3]])
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids)
    last = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    assert torch.equal(lens_logits(model, last), logits)
    # any leading shape; another shape sums in another order, so equal to float rounding
    torch.testing.assert_close(lens_logits(model, last[0, 2]), logits[0, 2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(lens_logits(model, cache["blocks.0.hook_resid_pre"]), logits, atol=1e-2)


def test_later_layers_predict_closer_to_the_final_distribution(lens):
    df = lens.df.set_index("site")
    assert df.loc["resid.0", "kl"] > df.loc["resid.1", "kl"] > df.loc["resid.2", "kl"]
    assert df.loc["resid.2", "kl"] == pytest.approx(0.0, abs=1e-6) and lens.meta["final_max_abs_diff"] == 0.0
    assert df.loc["resid.0", "loss"] > df.loc["resid.1", "loss"] > df.loc["resid.2", "loss"]
    assert df.loc["resid.1", "top1"] > df.loc["resid.0", "top1"]


def test_lens_beats_its_shuffled_residual_control_beyond_the_embedding(lens):
    df = lens.df.set_index("site")
    for s in ("resid.1", "resid.2"):
        assert df.loc[s, "kl_control"] > df.loc[s, "kl"] + 1.0
        assert df.loc[s, "loss_control"] > df.loc[s, "loss"] + 1.0
        assert df.loc[s, "top1_control"] < df.loc[s, "top1"]


def test_final_lens_loss_is_the_model_loss(organism, stim, lens):
    final = lens.df.set_index("site").loc["resid.2"]
    model_loss = metric(organism, stim, "loss").df
    assert final["loss"] == pytest.approx(float(model_loss["mean"].iloc[0]), abs=1e-5)
    assert final["n"] == int(model_loss["n"].iloc[0])


def test_lens_by_label_splits_the_same_tokens(organism, stim, lens):
    split = logit_lens(organism, stim, ["resid.1", "blocks.0.hook_resid_mid"], by="pos_tag", progress=False)
    assert split.df.groupby("site")["n"].sum().tolist() == [lens.df["n"].iloc[0]] * 2
    assert set(split.df["pos_tag"]) <= set(stim.tokens["pos_tag"]) - {"BOS"}
    one = split.df[split.df.site == "resid.1"]
    weighted = (one["kl"] * one["n"]).sum() / one["n"].sum()
    assert weighted == pytest.approx(lens.df.set_index("site").loc["resid.1", "kl"], rel=1e-9)
    assert len(split.plot(measure="loss").data) == 2 * split.df["pos_tag"].nunique()


@pytest.mark.parametrize("bad", ["mlp.0", "attn.1", ["resid.1", "blocks.0.mlp.hook_post"]])
def test_lens_refuses_a_site_that_is_not_the_residual_stream(organism, stim, pairs, bad):
    ids = stim.ids[:1]
    with torch.no_grad():
        before = organism(ids)
    with pytest.raises(SiteError, match="residual stream"):
        logit_lens(organism, stim, bad, progress=False)
    with pytest.raises(SiteError, match="residual stream"):
        surprise(organism, pairs, sites=bad, progress=False)
    _pristine(organism, ids, before)


def test_violation_raises_surprisal_and_the_shuffled_pair_control_does_not(response):
    crit = response.data.sel(offset=0).to_dataframe()
    final = crit.loc["resid.2"]
    assert final["violation"] > final["grammatical"] and final["ci_low"] > 3.0 and final["p"] < 1e-10
    assert abs(final["effect_control"]) < 0.1 * final["effect"]
    assert final["ci_low_control"] < 0 < final["ci_high_control"]
    # the violation shows up where layer 0's output meets the lens, and grows through layer 1
    assert 0 < crit.loc["resid.1", "ci_low"] and crit.loc["resid.1", "effect"] < final["effect"]


def test_surprise_after_the_critical_token(response, organism):
    data = response.data
    assert data["site"].values.tolist() == ["resid.0", "resid.1", "resid.2"]
    assert data["offset"].values.tolist() == [0, 1, 2] and data["word"].values.tolist()[1:] == [".", "the"]
    # resid.0 at a tail token is that token's embedding: identical in every condition
    tail0 = data.sel(site="resid.0", offset=2)
    assert tail0["effect"] == 0 and tail0["effect_control"] == 0


def test_violation_responsive_units_beyond_the_control(organism, response):
    units = response.df
    assert len(units) == 2 * organism.cfg.d_mlp
    assert response.meta["n_responsive"] >= 5
    assert response.meta["n_responsive_control"] <= 0.05 * len(units)
    assert response.meta["n_responsive"] > response.meta["n_responsive_control"]
    assert units["q"].iloc[0] < 0.05 and np.all(np.diff(units["t"].abs().to_numpy()) <= 0)
    top = response.top(5)
    assert resolve_units(organism, top)[0][0].kind == "mlp" and top["t"].is_monotonic_decreasing
    assert top["t"].iloc[0] == units["t"].max()
    assert sum(response.meta["groups"].values()) == response.data.attrs["n"] == 128


def test_contrast_is_the_paired_t_test_with_one_group():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.3, 1.0, size=(40, 3))
    out = _contrast(diff, np.zeros(40))
    ref = stats.ttest_1samp(diff, 0.0)
    np.testing.assert_allclose(out["effect"], diff.mean(0))
    np.testing.assert_allclose(out["p"], ref.pvalue, rtol=1e-10)
    low, high = ref.confidence_interval()
    np.testing.assert_allclose(out["ci_low"], low, rtol=1e-10)
    np.testing.assert_allclose(out["ci_high"], high, rtol=1e-10)


def test_contrast_weights_groups_equally():
    # a "form" unit: +1 on one group's differences, -1 on the other's, unequal group sizes
    diff = np.r_[np.ones(30), -np.ones(10)][:, None] + np.random.default_rng(1).normal(0, 0.1, (40, 1))
    group = np.r_[np.zeros(30), np.ones(10)]
    assert abs(_contrast(diff, group)["effect"][0]) < 0.05
    assert _contrast(diff, np.zeros(40))["effect"][0] == pytest.approx(0.5, abs=0.05)


def test_surprise_bad_input(organism, stim, pairs):
    ids = pairs.ids[:1]
    with torch.no_grad():
        before = organism(ids)
    with pytest.raises(ColumnError, match="good_id"):
        surprise(organism, stim, progress=False)
    with pytest.raises(AnalysisError, match="must end at"):
        surprise(organism, pairs, where="is_bos", progress=False)
    numbers = pairs.tokens[pairs.tokens.is_target].number.to_numpy()
    lonely = np.r_[np.flatnonzero(numbers == "sg")[:1], np.flatnonzero(numbers == "pl")[:3]]
    with pytest.raises(AnalysisError, match="one pair"):
        surprise(organism, pairs.select_seqs(lonely), progress=False)
    with pytest.raises(AnalysisError, match="unit_offset"):
        surprise(organism, pairs, tail=".", unit_offset=2, progress=False)
    with pytest.raises(SiteError):
        surprise(organism, pairs, units=("mlp.1", [512]), progress=False)
    with pytest.raises(ColumnError, match="match column"):
        surprise(organism, pairs, match="nope", progress=False)
    _pristine(organism, ids, before)
