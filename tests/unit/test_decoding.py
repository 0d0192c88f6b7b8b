"""Decoding probes on the organism grammar-2l, whose card says what they must find."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import llmscope
from llmscope.analysis import decoding
from llmscope.analysis.decoding import CS, INNER_FOLDS, INNER_TOL, TOL, _permute_within, _random_columns, decode, decode_curve
from llmscope.errors import AnalysisError, ColumnError, SiteError
from llmscope.stimuli import grammar
from tests.unit.renames import assert_renamed

CARD = json.loads((Path(llmscope.__file__).parent / "organisms" / "grammar-2l" / "card.json").read_text())
POS = CARD["facts"]["pos_decoding"]
PASS = CARD["thresholds"]["pos_accuracy"]


@pytest.fixture(scope="module")
def rec(organism):
    stim = grammar(organism, n_docs=60, seed=0)
    return llmscope.record(organism, stim, ["mlp.0", "mlp.1"], dtype="float32", progress=False)


@pytest.fixture(scope="module")
def words(rec):
    """The trial-table rows decoded by default: every token but BOS."""
    return rec.tokens[~rec.tokens.is_bos]


@pytest.fixture(scope="module")
def pos(rec):
    """All of mlp.0 to POS, with the ambiguous word forms reported apart (one permutation: fitted to
    convergence with the probe's weak regularisation, it costs as much as the probe's C search)."""
    return decode(rec, "mlp.0", "pos_tag", folds=3, n_controls=1, where="ambiguous", progress=False)


@pytest.fixture(scope="module")
def top10(rec):
    return llmscope.tuning(rec, "mlp.0", "pos_tag", progress=False).top(10)


# ---------------------------------------------------------------- ground truth on the organism


def test_mlp0_decodes_pos_at_the_cards_accuracy(pos, words):
    m, r = pos.meta, pos.df.iloc[0]
    assert len(pos.df) == 1 and r.accuracy >= PASS and POS["accuracy"] - r.accuracy < 0.02, r.accuracy
    assert r.accuracy_where >= PASS, r.accuracy_where  # ambiguous forms: word identity cannot tell them
    assert m["n_tokens"] == len(words) and m["n_seqs"] == words.seq.nunique() and r.n_units == m["n_units"] == 512
    assert m["n_where"] == int(words.ambiguous.sum())
    assert pos.predictions.index.tolist() == words.index.tolist()  # one out-of-fold prediction per token, BOS out
    assert (pos.predictions["true"] == words.pos_tag).all()


def test_controls_fall_to_chance(pos, words):
    m, r = pos.meta, pos.df.iloc[0]
    share = words.pos_tag.value_counts(normalize=True)
    majority = r.accuracy_control_majority
    assert m["majority_class"] == share.index[0] and majority == pytest.approx(share.iloc[0], abs=0.02)
    permuted = pos.data["accuracy_control_labels"].to_numpy()
    assert len(permuted) == 1 and (permuted < majority + 0.03).all(), permuted
    assert r.accuracy_control_labels == permuted.mean() < r.accuracy - 0.5
    assert r.p == pytest.approx(1 / 2)  # no permutation reached the real accuracy
    # every unit of mlp.0: no random set of 512 differs from it, and the result says so
    random = pos.data["accuracy_control_units"].to_numpy()
    assert len(random) == 1 and np.isnan(random).all() and np.isnan(r.accuracy_control_units)
    assert "every unit" in m["control_units_note"] and m["n_controls"] == {"units": 1, "labels": 1}


def test_folds_hold_whole_sequences_and_match_sklearn(rec, top10, words):
    """The probe against scikit-learn run by hand: in each outer fold, GridSearchCV (log loss,
    grouped inner folds) chooses C on the training rows, and a pipeline refitted with it predicts
    the test rows."""
    res = decode(rec, top10, "pos_tag", folds=5, n_controls=0, progress=False)
    assert res.predictions.groupby("seq").fold.nunique().eq(1).all()
    assert res.units.equals(top10.index.sort_values())
    X = rec.responses("mlp.0", indices=res.units.get_level_values("unit").to_numpy())[words.index].astype(np.float64)
    y, seqs = words.pos_tag.to_numpy(), words.seq.to_numpy()
    expected, chosen = np.empty(len(y), dtype=object), []
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("error")  # every fit converges
        for train, test in GroupKFold(5).split(X, y, seqs):
            probe = lambda C, tol: make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=tol, max_iter=10_000))
            search = GridSearchCV(probe(1.0, INNER_TOL), {"logisticregression__C": list(CS)}, scoring="neg_log_loss",
                                  cv=GroupKFold(INNER_FOLDS), refit=False).fit(X[train], y[train], groups=seqs[train])
            chosen.append(search.best_params_["logisticregression__C"])
            expected[test] = probe(chosen[-1], TOL).fit(X[train], y[train]).predict(X[test])
    assert res.meta["C"] == chosen
    assert np.mean(res.predictions.predicted.to_numpy() == expected) > 0.999
    assert res.df.accuracy[0] == pytest.approx(np.mean(expected == y), abs=1e-3)


def test_every_fit_converges_and_the_controls_use_the_folds_C(rec, top10):
    res = decode(rec, top10, "pos_tag", target="next", folds=3, n_controls=2, progress=False)
    d = res.data
    assert (d.converged_control_units == 1).all() and (d.converged_control_labels == 1).all()  # permuted labels too
    assert res.df.converged[0] == 1 and res.meta["converged"] == 1.0, res.df
    assert len(res.meta["C"]) == 3 and set(res.meta["C"]) <= set(CS)


def test_tuning_C_removes_the_overfit_of_a_fixed_C(rec):
    """The issue's case: all 512 neurons of mlp.0 reading the next token's tag. C=1 overfits;
    the C chosen inside each fold is smaller and reads it better."""
    few = rec.select("seq < 16")
    res = decode(few, "mlp.0", "pos_tag", target="next", folds=3, n_controls=0, progress=False)
    rows = few.tokens[~few.tokens.is_bos]
    nxt = rows.groupby("seq").pos_tag.shift(-1)
    keep = nxt.notna().to_numpy()
    X = few.responses("mlp.0")[np.flatnonzero(~few.tokens.is_bos.to_numpy())[keep]].astype(np.float64)
    with threadpool_limits(1):
        fixed = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=TOL, max_iter=10_000)),
                                  X, nxt[keep].to_numpy(), groups=rows.seq[keep], cv=GroupKFold(3))
    at_1 = np.mean(fixed == nxt[keep].to_numpy())
    accuracy = res.df.accuracy[0]
    assert max(res.meta["C"]) < 1 and accuracy > at_1 + 0.03, (res.meta["C"], accuracy, at_1)


def test_the_result_does_not_depend_on_the_thread_count(rec, monkeypatch):
    """Fits converged to TOL: 1 and 2 BLAS/OpenMP threads give the same C, predictions and
    accuracies (C=1 fits stopped after 100 steps gave different predictions). Two Cs keep the
    two-thread run short on a busy machine."""
    monkeypatch.setattr(decoding, "CS", (0.01, 1.0))
    few, runs = rec.select("seq < 20"), {}
    for threads in (1, 2):
        monkeypatch.setattr(decoding, "THREADS", threads)
        runs[threads] = decode(few, ("mlp.1", range(32)), "pos_tag", target="next", folds=3, n_controls=1,
                               progress=False)
    assert runs[1].meta["C"] == runs[2].meta["C"]
    pd.testing.assert_frame_equal(runs[1].df, runs[2].df, atol=1e-6)
    assert runs[1].predictions.equals(runs[2].predictions)


def test_C_is_chosen_when_an_inner_fold_lacks_a_class(rec):
    """Few documents: an inner training fold can miss a rare class that its validation fold holds;
    its log loss is still finite (scikit-learn's neg_log_loss scored every C NaN and took the first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = decode(rec.select("seq < 4"), ("mlp.0", range(16)), "pos_tag", folds=2, n_controls=0, progress=False)
    assert len(res.meta["C"]) == 2


def test_too_few_sequences_to_choose_C(rec):
    with pytest.raises(AnalysisError, match="choosing C"):
        decode(rec.select("seq < 2"), ("mlp.0", [1, 2]), "pos_tag", folds=2, n_controls=0, progress=False)


def test_ten_selective_units_beat_ten_random_units(rec, top10):
    res = decode(rec, top10, "pos_tag", n_controls=5, progress=False)
    random = res.data["accuracy_control_units"].to_numpy()
    assert len(random) == 5 and res.df.n_units[0] == 10
    assert res.df.accuracy[0] > random.max() + 0.1, res.df
    sd = res.df.accuracy_control_units_sd[0]
    assert sd == pytest.approx(random.std(ddof=1)) and sd > 0  # the draws differ


def test_next_token_pos_decodes_best_from_the_later_layer(rec, words):
    """Half the documents, 3 folds."""
    half = rec.select("seq < 30")
    early, late = (decode(half, s, "pos_tag", target="next", folds=3, n_controls=0, progress=False)
                   for s in ("mlp.0", "mlp.1"))
    e, l = early.df.iloc[0], late.df.iloc[0]
    assert l.accuracy > e.accuracy + 0.05 > l.accuracy_control_majority + 0.05
    # the last token of each sequence has no next token; the label is the next row's
    half_words = words[words.seq < 30]
    assert late.meta["n_tokens"] == len(half_words) - half_words.seq.nunique()
    rows = late.predictions.index.to_numpy()
    assert (late.predictions["true"].to_numpy() == rec.tokens.pos_tag.to_numpy()[rows + 1]).all()


def test_include_bos_adds_the_bos_rows(rec):
    res = decode(rec, ("mlp.0", [1, 2]), "pos_tag", include_bos=True, folds=2, n_controls=0, progress=False)
    assert res.meta["n_tokens"] == len(rec) and "BOS" in res.meta["classes"]


def test_curve_rises_with_k_above_random(rec):
    ranked = llmscope.tuning(rec, "mlp.0", "pos_tag", progress=False).top(20)
    curve = decode_curve(rec, ranked, "pos_tag", ks=[1, 5, 20], folds=3, n_controls=3, progress=False)
    df = curve.df.set_index("k")
    draws = curve.data["accuracy_control_units"]
    assert draws.dims == ("k", "draw") and draws.shape == (3, 3)
    np.testing.assert_allclose(df.accuracy_control_units, draws.mean("draw"))
    assert df.accuracy[20] > df.accuracy[1]
    assert (df.accuracy[[5, 20]] > df.accuracy_control_units[[5, 20]] + 0.05).all(), df
    assert curve.meta["ks"] == [1, 5, 20]
    # the figure shows the result's numbers: the band is the draws' range, the lines the means
    high, low, mean, units = curve.plot().data
    np.testing.assert_allclose(high.y, draws.max("draw")) and np.testing.assert_allclose(low.y, draws.min("draw"))
    np.testing.assert_allclose(mean.y, df.accuracy_control_units) and np.testing.assert_allclose(units.y, df.accuracy)
    assert list(units.x) == [1, 5, 20]


def test_curve_takes_any_units_in_their_order(rec):
    """A site's units: the first k in index order."""
    few = rec.select("seq < 8")
    curve = decode_curve(few, "mlp.1", "pos_tag", ks=[2], folds=2, n_controls=0, progress=False)
    alone = decode(few, ("mlp.1", [0, 1]), "pos_tag", folds=2, n_controls=0, progress=False)
    assert curve.df.accuracy[0] == alone.df.accuracy[0] and curve.meta["C"][2] == alone.meta["C"]


def test_curve_takes_sets_that_are_not_prefixes(rec):
    sets = {1: ("mlp.1", [4]), 3: [("mlp.0", [1, 2]), ("mlp.1", [9])]}
    curve = decode_curve(rec, sets, "number", folds=2, n_controls=2, progress=False)
    assert curve.df.n_units.tolist() == [1, 3] and curve.df.k.tolist() == [1, 3]


def test_random_units_come_from_the_same_sites_in_the_same_numbers():
    mlp0, mlp1 = SimpleNamespace(name="mlp.0"), SimpleNamespace(name="mlp.1")
    task = SimpleNamespace(offsets={"mlp.0": 0, "mlp.1": 512}, sizes={"mlp.0": 512, "mlp.1": 512})
    cols = _random_columns(task, [(mlp0, np.array([1, 2, 3])), (mlp1, np.array([5]))], np.random.default_rng(0))
    assert len(cols) == 4 and (cols[:3] < 512).all() and 512 <= cols[3] < 1024 and len(set(cols[:3])) == 3


def test_permutation_keeps_each_sequences_labels():
    y, groups = np.arange(12), np.repeat([2, 0, 1], 4)
    out = _permute_within(y, groups, np.random.default_rng(0))
    assert not np.array_equal(out, y)
    for g in (0, 1, 2):
        assert sorted(out[groups == g]) == sorted(y[groups == g])


def test_plot_shows_conditions_and_escapes_the_label(pos):
    fig, r = pos.plot(), pos.df.iloc[0]
    bars = {t.x[0]: t.y[0] for t in fig.data if t.type == "bar"}
    assert list(bars) == ["units", "random units", "permuted labels"]
    assert bars["units"] == r.accuracy and bars["permuted labels"] == r.accuracy_control_labels
    np.testing.assert_allclose([t for t in fig.data if t.name == "permuted labels: draws"][0].y,
                               pos.data["accuracy_control_labels"])
    assert fig.layout.shapes[0].y0 == r.accuracy_control_majority
    assert "pos_tag" in fig.layout.title.text
    assert set(pos.by_class().index) == set(pos.meta["classes"])


# ---------------------------------------------------------------- bad input


def test_a_label_with_one_class(rec):
    with pytest.raises(AnalysisError, match="1 category"):
        decode(rec.select("pos_tag == 'NOUN'"), "mlp.0", "pos_tag", progress=False)


def test_too_few_sequences_for_the_folds(rec):
    with pytest.raises(AnalysisError, match="at least 5 sequences"):
        decode(rec.select("seq < 3"), "mlp.0", "pos_tag", folds=5, progress=False)


def test_unknown_label_column(rec):
    with pytest.raises(ColumnError, match="pos_tags"):
        decode(rec, "mlp.0", "pos_tags", progress=False)


@pytest.mark.parametrize("units", ["attn.0", ("mlp.1", [512])])
def test_units_not_recorded(rec, units):
    with pytest.raises(SiteError):
        decode(rec, units, "pos_tag", progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(folds=1), "folds"), (dict(target="previous"), "target"), (dict(n_controls=-1), "n_controls"),
    (dict(n_controls=1.5), "n_controls"), (dict(n_controls=1001), "n_controls"), (dict(where="pos_tag"), "boolean"),
    (dict(where="nope"), "nope"), (dict(include_bos="yes"), "include_bos"),
    (dict(n_random=2, n_controls=2), "old names of n_controls"),
])
def test_bad_arguments(rec, kwargs, match):
    with pytest.raises((AnalysisError, ColumnError), match=match):
        decode(rec, "mlp.0", "pos_tag", **{"progress": False, **kwargs})


def test_curve_bad_sets(rec, top10):
    with pytest.raises(AnalysisError, match="ks up to 20"):
        decode_curve(rec, top10, "pos_tag", ks=[5, 20], progress=False)
    with pytest.raises(AnalysisError, match="ks up to 3"):
        decode_curve(rec, ("mlp.0", [4, 5]), "pos_tag", ks=[1, 3], progress=False)
    with pytest.raises(SiteError):
        decode_curve(rec, "attn.0", "pos_tag", progress=False)
    with pytest.raises(AnalysisError, match="not a Recording|reads a Recording"):
        decode(pd.DataFrame(), "mlp.0", "pos_tag")


# ---------------------------------------------------------------- old names, for one release


@pytest.fixture(scope="module")
def small(rec):
    return rec.select("seq < 8")


@pytest.mark.parametrize("old, new", [
    (dict(n_random=2, n_permutations=2, subset="ambiguous"), dict(n_controls=2, where="ambiguous")),
    (dict(n_permutations=1), dict(n_controls=1)),
])
def test_old_names_of_decode_warn_and_give_the_same_result(small, old, new):
    call = lambda **kw: decode(small, ("mlp.0", range(16)), "pos_tag", folds=2, progress=False, **kw)
    assert_renamed(lambda: call(**old), lambda: call(**new))


def test_old_names_of_decode_curve_warn_and_give_the_same_result(small):
    call = lambda **kw: decode_curve(small, {2: ("mlp.0", [1, 2])}, "pos_tag", folds=2, progress=False, **kw)
    assert_renamed(lambda: call(n_random=2, subset="ambiguous"), lambda: call(n_controls=2, where="ambiguous"))


def test_old_draw_counts_that_differ_each_count_their_own_control(small):
    """n_random=1 with n_permutations=2 (an old call): one random-unit draw and two permutations,
    the very draws of n_controls=1 and of n_controls=2 (the two controls draw from their own streams)."""
    call = lambda **kw: decode(small, ("mlp.0", range(16)), "pos_tag", folds=2, progress=False, **kw)
    with pytest.warns(FutureWarning, match="n_random and n_permutations will be removed"):
        both = call(n_random=1, n_permutations=2)
    one, two = call(n_controls=1), call(n_controls=2)
    assert both.meta["n_controls"] == {"units": 1, "labels": 2}
    assert both.data["accuracy_control_units"].equals(one.data["accuracy_control_units"])
    assert both.data["accuracy_control_labels"].equals(two.data["accuracy_control_labels"])
    assert both.df.p[0] == two.df.p[0] and both.df.accuracy[0] == one.df.accuracy[0]
