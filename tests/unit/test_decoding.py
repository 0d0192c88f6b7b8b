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
    """All of mlp.0 to POS, with the ambiguous word forms as the subset (one permutation: fitted to
    convergence with the probe's weak regularisation, it costs as much as the probe's C search)."""
    return decode(rec, "mlp.0", "pos_tag", folds=3, n_random=1, n_permutations=1, subset="ambiguous", progress=False)


@pytest.fixture(scope="module")
def top10(rec):
    return llmscope.tuning(rec, "mlp.0", "pos_tag", progress=False).top(10)


# ---------------------------------------------------------------- ground truth on the organism


def test_mlp0_decodes_pos_at_the_cards_accuracy(pos, words):
    m = pos.meta
    assert m["accuracy"] >= PASS and POS["accuracy"] - m["accuracy"] < 0.02, m["accuracy"]
    assert m["subset_accuracy"] >= PASS, m["subset_accuracy"]  # ambiguous forms: word identity cannot tell them
    assert m["n_tokens"] == len(words) and m["n_seqs"] == words.seq.nunique() and m["n_units"] == 512
    assert m["n_subset"] == int(words.ambiguous.sum())
    assert pos.predictions.index.tolist() == words.index.tolist()  # one out-of-fold prediction per token, BOS out
    assert (pos.predictions["true"] == words.pos_tag).all()


def test_controls_fall_to_chance(pos, words):
    m = pos.meta
    share = words.pos_tag.value_counts(normalize=True)
    assert m["majority_class"] == share.index[0] and m["majority"] == pytest.approx(share.iloc[0], abs=0.02)
    permuted = pos.df[pos.df.condition == "permuted"]
    assert len(permuted) == 1 and (permuted.accuracy < m["majority"] + 0.03).all(), permuted
    assert m["permuted_accuracy"] < m["accuracy"] - 0.5
    assert m["p"] == pytest.approx(1 / 2)  # no permutation reached the real accuracy
    # every unit of mlp.0: no random set of 512 differs from it, and the result says so
    random = pos.df[pos.df.condition == "random"]
    assert len(random) == 1 and random.accuracy.isna().all() and np.isnan(m["random_accuracy"])
    assert "every unit" in m["random_note"]


def test_folds_hold_whole_sequences_and_match_sklearn(rec, top10, words):
    """The probe against scikit-learn run by hand: in each outer fold, GridSearchCV (log loss,
    grouped inner folds) chooses C on the training rows, and a pipeline refitted with it predicts
    the test rows."""
    res = decode(rec, top10, "pos_tag", folds=5, n_random=0, n_permutations=0, progress=False)
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
    assert res.meta["accuracy"] == pytest.approx(np.mean(expected == y), abs=1e-3)


def test_every_fit_converges_and_the_controls_use_the_folds_C(rec, top10):
    res = decode(rec, top10, "pos_tag", target="next", folds=3, n_random=2, n_permutations=2, progress=False)
    fitted = res.df[res.df.condition != "majority"]
    assert (fitted.converged == 1).all() and res.meta["converged"] == 1.0, res.df  # permuted labels too
    assert len(res.meta["C"]) == 3 and set(res.meta["C"]) <= set(CS)


def test_tuning_C_removes_the_overfit_of_a_fixed_C(rec):
    """The issue's case: all 512 neurons of mlp.0 reading the next token's tag. C=1 overfits;
    the C chosen inside each fold is smaller and reads it better."""
    few = rec.select("seq < 16")
    res = decode(few, "mlp.0", "pos_tag", target="next", folds=3, n_random=0, n_permutations=0, progress=False)
    rows = few.tokens[~few.tokens.is_bos]
    nxt = rows.groupby("seq").pos_tag.shift(-1)
    keep = nxt.notna().to_numpy()
    X = few.responses("mlp.0")[np.flatnonzero(~few.tokens.is_bos.to_numpy())[keep]].astype(np.float64)
    with threadpool_limits(1):
        fixed = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=TOL, max_iter=10_000)),
                                  X, nxt[keep].to_numpy(), groups=rows.seq[keep], cv=GroupKFold(3))
    at_1 = np.mean(fixed == nxt[keep].to_numpy())
    assert max(res.meta["C"]) < 1 and res.meta["accuracy"] > at_1 + 0.03, (res.meta["C"], res.meta["accuracy"], at_1)


def test_the_result_does_not_depend_on_the_thread_count(rec, monkeypatch):
    """Fits converged to TOL: 1 and 2 BLAS/OpenMP threads give the same C, predictions and
    accuracies (C=1 fits stopped after 100 steps gave different predictions). Two Cs keep the
    two-thread run short on a busy machine."""
    monkeypatch.setattr(decoding, "CS", (0.01, 1.0))
    few, runs = rec.select("seq < 20"), {}
    for threads in (1, 2):
        monkeypatch.setattr(decoding, "THREADS", threads)
        runs[threads] = decode(few, ("mlp.1", range(32)), "pos_tag", target="next", folds=3, n_random=1,
                               n_permutations=1, progress=False)
    assert runs[1].meta["C"] == runs[2].meta["C"]
    np.testing.assert_allclose(runs[1].df.accuracy, runs[2].df.accuracy, atol=1e-6)
    assert runs[1].predictions.equals(runs[2].predictions)


def test_C_is_chosen_when_an_inner_fold_lacks_a_class(rec):
    """Few documents: an inner training fold can miss a rare class that its validation fold holds;
    its log loss is still finite (scikit-learn's neg_log_loss scored every C NaN and took the first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = decode(rec.select("seq < 4"), ("mlp.0", range(16)), "pos_tag", folds=2, n_random=0, n_permutations=0,
                     progress=False)
    assert len(res.meta["C"]) == 2


def test_too_few_sequences_to_choose_C(rec):
    with pytest.raises(AnalysisError, match="choosing C"):
        decode(rec.select("seq < 2"), ("mlp.0", [1, 2]), "pos_tag", folds=2, n_random=0, n_permutations=0,
               progress=False)


def test_ten_selective_units_beat_ten_random_units(rec, top10):
    res = decode(rec, top10, "pos_tag", n_random=5, n_permutations=0, progress=False)
    random = res.df[res.df.condition == "random"]
    assert len(random) == 5 and (random.n_units == 10).all()
    assert res.meta["accuracy"] > random.accuracy.max() + 0.1, res.df
    assert res.meta["random_sd"] > 0  # the draws differ


def test_next_token_pos_decodes_best_from_the_later_layer(rec, words):
    """Half the documents, 3 folds."""
    half = rec.select("seq < 30")
    early, late = (decode(half, s, "pos_tag", target="next", folds=3, n_random=0, n_permutations=0, progress=False)
                   for s in ("mlp.0", "mlp.1"))
    assert late.meta["accuracy"] > early.meta["accuracy"] + 0.05 > late.meta["majority"] + 0.05
    # the last token of each sequence has no next token; the label is the next row's
    half_words = words[words.seq < 30]
    assert late.meta["n_tokens"] == len(half_words) - half_words.seq.nunique()
    rows = late.predictions.index.to_numpy()
    assert (late.predictions["true"].to_numpy() == rec.tokens.pos_tag.to_numpy()[rows + 1]).all()


def test_include_bos_adds_the_bos_rows(rec):
    res = decode(rec, ("mlp.0", [1, 2]), "pos_tag", include_bos=True, folds=2, n_random=0, n_permutations=0,
                 progress=False)
    assert res.meta["n_tokens"] == len(rec) and "BOS" in res.meta["classes"]


def test_curve_rises_with_k_above_random(rec):
    ranked = llmscope.tuning(rec, "mlp.0", "pos_tag", progress=False).top(20)
    curve = decode_curve(rec, ranked, "pos_tag", ks=[1, 5, 20], folds=3, n_random=3, progress=False)
    df = curve.df
    units = df[df.condition == "units"].set_index("k").accuracy
    random = df[df.condition == "random"].groupby("k").accuracy
    assert units[20] > units[1] and (random.size() == 3).all()
    assert (units[[5, 20]] > random.mean()[[5, 20]] + 0.05).all(), df
    assert curve.meta["ks"] == [1, 5, 20] and len(curve.plot().data) == 4


def test_curve_takes_sets_that_are_not_prefixes(rec):
    sets = {1: ("mlp.1", [4]), 3: [("mlp.0", [1, 2]), ("mlp.1", [9])]}
    curve = decode_curve(rec, sets, "number", folds=2, n_random=2, progress=False)
    assert curve.df[curve.df.condition == "units"].n_units.tolist() == [1, 3]


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
    fig = pos.plot()
    assert [t.x[0] for t in fig.data if t.type == "bar"] == ["units", "random", "permuted"]
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
    (dict(folds=1), "folds"), (dict(target="previous"), "target"), (dict(n_random=-1), "n_random"),
    (dict(n_permutations=1.5), "n_permutations"), (dict(subset="pos_tag"), "boolean"),
    (dict(subset="nope"), "nope"), (dict(include_bos="yes"), "include_bos"),
])
def test_bad_arguments(rec, kwargs, match):
    with pytest.raises((AnalysisError, ColumnError), match=match):
        decode(rec, "mlp.0", "pos_tag", **{"progress": False, **kwargs})


def test_curve_bad_sets(rec, top10):
    with pytest.raises(AnalysisError, match="ks up to 20"):
        decode_curve(rec, top10, "pos_tag", ks=[5, 20], progress=False)
    with pytest.raises(AnalysisError, match="ranked unit table"):
        decode_curve(rec, "mlp.0", "pos_tag", progress=False)
    with pytest.raises(AnalysisError, match="not a Recording|reads a Recording"):
        decode(pd.DataFrame(), "mlp.0", "pos_tag")
