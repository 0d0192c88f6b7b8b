"""The lesion atlas and the lesion test against the organism's card: the induction head attn.1:0 is
the unit copying needs most, and its lesion leaves agreement intact; random neurons break nothing;
stacked lesions give what one lesion per forward pass gives, and a route that fails its check is
not taken; bad input fails before any forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmscope.analysis.atlas import Battery, Behaviour, battery, lesion_atlas, lesion_test
from llmscope.analysis.stats import cluster_bootstrap, interval
from llmscope.behaviour import loss, logit_diff
from llmscope.engine import cache, lesions, routes
from llmscope.errors import AnalysisError, ColumnError
from llmscope.interventions import intervene, lesion
from llmscope.organisms.facts import organism_folder
from llmscope.sites import resolve_units, unit_index

CARD = json.loads((organism_folder("grammar-2l") / "card.json").read_text())
UPOS = set(CARD["facts"]["loss"]["by_pos"])
NEURONS = [("mlp.0", None), ("mlp.1", None)]


@pytest.fixture(scope="module")
def bat(organism):
    return battery(organism, n_docs=16, n_pairs=64, seed=1)


@pytest.fixture(scope="module")
def small(organism):
    return battery(organism, n_docs=4, n_pairs=16, seed=2)


@pytest.fixture(scope="module")
def tiny_bat(organism):
    return battery(organism, n_docs=2, n_pairs=8, seed=3)


@pytest.fixture(scope="module")
def heads(organism, bat):
    """The atlas of all 8 heads, with 8 random single heads as the control."""
    return lesion_atlas(organism, bat, n_controls=8, seed=0, progress=False)


@pytest.fixture
def fresh_routes(organism):
    """Route verdicts worked out again in the test, and again after it (a test may break one)."""
    cache.forget(organism)
    yield
    cache.forget(organism)


def assert_pristine(model, stim, logits):
    with torch.no_grad():
        assert torch.equal(model(stim.ids), logits), "the model was left changed"
    assert len(model.original_model.transformer.h) == model.cfg.n_layers


# ---------------------------------------------------------------- the battery


def test_battery_holds_pos_losses_copying_and_agreement(organism, bat):
    tags = {n.removeprefix("loss_") for n in bat.names if n.startswith("loss_")}
    assert tags <= UPOS and len(tags) >= 8
    assert bat.names[-2:] == ["copying", "agreement"]
    t = bat["copying"].stimuli.tokens
    repeat, onset = t["is_repeat"].to_numpy(bool), t["repeat_onset"].to_numpy(bool)
    assert (bat["copying"].rows == (repeat & ~onset & ~t["is_bos"].to_numpy(bool))).all()
    for tag in tags:  # fresh tokens of the tag only: copying is its own behaviour
        rows = bat[f"loss_{tag}"].rows
        assert (t["pos_tag"][rows] == tag).all() and not repeat[rows].any()
    assert (bat["agreement"].rows == bat["agreement"].stimuli.tokens["is_target"].to_numpy()).all()
    intact = bat.measure(organism)
    assert intact["agreement"] >= CARD["thresholds"]["agreement_accuracy"]
    assert intact["copying"] < intact[[f"loss_{tag}" for tag in tags]].min()  # copies are easy to predict


def test_battery_selects_behaviours_by_name(organism, bat):
    assert battery(organism, n_docs=2, n_pairs=4, behaviours=["agreement", "copying"]).names == ["agreement", "copying"]
    with pytest.raises(AnalysisError, match=r"no behaviour \['grammaticality'\].*copying"):
        bat.select(["copying", "grammaticality"])


# ---------------------------------------------------------------- ground truth


def test_head_atlas_finds_the_induction_head_for_copying_only(heads):
    df = heads.df
    assert heads.top(1, by="harm_copying").index.tolist() == [("attn.1", 0)]
    ind = df.loc[("attn.1", 0)]
    assert ind["rank_copying"] == 1
    assert ind["breaks_copying"] and not ind["breaks_agreement"]
    assert ind["class"] == "some" and "copying" in ind["broken"].split(", ")
    rise = CARD["facts"]["lesion"]["repeat_loss_rise"] / CARD["thresholds"]["lesion_ratio"]
    assert ind["harm_copying"] > rise
    assert df.loc[("attn.0", 2), "breaks_copying"]  # the previous-token head: the circuit's other half
    assert set(df["class"]) <= {"all", "some", "none"}
    assert (df["n_broken"] == df[[c for c in df if c.startswith("breaks_")]].sum(1)).all()


def test_head_controls_are_random_heads_lesioned_the_same_way(heads):
    cols = [c for c in heads.df if c.startswith("lesioned_")]
    assert heads.data["harm_control"].dims == ("control", "behaviour")
    for _, row in heads.controls.iterrows():
        (label,) = row["members"]
        site, unit = label.split(":")
        np.testing.assert_allclose(row[cols].to_numpy(float), heads.df.loc[(site, int(unit)), cols].to_numpy(float),
                                   rtol=1e-5, atol=1e-6)
    rate = heads.controls[[f"breaks_{b}" for b in heads.behaviours.index]].mean().to_numpy()
    np.testing.assert_allclose(heads.behaviours["breaks_control_rate"].to_numpy(), rate)


@pytest.mark.parametrize("group_size", [1, 4])
def test_random_groups_of_neurons_break_nothing(organism, small, group_size):
    result = lesion_atlas(organism, small, NEURONS, group_size=group_size, n_sample=4, n_controls=16, seed=4,
                          progress=False)
    ctrl = result.controls
    assert len(ctrl) == 16 and (ctrl["group_size"] == group_size).all()
    assert (ctrl["class"] == "none").all()
    harm = ctrl[[f"harm_{b}" for b in result.behaviours.index]].to_numpy()
    assert (harm < result.behaviours["min_effect"].to_numpy()).all()
    assert result.behaviours["breaks_control_rate"].eq(0).all()


# ---------------------------------------------------------------- stacking is exact


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_stacked_lesions_equal_one_lesion_per_forward(organism, tiny_bat, mode):
    units = [("attn.1", [0]), ("mlp.0", [3]), ("mlp.1", [5]), ("resid.1", [3])]
    kw = dict(n_controls=2, mode=mode, seed=5, progress=False, pass_tokens=600)  # several buckets and chunks
    stacked = lesion_atlas(organism, tiny_bat, units, **kw)
    plain = lesion_atlas(organism, tiny_bat, units, stack=False, **kw)
    assert stacked.meta["stacked"] and not plain.meta["stacked"]
    cols = [c for c in stacked.df if c.startswith(("lesioned_", "baseline_"))]
    np.testing.assert_allclose(stacked.df[cols].to_numpy(float), plain.df[cols].to_numpy(float), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stacked.controls[cols].to_numpy(float), plain.controls[cols].to_numpy(float),
                               rtol=1e-5, atol=1e-5)


def test_atlas_values_match_the_behaviour_module(organism, tiny_bat):
    result = lesion_atlas(organism, tiny_bat, [("attn.1", [0])], n_controls=1, progress=False)
    copying, pairs = tiny_bat["copying"], tiny_bat["agreement"]
    with intervene(organism, lesion("attn.1", [0])), torch.no_grad():
        hit = loss(organism(copying.stimuli.ids), copying.stimuli)[copying.rows].mean()
        diff = logit_diff(organism(pairs.stimuli.ids), pairs.stimuli)[pairs.rows]
    row = result.df.loc[("attn.1", 0)]
    assert row["lesioned_copying"] == pytest.approx(hit, rel=1e-5)
    assert row["lesioned_agreement"] == pytest.approx((diff > 0).mean())


def test_last_block_neurons_need_no_block_pass(organism, tiny_bat, monkeypatch):
    """Neurons of the last MLP are lesioned in closed form: their passes run no block. One neuron
    is not even unembedded per copy (its logits come through the final norm in closed form); a
    group of them is, from the subtracted residual. Both equal one forward per lesion."""
    layers, reads = [], []
    real_run, real_rank_one = lesions.run_from, routes.rank_one
    monkeypatch.setattr(lesions, "run_from", lambda model, x, layer, *a: layers.append(layer) or real_run(model, x, layer, *a))

    def counted(model):
        prepare = real_rank_one(model)

        def counted_prepare(r):
            read = prepare(r)
            return lambda at, a, w: reads.append(len(a)) or read(at, a, w)

        return counted_prepare

    monkeypatch.setattr(routes, "rank_one", counted)
    kw = dict(n_controls=1, seed=2, progress=False)
    single = lesion_atlas(organism, tiny_bat, [("mlp.1", [0, 1, 2, 3])], **kw)
    n = organism.cfg.n_layers
    assert sum(reads) >= 4 and layers == []  # no pass at all: every lone neuron (and the control) read out in closed form
    reads.clear()
    five = [("mlp.1", [0, 1, 2, 3, 4])]  # groups (0, 1), (2, 3) and a lone (4): both closed forms
    grouped = lesion_atlas(organism, tiny_bat, five, group_size=2, **kw)
    assert layers.count(n) >= 2 and set(layers) == {n} and sum(reads) >= 1
    cols = [c for c in single.df if c.startswith("lesioned_")]
    for result, units, size in ((single, [("mlp.1", [0, 1, 2, 3])], 1), (grouped, five, 2)):
        plain = lesion_atlas(organism, tiny_bat, units, group_size=size, stack=False, **kw)
        np.testing.assert_allclose(result.df[cols].to_numpy(float), plain.df[cols].to_numpy(float), rtol=1e-5, atol=1e-5)


def test_a_closed_form_that_disagrees_falls_back_to_hooked_passes(organism, tiny_bat, monkeypatch, fresh_routes):
    kw = dict(n_controls=1, seed=1, progress=False)
    units = [("mlp.0", [4, 9])]
    plain = lesion_atlas(organism, tiny_bat, units, stack=False, **kw)
    real = routes.out_weights
    monkeypatch.setattr(routes, "out_weights", lambda model, site: 2 * real(model, site))
    with pytest.warns(UserWarning, match="closed form"):
        stacked = lesion_atlas(organism, tiny_bat, units, **kw)
    assert routes.closed_form(organism, resolve_units(organism, "mlp.0")[0][0]) is None  # checked once, kept
    cols = [c for c in stacked.df if c.startswith("lesioned_")]
    np.testing.assert_allclose(stacked.df[cols].to_numpy(float), plain.df[cols].to_numpy(float), rtol=1e-5, atol=1e-5)


def test_a_route_that_fails_is_not_taken_and_its_verdict_goes_with_the_weights(organism, tiny_bat, monkeypatch,
                                                                               fresh_routes):
    """Resuming at block 1 made to fail its check: attn.1 lesions run from the tokens, with the same
    numbers. The verdict is kept for the model until its weights change."""
    kw = dict(n_controls=1, seed=3, progress=False)
    plain = lesion_atlas(organism, tiny_bat, "attn.1", stack=False, **kw)
    starts = []
    real_run = lesions.run_from
    monkeypatch.setattr(lesions, "run_from", lambda model, x, layer, *a: starts.append(layer) or real_run(model, x, layer, *a))
    monkeypatch.setattr(routes, "same", lambda got, want: False)
    with pytest.warns(UserWarning, match="resumed at block 1"):
        stacked = lesion_atlas(organism, tiny_bat, "attn.1", **kw)
    assert starts and set(starts) == {0}
    cols = [c for c in stacked.df if c.startswith("lesioned_")]
    np.testing.assert_allclose(stacked.df[cols].to_numpy(float), plain.df[cols].to_numpy(float), rtol=1e-5, atol=1e-5)
    assert routes.resumes(organism, 1) is False  # kept: not checked again
    monkeypatch.undo()
    assert routes.resumes(organism, 1) is False
    param = next(organism.parameters())
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.add_(1.0)  # other weights: every verdict is worked out again
        assert routes.resumes(organism, 1) is True
    finally:
        with torch.no_grad():
            param.copy_(saved)


# ---------------------------------------------------------------- the lesion test


def test_lesion_test_of_the_induction_head_beats_random_heads_on_copying_only(organism, bat):
    test = lesion_test(organism, bat.select(["copying", "agreement", "loss_NOUN"]), ("attn.1", [0]), n_controls=3,
                       n_boot=500, progress=False)
    df = test.df
    assert list(df.index) == ["copying", "agreement", "loss_NOUN"]
    copying = df.loc["copying"]
    assert copying["excess_ci_low"] > 0 and copying["p"] < 0.01 and copying["harm"] > 2.0
    # the random heads barely touch copying: their harm's interval holds 0, so no ratio (it would explode)
    assert abs(copying["harm_control"]) < 0.1 and np.isnan(copying["ratio"]) and np.isnan(copying["ratio_ci_low"])
    noun = df.loc["loss_NOUN"]
    assert noun["ratio"] == pytest.approx(noun["harm"] / noun["harm_control"]) and noun["p"] < 0.05
    assert test.meta["units"] == ["attn.1:0"] and test.data.sizes["control"] == 3
    members = [m.split() for m in test.data["members_control"].values]
    assert all(len(m) == 1 and m[0].startswith("attn.1:") and m[0] != "attn.1:0" for m in members)  # same site, not it
    np.testing.assert_allclose(df["harm_control"], test.data["harm_control"].mean("control").values)
    assert df.loc["agreement", "ci_low"] <= 0 <= df.loc["agreement", "ci_high"]
    fig = test.plot()
    assert list(fig.data[0].x) == list(df.index) and len(fig.data[1].y) == 3 * len(df)


def test_lesion_test_statistics_are_the_cluster_bootstrap_of_its_passes(organism, tiny_bat):
    """harm and the random sets' harm come from single lesions run the plain way; their interval
    is stats.cluster_bootstrap's over the per-sequence sums, with the same seed."""
    units = ("mlp.0", [1, 2, 3])
    test = lesion_test(organism, tiny_bat.select(["copying"]), units, n_controls=2, n_boot=200, seed=4, progress=False)
    rng_control, rng_boot = (np.random.default_rng(s) for s in np.random.SeedSequence(4).spawn(2))
    lesion_units = resolve_units(organism, units)
    controls = lesions.same_sites(lesion_units, 2, rng_control)
    assert [" ".join(f"{s.name}:{i}" for s, idx in c for i in idx) for c in controls] == \
        list(test.data["members_control"].values)
    stim, rows = tiny_bat["copying"].stimuli, tiny_bat["copying"].rows
    seq = stim.tokens["seq"].to_numpy()[rows]

    def per_seq(units):
        with intervene(organism, *([lesion(units)] if units else [])), torch.no_grad():
            values = loss(organism(stim.ids), stim)[rows]
        return np.bincount(seq, values, minlength=stim.n_seqs)

    intact = per_seq(None)
    hit = per_seq([(s.name, idx) for s, idx in lesion_units]) - intact
    ctrl = np.mean([per_seq([(s.name, idx) for s, idx in c]) - intact for c in controls], axis=0)
    n = np.bincount(seq, minlength=stim.n_seqs)
    assert test.df.loc["copying", "harm"] == pytest.approx(hit.sum() / n.sum(), rel=1e-4, abs=1e-6)
    assert test.df.loc["copying", "harm_control"] == pytest.approx(ctrl.sum() / n.sum(), rel=1e-4, abs=1e-6)
    draws = cluster_bootstrap(np.stack([hit, ctrl])[:, n > 0], n[n > 0], 200, rng_boot)
    np.testing.assert_allclose(test.df.loc["copying", ["ci_low", "ci_high"]].to_numpy(float), interval(draws[0]),
                               rtol=1e-3, atol=1e-5)


def test_lesion_test_refuses_a_site_without_enough_other_units(organism, tiny_bat, no_forward):
    with pytest.raises(AnalysisError, match="attn.1 has 4 heads"):
        lesion_test(organism, tiny_bat, ("attn.1", [0, 1, 2]), progress=False)


# ---------------------------------------------------------------- groups, sampling, top, plot


def test_groups_are_runs_of_units_and_top_lists_their_members(organism, tiny_bat):
    result = lesion_atlas(organism, tiny_bat, "attn.0", group_size=3, n_controls=2, progress=False)
    assert result.df.index.tolist() == [("attn.0", 0), ("attn.0", 3)]
    assert result.df["members"].tolist() == [(0, 1, 2), (3,)]
    assert result.df["group_size"].tolist() == [3, 1]
    best = result.top(1, by="harm_copying")
    expected = result.df["harm_copying"].idxmax()
    assert best.index.tolist() == [("attn.0", u) for u in result.df.loc[expected, "members"]]
    assert unit_index(organism, best).tolist() == best.index.tolist()
    with intervene(organism, lesion(best)):
        organism(tiny_bat["copying"].stimuli.ids[:1])
    worst = result.df["severity"].idxmax()
    assert result.top(1).index.tolist() == [("attn.0", u) for u in result.df.loc[worst, "members"]]
    with pytest.warns(FutureWarning, match=r"top\(1, by='harm_copying'\)"):
        assert result.top("copying", 1).index.tolist() == best.index.tolist()


def test_n_sample_draws_groups_at_random(organism, tiny_bat):
    a = lesion_atlas(organism, tiny_bat, NEURONS, n_sample=5, n_controls=1, seed=6, progress=False)
    b = lesion_atlas(organism, tiny_bat, NEURONS, n_sample=5, n_controls=1, seed=7, progress=False)
    assert len(a.df) == 5 and a.meta["n_groups"] == 1024 and a.meta["n_lesioned"] == 5
    assert a.df.index.tolist() != b.df.index.tolist()
    assert list(a.df.index) == sorted(a.df.index)  # drawn at random, kept in unit order


def test_old_names_still_work_with_a_warning(organism, tiny_bat):
    with pytest.warns(FutureWarning, match="n_random"):
        old = lesion_atlas(organism, tiny_bat, [("attn.1", [0])], n_random=1, progress=False)
    new = lesion_atlas(organism, tiny_bat, [("attn.1", [0])], n_controls=1, progress=False)
    assert old.df.equals(new.df)


def test_plot_is_a_heatmap_of_harm_beside_the_controls(heads):
    fig = heads.plot(n=5)
    atlas_map, control_map = fig.data
    assert len(atlas_map.y) == 5 and len(control_map.y) == len(heads.controls)
    assert list(atlas_map.x) == list(heads.behaviours.index)
    top = np.nanmax(np.asarray(atlas_map.z, float), axis=1)
    assert top[0] == pytest.approx(max(heads.df[f"harm_{b}"].max() / e for b, e in heads.behaviours["min_effect"].items()))
    assert top[0] == pytest.approx(heads.df["severity"].max())


# ---------------------------------------------------------------- bad input


@pytest.fixture
def no_forward(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a forward pass ran before the error")

    monkeypatch.setattr(lesions, "run", refuse)


@pytest.mark.parametrize("kwargs, message", [
    (dict(behaviours=["grammaticality"]), r"no behaviour \['grammaticality'\].*agreement"),
    (dict(units="attn.0", group_size=5), r"group_size=5 is larger than attn.0, which has 4"),
    (dict(units=[("attn.1", [0, 2])], group_size=3), r"group_size=3 is larger than attn.1, which has 2 chosen"),
    (dict(units="attn.0", n_sample=9), r"n_sample=9 exceeds the 4 groups"),
    (dict(mode="resample"), r"unknown lesion mode 'resample'"),
    (dict(reference="x"), r"'zero' takes no reference"),
    (dict(min_effect={"grammaticality": 1.0}), r"no behaviour \['grammaticality'\]"),
    (dict(min_effect=-1), r"min_effect must be a positive number"),
    (dict(n_controls=0), r"n_controls must be an integer >= 1"),
])
def test_bad_input_fails_before_any_forward(organism, tiny_bat, no_forward, kwargs, message):
    with pytest.raises(AnalysisError, match=message):
        lesion_atlas(organism, tiny_bat, **{"progress": False, **kwargs})


def test_bad_battery_and_behaviours(organism, tiny_bat, heads, no_forward):
    with pytest.raises(AnalysisError, match="expected a Battery"):
        lesion_atlas(organism, [tiny_bat["copying"]], progress=False)
    with pytest.raises(ColumnError, match="harm_grammaticality"):
        heads.top(1, by="harm_grammaticality")
    stim = tiny_bat["copying"].stimuli
    with pytest.raises(AnalysisError, match="unknown kind"):
        Behaviour("x", stim, "perplexity", tiny_bat["copying"].rows)
    with pytest.raises(AnalysisError, match="position 0"):
        Behaviour("x", stim, "loss", np.ones(len(stim), bool))
    with pytest.raises(AnalysisError, match="good_id and bad_id"):
        Behaviour("x", stim, "accuracy", tiny_bat["copying"].rows)
    with pytest.raises(AnalysisError, match="distinct"):
        Battery([tiny_bat["copying"], tiny_bat["copying"]])


def test_model_is_pristine_after_an_error_inside_a_pass(organism, tiny_bat, monkeypatch):
    stim = tiny_bat["copying"].stimuli
    with torch.no_grad():
        before = organism(stim.ids)

    def broken(keep, b, mean):
        def hook_fn(act, hook):
            raise RuntimeError("boom")
        return hook_fn

    monkeypatch.setattr(lesions, "_silencer", broken)
    with pytest.raises(RuntimeError, match="boom"):  # attn.1 lesions resume at block 1, with the layer list cut
        lesion_atlas(organism, tiny_bat, "attn.1", n_controls=1, progress=False)
    assert_pristine(organism, stim, before)
