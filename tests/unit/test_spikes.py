"""Spikes, rasters and PSTH: exact against numpy, streamed, and the induction head's PSTH on grammar-2l."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

import llmscope
from llmscope.analysis import events, responses
from llmscope.stimuli import trials
from llmscope.analysis.responses import scalar
from llmscope.analysis.spikes import PSTHResult, Spikes, psth, spikes
from llmscope.errors import AnalysisError, ColumnError, SiteError
from tests.unit.renames import assert_renamed


def _onsets(tokens: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Repeat onsets (first token of a copied span) and fresh sentence onsets (first token of a
    new sentence that follows another one): both come right after a sentence's final PUNCT."""
    rep, seq = tokens.is_repeat.to_numpy(bool), tokens.seq.to_numpy()
    same = np.r_[False, seq[1:] == seq[:-1]]
    after_rep = np.r_[False, rep[:-1]] & same
    after_punct = np.r_[False, (tokens.pos_tag == "PUNCT").to_numpy()[:-1]] & same
    return rep & ~after_rep, (tokens.sent_pos == 0).to_numpy() & ~rep & after_punct


@pytest.fixture(scope="module")
def rec(organism):
    """grammar-2l's mlp.0 and attn.1 on 32 grammar documents, with onset columns."""
    stim = llmscope.stimuli.grammar(organism, n_docs=32, seed=1)
    repeat_onset, stim.tokens["fresh_onset"] = _onsets(stim.tokens)
    assert np.array_equal(stim.tokens["repeat_onset"].to_numpy(), repeat_onset)  # grammar() marks them
    return llmscope.record(organism, stim, ["mlp.0", "attn.1"], dtype="float32", progress=False)


@pytest.fixture(scope="module")
def kept(rec):
    """The analysed rows (BOS out) and mlp.0's responses there."""
    keep = trials.rows(rec.tokens)
    return keep, scalar(rec, "mlp.0")[keep]


# ---------------------------------------------------------------- spikes


def test_zscore_spikes_are_crossings_of_mean_plus_z_std(rec, kept):
    keep, x = kept
    sp = spikes(rec, "mlp.0", threshold=2.5, progress=False)
    np.testing.assert_allclose(sp.df.threshold, x.mean(0, dtype=np.float64) + 2.5 * x.std(0, dtype=np.float64),
                               rtol=1e-5)
    dense = (x > sp.df.threshold.to_numpy()).T
    assert np.array_equal(sp.matrix.toarray().astype(bool), dense)
    assert sp.matrix.shape == (512, keep.sum()) and sp.matrix.dtype == np.uint8
    assert sp.df.n_spikes.tolist() == dense.sum(1).tolist()
    np.testing.assert_allclose(sp.df.rate, dense.mean(1))
    assert 0 < sp.meta["n_spikes"] < 0.05 * dense.size  # spikes are rare: the raster is kept sparse
    assert sp.df.index.names == ["site", "unit"] and sp.df.index[3] == ("mlp.0", 3)


def test_quantile_thresholds_are_numpys_and_rates_are_one_minus_q(rec, kept):
    _, x = kept
    sp = spikes(rec, "mlp.0", method="quantile", threshold=0.95, progress=False)
    np.testing.assert_allclose(sp.df.threshold, np.quantile(x.astype(np.float64), 0.95, axis=0), rtol=1e-6)
    assert sp.df.n_spikes.tolist() == (x > sp.df.threshold.to_numpy()).sum(0).tolist()
    assert np.all(sp.df.rate <= 0.05 + 1 / len(x))  # strictly above: ties at the quantile do not spike
    distinct = np.array([len(np.unique(col[col >= t])) == (col >= t).sum() for col, t in zip(x.T, sp.df.threshold)])
    assert distinct.sum() > 256 and np.all(np.abs(sp.df.rate[distinct] - 0.05) <= 1 / len(x))


def test_streaming_in_small_blocks_gives_the_same_spikes(rec, monkeypatch):
    whole = {m: spikes(rec, "mlp.0", method=m, threshold=t, progress=False)
             for m, t in (("zscore", 3.0), ("quantile", 0.9))}
    monkeypatch.setattr(responses, "BLOCK_BYTES", 4 * 512 * 97)  # 97-row blocks: 41 of them
    for m, t in (("zscore", 3.0), ("quantile", 0.9)):
        part = spikes(rec, "mlp.0", method=m, threshold=t, progress=False)
        np.testing.assert_allclose(part.df.threshold, whole[m].df.threshold, rtol=1e-6)
        assert (part.matrix != whole[m].matrix).nnz == 0


def test_bos_rows_are_columns_only_when_asked(rec):
    out = spikes(rec, "attn.1", progress=False)
    inc = spikes(rec, "attn.1", include_bos=True, progress=False)
    assert len(out.tokens) == trials.rows(rec.tokens).sum() == out.matrix.shape[1]
    assert len(inc.tokens) == len(rec) == inc.matrix.shape[1]
    assert out.tokens.index.tolist() == np.flatnonzero(trials.rows(rec.tokens)).tolist()


def test_units_from_a_unit_table_and_the_canvas_arrays(rec):
    sp = spikes(rec, "attn.1", method="quantile", threshold=0.8, progress=False)
    for units in (sp.df.iloc[[3, 1]], ("attn.1", [3, 1])):  # any units of one site, in their order
        sub = spikes(rec, units, method="quantile", threshold=0.8, progress=False)
        assert sub.df.index.tolist() == [("attn.1", 3), ("attn.1", 1)]
        assert (sub.matrix != sp.matrix[[3, 1]]).nnz == 0
    assert spikes(rec, "attn.1", sp.df.iloc[[2]], method="quantile", threshold=0.8,
                  progress=False).df.index.tolist() == [("attn.1", 2)]  # a site, and a table of it as its indices
    assert sp.top(1).index[0] == sp.df.rate.idxmax()  # top() ranks by rate
    pairs = sp.pairs()
    assert pairs.dtype == np.int32 and pairs.shape == (sp.meta["n_spikes"], 2)
    dense = sp.window()
    assert dense.dtype == np.uint8 and dense[pairs[:, 0], pairs[:, 1]].all() and dense.sum() == len(pairs)
    assert np.array_equal(sp.window(slice(1, 3), slice(10, 60)), dense[1:3, 10:60])
    flipped = sp.reorder(sp.df.index[::-1])
    assert flipped.df.index.tolist() == sp.df.index[::-1].tolist()
    assert np.array_equal(flipped.window(), dense[::-1])


def test_sort_by_selectivity_orders_rows_by_preferred_category_then_auc(rec):
    from llmscope.analysis.tuning import tuning

    plain = spikes(rec, "mlp.0", method="quantile", threshold=0.95, progress=False)
    sp = spikes(rec, "mlp.0", method="quantile", threshold=0.95, sort_by="pos_tag", progress=False)
    tun = tuning(rec, "mlp.0", "pos_tag", progress=False).df
    assert sorted(sp.df.index) == sorted(plain.df.index) and sp.meta["sort_by"] == "pos_tag"
    assert sp.df.preferred.tolist() == tun.loc[sp.df.index, "preferred"].tolist()
    cats = sp.df.preferred.tolist()
    assert cats == sorted(cats) and len(set(cats)) >= 3
    for _, group in sp.df.groupby("preferred"):
        assert group.auc.is_monotonic_decreasing
    rows = plain.df.index.get_indexer(sp.df.index)
    assert (sp.matrix != plain.matrix[rows]).nnz == 0  # each row keeps its unit's spikes
    np.testing.assert_allclose(sp.df.threshold, plain.df.threshold.iloc[rows])


def test_raster_figure_has_a_categorical_unit_axis_and_escaped_text(rec):
    sp = spikes(rec, "attn.1", method="quantile", threshold=0.9, progress=False)
    sp.tokens = sp.tokens.assign(text="<b>x</b>")
    fig = sp.plot()
    assert fig.data[0].type == "scattergl" and len(fig.data[0].x) == sp.meta["n_spikes"]
    pairs = sp.pairs()  # one marker per spike, at its token column and unit row
    assert sorted(zip(fig.data[0].x, fig.data[0].y)) == sorted((c, f"attn.1:{r}") for r, c in pairs)
    part = sp.plot(units=slice(1, 3), tokens=slice(10, 60)).data[0]
    inside = pairs[(pairs[:, 0] >= 1) & (pairs[:, 0] < 3) & (pairs[:, 1] >= 10) & (pairs[:, 1] < 60)]
    assert sorted(zip(part.x, part.y)) == sorted((c, f"attn.1:{r}") for r, c in inside)
    assert fig.layout.yaxis.type == "category"
    assert list(fig.layout.yaxis.categoryarray) == ["attn.1:0", "attn.1:1", "attn.1:2", "attn.1:3"]
    assert set(fig.data[0].customdata) == {"&lt;b&gt;x&lt;/b&gt;"}


# ---------------------------------------------------------------- PSTH


def _by_hand(values: np.ndarray, tokens: pd.DataFrame, is_event: np.ndarray, offset: int) -> tuple[float, int]:
    """Mean of ``values`` (one per analysed row) at ``offset`` tokens from each event, same sequence."""
    where = {(s, p): i for i, (s, p) in enumerate(zip(tokens.seq, tokens.pos))}
    hits = [where.get((s, p + offset)) for s, p in zip(tokens.seq[is_event], tokens.pos[is_event])]
    hits = [h for h in hits if h is not None]
    return float(np.mean(values[hits])), len(hits)


def test_psth_of_a_recording_and_of_spikes_match_a_count_by_hand(rec):
    keep = trials.rows(rec.tokens)
    tokens = rec.tokens[keep]
    nouns = (tokens.pos_tag == "NOUN").to_numpy()
    x = scalar(rec, "attn.1")[keep][:, 2]
    p = psth(rec, "pos_tag == 'NOUN'", window=3, units=("attn.1", [2]), control=None, progress=False)
    sp = spikes(rec, "attn.1", method="quantile", threshold=0.9, progress=False)
    q = psth(sp, "pos_tag == 'NOUN'", window=3, units=[2], control=None)
    assert isinstance(p, PSTHResult) and p.kind == "psth" and p.meta["window"] == [3, 3]
    for offset in (-3, 0, 2):
        rate, n = _by_hand(x, tokens, nouns, offset)
        row = p.df[p.df.offset == offset].iloc[0]
        assert row.n_events == n and row.rate == pytest.approx(rate, rel=1e-5)
        spike_rate, _ = _by_hand(sp.window()[2], tokens, nouns, offset)
        assert q.df[q.df.offset == offset].rate.iloc[0] == pytest.approx(spike_rate)
    assert p.df.rate_control.isna().all() and p.meta["measure"] == "mean response"
    assert q.meta["measure"] == "spike rate" and q.meta["fingerprint"] == p.meta["fingerprint"]
    assert p.df.columns.tolist() == ["site", "unit", "offset", "rate", "rate_control", "rate_control_low",
                                     "rate_control_high", "n_events"]
    # a window (before, after) gives the same rows at its offsets
    lopsided = psth(rec, "pos_tag == 'NOUN'", window=(1, 3), units="attn.1", indices=[2], control=None,
                    progress=False).df
    assert lopsided.offset.tolist() == [-1, 0, 1, 2, 3]
    pd.testing.assert_frame_equal(lopsided, p.df[p.df.offset >= -1].reset_index(drop=True))


def test_shuffles_keep_each_sequences_event_count_at_distinct_positions():
    seq = np.repeat([0, 1, 2], [5, 8, 3])
    is_event = np.zeros(16, bool)
    is_event[[0, 1, 7, 15]] = True
    draws = list(events.shuffled(seq, is_event, 200, np.random.default_rng(0)))
    for d in draws:
        assert np.bincount(seq[d], minlength=3).tolist() == [2, 1, 1] and len(set(d)) == 4
    assert len({tuple(d) for d in draws}) > 20  # they move
    again = list(events.shuffled(seq, is_event, 200, np.random.default_rng(0)))
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))


def test_event_weights_need_the_rows_in_recording_order():
    tokens = pd.DataFrame({"seq": [0, 0, 1, 1], "pos": [0, 1, 0, 1]})
    is_event = np.array([True, False, False, True])
    w, counts = events.weights(tokens, is_event, 1, 0, 0)
    assert counts.tolist() == [[1, 2, 1]] and w.toarray()[[0, 2]].tolist() == [[0, 0, 1, 0], [0, 1, 0, 0]]
    with pytest.raises(AnalysisError, match=r"not in \(seq, pos\) order"):
        events.weights(tokens.iloc[::-1], is_event, 1, 0, 0)


def test_psth_plot_draws_a_line_and_a_control_band_per_unit(rec):
    p = psth(rec, "repeat_onset", window=2, units="attn.1", n_controls=20, progress=False)
    fig = p.plot(n=2)
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert names == ["attn.1:0 shuffled", "attn.1:0", "attn.1:1 shuffled", "attn.1:1"]
    assert sum(t.fill == "toself" for t in fig.data) == 2
    for unit in (0, 1):  # each unit's line is its rate, its dotted line the control's mean, the band its 95%
        d = p.df[p.df.unit == unit]
        band, control, line = fig.data[3 * unit: 3 * unit + 3]
        np.testing.assert_array_equal(line.y, d.rate)
        np.testing.assert_array_equal(control.y, d.rate_control)
        np.testing.assert_array_equal(band.y, np.r_[d.rate_control_high, d.rate_control_low[::-1]])
    with pytest.warns(FutureWarning, match="max_units"):
        assert len(p.plot(max_units=1).data) == 3
    title = psth(rec, "pos < 3", window=1, units="attn.1", control=None, progress=False).plot().layout.title.text
    assert "pos &lt; 3" in title


# ---------------------------------------------------------------- ground truth: the induction head


def test_induction_head_psth_rises_after_repeat_onsets_against_a_flat_shuffle(rec):
    """attn.1 head 0 (the card's induction head), hook_z norm, aligned on repeat onsets.

    Measured (32 documents, seed 1; seed 2 alike): offsets -5..-2 give 3.2-3.8, below the
    shuffled band (5.3-6.5); offsets 0..+5 give 7.9-9.3, above it. Offset -1 is high too
    (8.7), but that token is always the previous sentence's final PUNCT, where this head
    writes strongly anyway: fresh sentence onsets (same PUNCT at -1, nothing to copy) give
    8.5 there and stay at 3.5-5.1 after. So the rise belongs to the repeat from offset 0 on,
    and offset -1 is checked against that matched control rather than against the shuffle.
    """
    rep = psth(rec, "repeat_onset", window=5, units="attn.1", progress=False).df
    fresh = psth(rec, "fresh_onset", window=5, units=("attn.1", [0]), progress=False).df
    head = rep[rep.unit == 0].set_index("offset")
    before, after = head.loc[-5:-2], head.loc[0:5]
    assert (after.rate > after.rate_control_high).all()
    assert (before.rate < before.rate_control_low).all()
    rise = after.rate.mean() - before.rate.mean()
    assert rise > 3.0
    shuffled = head.rate_control
    assert shuffled.max() - shuffled.min() < 0.05 * rise  # the control is flat
    fresh = fresh.set_index("offset")
    assert abs(head.rate[-1] - fresh.rate[-1]) < 0.1 * (after.rate.mean() - fresh.rate.loc[0:5].mean())
    assert (head.rate.loc[0:5] > fresh.rate.loc[0:5] + 2.0).all()
    rises = rep[rep.offset >= 0].groupby("unit").rate.mean() - rep[rep.offset <= -2].groupby("unit").rate.mean()
    assert rises.idxmax() == 0 and (rises.drop(0) < 0.5).all()  # the other heads of layer 1 do not rise


def test_induction_head_spikes_by_quantile_show_the_same(rec):
    sp = spikes(rec, ("attn.1", [0]), method="quantile", threshold=0.9, progress=False)
    head = psth(sp, "repeat_onset", window=5).df.set_index("offset")
    assert head.rate.loc[0:5].mean() > head.rate_control_high.loc[0:5].mean()
    assert head.rate.loc[-5:-2].mean() < head.rate_control_low.loc[-5:-2].mean()
    assert head.rate_control.max() - head.rate_control.min() < 0.03
    assert head.rate_control.mean() == pytest.approx(0.1, abs=0.01)  # a shuffled event is any token


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("method, threshold", [
    ("quantile", 0.0), ("quantile", 1.0), ("quantile", 3.0), ("quantile", math.nan),
    ("zscore", 0.0), ("zscore", -1.0), ("zscore", math.inf), ("zscore", math.nan), ("zscore", True),
    ("zscore", "3"),
])
def test_threshold_outside_its_range(rec, method, threshold):
    what = "z-score" if method == "zscore" else "quantile"
    with pytest.raises(AnalysisError, match=rf"a {what} threshold .* must .* got {re.escape(repr(threshold))}"):
        spikes(rec, "attn.1", method=method, threshold=threshold, progress=False)


def test_unknown_method(rec):
    with pytest.raises(AnalysisError, match=r"unknown spike method 'mad'.*'zscore', 'quantile'"):
        spikes(rec, "attn.1", method="mad", progress=False)


def test_event_naming_a_missing_column(rec):
    with pytest.raises(ColumnError, match=r"colour == 'red'.*columns are \['seq'"):
        psth(rec, "colour == 'red'", units="attn.1", progress=False)
    with pytest.raises(ColumnError, match="onset"):
        psth(rec, "onset", units="attn.1", progress=False)


def test_event_that_is_not_a_condition(rec):
    with pytest.raises(AnalysisError, match=r"'pos_tag' must select rows"):
        psth(rec, "pos_tag", units="attn.1", progress=False)
    with pytest.raises(AnalysisError, match="not a valid query"):
        psth(rec, "pos_tag ==", units="attn.1", progress=False)


def test_event_that_matches_no_rows(rec):
    with pytest.raises(AnalysisError, match=r"pos_tag == 'XYZ'.* matches none of the \d+ tokens analysed"):
        psth(rec, "pos_tag == 'XYZ'", units="attn.1", progress=False)


@pytest.mark.parametrize("window", [0, -2, 1.5, True])
def test_window_below_one(rec, window):
    with pytest.raises(AnalysisError, match=rf"window must be an integer >= 1, got {window!r}"):
        psth(rec, "repeat_onset", window=window, units="attn.1", progress=False)


@pytest.mark.parametrize("window, match", [((0, 0), "holds only the event"), ((-1, 2), "window's before"),
                                           ((2, 1.5), "window's after")])
def test_window_pair_out_of_range(rec, window, match):
    with pytest.raises(AnalysisError, match=match):
        psth(rec, "repeat_onset", window=window, units="attn.1", progress=False)


def test_site_the_recording_lacks(rec):
    with pytest.raises(SiteError, match=r"'mlp\.1' was not recorded.*mlp\.0, attn\.1"):
        spikes(rec, "mlp.1", progress=False)
    with pytest.raises(SiteError, match=r"'mlp\.1' was not recorded"):
        psth(rec, "repeat_onset", units="mlp.1", progress=False)
    with pytest.raises(SiteError, match="needs units="):
        psth(rec, "repeat_onset", progress=False)
    sp = spikes(rec, "attn.1", progress=False)
    with pytest.raises(SiteError, match=r"spikes are of attn\.1, not of 'mlp\.0'"):
        psth(sp, "repeat_onset", units="mlp.0")
    with pytest.raises(SiteError, match=r"reads the units of one site; these are of \['mlp\.0', 'attn\.1'\]"):
        spikes(rec, [("mlp.0", [1]), ("attn.1", [0])], progress=False)
    with pytest.raises(SiteError, match="indices follow a site name"):
        spikes(rec, ("attn.1", [0]), [1], progress=False)


@pytest.mark.parametrize("units", [[4], [-1], [0, 9]])
def test_unit_index_out_of_range(rec, units):
    with pytest.raises(SiteError, match=r"out of range for attn\.1.*0\.\.3"):
        spikes(rec, "attn.1", units, progress=False)
    with pytest.raises(SiteError, match=r"out of range for attn\.1"):
        psth(rec, "repeat_onset", units=("attn.1", units), progress=False)


def test_a_unit_table_of_another_model(rec, tiny):
    from llmscope.identity import fingerprint

    table = pd.DataFrame(index=pd.MultiIndex.from_tuples([("attn.1", 0)], names=["site", "unit"]))
    table.attrs["fingerprint"] = fingerprint(tiny).to_dict()
    for call in (lambda: spikes(rec, table, progress=False), lambda: spikes(rec, "attn.1", table, progress=False),
                 lambda: psth(rec, "repeat_onset", units=table, progress=False)):
        with pytest.raises(SiteError, match="these units were made for .*; this model is grammar-2l"):
            call()


def test_an_empty_selection(rec):
    with pytest.raises(AnalysisError, match="at least 2 analysed tokens; this recording has 0"):
        spikes(rec.select(np.zeros(len(rec), bool)), "attn.1", progress=False)


def test_sort_by_a_missing_column(rec):
    with pytest.raises(ColumnError, match=r"no label column 'colour'"):
        spikes(rec, "attn.1", sort_by="colour", progress=False)


def test_units_the_spikes_do_not_hold(rec):
    sp = spikes(rec, "attn.1", [0, 1], progress=False)
    with pytest.raises(SiteError, match=r"units \[3\] of attn\.1 are not in these spikes"):
        psth(sp, "repeat_onset", units=[3])
    with pytest.raises(SiteError, match=r"belong to \['mlp\.0'\], not to attn\.1"):
        sp.reorder(pd.MultiIndex.from_tuples([("mlp.0", 1)], names=["site", "unit"]))


def test_bad_shuffle_arguments(rec):
    with pytest.raises(AnalysisError, match=r"unknown control 'circular'"):
        psth(rec, "repeat_onset", units="attn.1", control="circular", progress=False)
    with pytest.raises(AnalysisError, match=r"n_controls must be an integer >= 1 and <= 100000, got 0"):
        psth(rec, "repeat_onset", units="attn.1", n_controls=0, progress=False)
    with pytest.raises(AnalysisError, match="include_bos applies to a Recording"):
        psth(spikes(rec, "attn.1", progress=False), "repeat_onset", include_bos=True)
    with pytest.raises(AnalysisError, match="include_bos must be True or False, got 'yes'"):
        psth(rec, "repeat_onset", units="attn.1", include_bos="yes", progress=False)


def test_spikes_result_is_a_result(rec):
    sp = spikes(rec, "attn.1", progress=False)
    assert isinstance(sp, Spikes) and isinstance(sp, llmscope.Result)
    assert "spikes" in repr(sp) and "<b>" in sp._repr_html_()


# ---------------------------------------------------------------- the old names, for one release


@pytest.mark.parametrize("old, new", [
    (lambda r: spikes(r, site="attn.1", units=[2, 0], progress=False),
     lambda r: spikes(r, "attn.1", [2, 0], progress=False)),
    (lambda r: spikes(r, "attn.1", units=[2, 0], progress=False),  # positional site, old units=
     lambda r: spikes(r, ("attn.1", [2, 0]), progress=False)),
    (lambda r: psth(r, event="repeat_onset", window=2, site="attn.1", units=[1], n_shuffle=5, progress=False),
     lambda r: psth(r, "repeat_onset", 2, units=("attn.1", [1]), n_controls=5, progress=False)),
    (lambda r: psth(spikes(r, "attn.1", progress=False), "repeat_onset", window=2, n_shuffle=5),
     lambda r: psth(spikes(r, "attn.1", progress=False), "repeat_onset", window=2, n_controls=5)),
])
def test_old_names_warn_and_give_the_same_result(rec, old, new):
    assert_renamed(lambda: old(rec), lambda: new(rec))
