"""Field potentials: the signal against numpy, Welch against scipy, event averages against pandas,
Granger's direction on a synthetic pair, and what each finds on grammar-2l against its wiring."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.signal import welch

import llmscope
from llmscope.analysis import lfp, responses
from llmscope.stimuli import trials
from llmscope.analysis.lfp import (VERDICTS, EventAverageResult, FieldPotential, GrangerResult, SpectrumResult,
                                   event_average, field_potential, granger, lfp_spectrum, wired)
from llmscope.errors import AnalysisError, ColumnError, SiteError
from llmscope.sites import Site, site
from tests.unit.renames import assert_renamed

SITES = ["mlp.0", "attn.0", "attn.1", "mlp.1", "resid.1"]
LAYERS = ["mlp.0", "attn.0", "attn.1", "mlp.1"]


@pytest.fixture(scope="module")
def rec(organism):
    stim = llmscope.stimuli.grammar(organism, n_docs=24, seed=1)
    return llmscope.record(organism, stim, SITES, dtype="float32", progress=False)


@pytest.fixture(scope="module")
def fp(rec):
    return field_potential(rec, progress=False)


@pytest.fixture(scope="module")
def layers_granger(fp):
    return granger(fp, LAYERS, maxlag=2, progress=False)


def _synthetic(columns: dict[str, np.ndarray], n_seqs: int) -> FieldPotential:
    """A FieldPotential of mlp.L sites from ``[n_seqs * length]`` signals, sequences of equal length."""
    n = len(next(iter(columns.values())))
    length = n // n_seqs
    tokens = pd.DataFrame({"seq": np.repeat(np.arange(n_seqs), length),
                           "pos": np.tile(np.arange(1, length + 1), n_seqs), "text": "w"})
    info = [Site(name, f"blocks.{name[-1]}.mlp.hook_post", "mlp", int(name[-1]), (8,), "neuron") for name in columns]
    meta = {"sites": list(columns), "definition": dict.fromkeys(columns, "mean"), "include_bos": False}
    return lfp._field_potential(np.column_stack(list(columns.values())), tokens, info, meta)


# ---------------------------------------------------------------- the signal


def test_field_potential_is_the_documented_population_number(rec, fp, monkeypatch):
    keep = trials.rows(rec.tokens)
    assert fp.sites == SITES and fp.meta["definition"] == {**dict.fromkeys(LAYERS, "mean"), "resid.1": "rms"}
    for j, name in enumerate(SITES):
        x = responses.scalar(rec, name)[keep].astype(np.float64)
        expected = np.sqrt(np.square(x).mean(1)) if name.startswith("resid") else x.mean(1)
        np.testing.assert_allclose(fp.signal[:, j], expected, rtol=1e-6)
    assert list(fp.df.columns) == ["seq", "pos", "site", "value"] and len(fp.df) == keep.sum() * len(SITES)
    assert fp.data["signal"].dims == ("token", "site") and fp.data.site.values.tolist() == SITES
    assert fp.data.token.values.tolist() == np.flatnonzero(keep).tolist()  # rows of the recording
    assert np.array_equal(fp.data.pos.values, rec.tokens.pos[keep]) and fp.meta["units"] == dict.fromkeys(SITES)
    one = fp.df[fp.df.site == "attn.1"]
    assert np.array_equal(one.value, fp.signal[:, 2]) and np.array_equal(one.pos, rec.tokens.pos[keep])
    with_bos = field_potential(rec, "mlp.0", include_bos=True, progress=False)
    assert not fp.tokens.is_bos.any() and with_bos.tokens.is_bos.any() and len(with_bos.tokens) == len(rec)
    # streamed in many small blocks, the signal is the same
    monkeypatch.setattr(lfp.responses, "blocks", functools.partial(responses.blocks, block_bytes=400_000))
    np.testing.assert_array_equal(field_potential(rec, progress=False).signal, fp.signal)


def test_the_field_potential_of_some_units_is_their_mean(rec):
    part = field_potential(rec, [("mlp.0", [7, 3]), ("resid.1", [0, 5, 9])], progress=False)
    x = responses.scalar(rec, "mlp.0", [3, 7])[trials.rows(rec.tokens)].astype(np.float64)
    r = responses.scalar(rec, "resid.1", [0, 5, 9])[trials.rows(rec.tokens)].astype(np.float64)
    np.testing.assert_allclose(part.signal, np.column_stack([x.mean(1), np.sqrt(np.square(r).mean(1))]), rtol=1e-6)
    assert part.meta["units"] == {"mlp.0": [3, 7], "resid.1": [0, 5, 9]}
    with pytest.raises(SiteError, match=r"one signal per site.*field_potential\(recording, units\)"):
        field_potential(rec, progress=False).subset(("mlp.0", [1]))


def test_subset_and_figures(fp):
    part = fp.subset(["attn.1", "blocks.0.mlp.hook_post"])
    assert part.sites == ["attn.1", "mlp.0"] and np.array_equal(part.signal, fp.signal[:, [2, 0]])
    assert part.meta["definition"] == {"attn.1": "mean", "mlp.0": "mean"} and list(part.meta["units"]) == part.sites
    fig = fp.plot(seq=3)
    rows = (fp.tokens.seq == 3).to_numpy()
    assert len(fig.data) == len(SITES) and [t.name for t in fig.data] == SITES
    for j, trace in enumerate(fig.data):  # each panel draws its site's signal over the sequence's positions
        np.testing.assert_array_equal(trace.x, fp.tokens.pos[rows])
        np.testing.assert_array_equal(trace.y, fp.signal[rows, j])
    with pytest.raises(SiteError, match=r"'mlp.7'.*\['mlp.0'"):
        fp.subset("mlp.7")


# ---------------------------------------------------------------- spectrum


def test_spectrum_is_welch_per_sequence_averaged(fp):
    spec = lfp_spectrum(fp, "mlp.1", nperseg=16, n_controls=5, progress=False)
    assert isinstance(spec, SpectrumResult) and spec.kind == "lfp_spectrum"
    per_seq = [welch(g.to_numpy(), fs=1.0, nperseg=16)[1] for _, g in
               pd.Series(fp.signal[:, 3]).groupby(fp.tokens.seq.to_numpy())]
    np.testing.assert_allclose(spec.df.power, np.mean(per_seq, axis=0)[1:], rtol=1e-10)
    np.testing.assert_allclose(spec.df.frequency * spec.df.period, 1.0)
    assert spec.df.frequency.tolist() == [k / 16 for k in range(1, 9)] and spec.meta["n_seqs"] == fp.meta["n_seqs"]


def test_spectrum_differs_from_shuffled_tokens_on_the_organism(fp):
    spec = lfp_spectrum(fp, n_controls=100, progress=False)
    for name in SITES:  # every site's field potential has temporal structure a shuffle destroys
        assert spec.meta["distance_p"][name] < 0.02
        assert spec.meta["distance"][name] > 2 * spec.meta["distance_control"][name]
    # the induction head's field potential swings slowly (copied spans): excess power at the lowest frequency
    low = spec.df[spec.df.site == "attn.1"].iloc[0]
    assert low.log_ratio > 0.5 and low.p_fdr < 0.05 and low.power > low.power_control_high
    fig = spec.plot()
    assert len(fig.data) == 3 * len(SITES)  # per site: the control's band, its mean, the spectrum
    for i, name in enumerate(SITES):
        d = spec.df[spec.df.site == name]
        band, control, power = fig.data[3 * i: 3 * i + 3]
        np.testing.assert_array_equal(power.y, d.power)
        np.testing.assert_array_equal(power.x, d.frequency)
        np.testing.assert_array_equal(control.y, d.power_control)
        np.testing.assert_array_equal(band.y, np.r_[d.power_control_high, d.power_control_low[::-1]])
        assert power.name.startswith(f"{name} (d={spec.meta['distance'][name]:.2f}")


def test_spectrum_of_a_shuffled_signal_is_not_flagged(fp):
    rng = np.random.default_rng(3)
    seq = fp.tokens.seq.to_numpy()
    order = np.concatenate([rng.permutation(np.flatnonzero(seq == s)) for s in np.unique(seq)])
    white = lfp._field_potential(fp.signal[order], fp.tokens, fp.site_info, fp.meta)
    spec = lfp_spectrum(white, n_controls=100, seed=1, progress=False)
    assert sum(p < 0.05 for p in spec.meta["distance_p"].values()) <= 1
    assert (spec.df.p_fdr < 0.05).mean() < 0.1


# ---------------------------------------------------------------- event-related averages


def test_event_average_is_the_mean_around_events(fp):
    ea = event_average(fp, "sent_pos == 0", window=(2, 3), n_controls=10, progress=False)
    assert isinstance(ea, EventAverageResult) and ea.meta["window"] == [2, 3]
    value = pd.Series(fp.signal[:, 1], index=pd.MultiIndex.from_arrays([fp.tokens.seq, fp.tokens.pos]))
    events = fp.tokens[fp.tokens.sent_pos == 0]
    for offset in range(-2, 4):
        at = pd.MultiIndex.from_arrays([events.seq, events.pos + offset])
        found = value.reindex(at).dropna()
        row = ea.df[(ea.df.site == "attn.0") & (ea.df.offset == offset)].iloc[0]
        assert row.n_events == len(found) and row.value == pytest.approx(found.mean(), rel=1e-12)
    d = ea.df[ea.df.site == "attn.0"]
    assert ea.meta["change"]["attn.0"] == pytest.approx(d.value[d.offset >= 0].mean() - d.value[d.offset < 0].mean())


def test_event_average_rises_at_repeat_onsets_in_the_induction_head(fp):
    ea = event_average(fp, "repeat_onset", window=(5, 10), n_controls=100, progress=False)
    assert ea.meta["change"]["attn.1"] > 0.3 and ea.meta["change_p"]["attn.1"] < 0.02
    after = ea.df[(ea.df.site == "attn.1") & ea.df.offset.between(1, 5)]
    assert (after.value > after.value_control_high).all()
    fig = ea.plot()
    events = [t for t in fig.data if t.name == "events"]
    controls = [t for t in fig.data if t.name == "shuffled events"]
    assert len(events) == len(controls) == len(SITES)
    for name, line, control in zip(SITES, events, controls):  # a panel per site, in order
        d = ea.df[ea.df.site == name]
        np.testing.assert_array_equal(line.x, d.offset)
        np.testing.assert_array_equal(line.y, d.value)
        np.testing.assert_array_equal(control.y, d.value_control)
    assert fig.layout.annotations[SITES.index("attn.1")].text.startswith(f"attn.1: change {ea.meta['change']['attn.1']:.3g}")


def test_event_average_of_random_events_is_not_flagged(fp):
    rng = np.random.default_rng(0)
    tokens = fp.tokens.assign(random_event=rng.random(len(fp.tokens)) < 0.05)
    noise = lfp._field_potential(fp.signal, tokens, fp.site_info, fp.meta)
    ea = event_average(noise, "random_event", n_controls=100, progress=False)
    assert sum(p < 0.05 for p in ea.meta["change_p"].values()) <= 1


# ---------------------------------------------------------------- Granger


def test_wiring_follows_the_architecture(organism):
    names = ["resid.0", "attn.0", "mlp.0", "resid.1", "attn.1", "mlp.1", "resid.2"]
    # attention moves information between positions, only backwards: layer 0 (and resid.0/resid.1
    # before an attention layer) reach layer 1 and resid.2; nothing within one block; nothing back
    expected = {("resid.0", t) for t in names[1:]} | {(s, t) for s in ("attn.0", "mlp.0") for t in names[4:]} \
        | {("resid.1", t) for t in names[4:]}
    for s, t in itertools.permutations(names, 2):
        assert wired(site(organism, s), site(organism, t)) == ((s, t) in expected), (s, t)


def test_granger_finds_the_direction_of_a_synthetic_coupling():
    rng = np.random.default_rng(0)
    n_seqs, length = 12, 100
    a = rng.normal(size=n_seqs * length)
    b = 0.8 * np.r_[0.0, a[:-1]] + rng.normal(size=a.size)  # b(t) = 0.8 a(t-1) + noise, within sequences
    b[::length] = rng.normal(size=n_seqs)
    flat = np.zeros_like(a)  # a constant signal: statsmodels cannot test it, and says so as NaN
    fp = _synthetic({"mlp.0": a, "mlp.1": b, "mlp.2": flat}, n_seqs)
    g = granger(fp, maxlag=2, progress=False).df.set_index(["source", "target"])
    forward, backward = g.loc[("mlp.0", "mlp.1")], g.loc[("mlp.1", "mlp.0")]
    assert forward.significant and forward.F > 20 and forward.verdict == "true positive"
    assert not backward.significant and backward.verdict == "true negative"
    tested = g.loc[[("mlp.0", "mlp.1"), ("mlp.1", "mlp.0")]]
    assert not tested.significant_control.any() and 0.6 < tested.F_control.mean() < 1.5
    flat_pairs = g[[("mlp.2" in pair) for pair in g.index]]
    assert len(flat_pairs) == 4 and flat_pairs.F.isna().all() and not flat_pairs.significant.any()
    assert (flat_pairs.verdict == "untestable").all()


def test_granger_on_the_organism_against_its_wiring(layers_granger):
    g = layers_granger.df.set_index(["source", "target"])
    assert len(g) == 12 and set(g.verdict) <= set(VERDICTS)
    assert g.wired.sum() == 4 and g.loc[("mlp.0", "mlp.1"), "wired"] and not g.loc[("mlp.1", "mlp.0"), "wired"]
    expected = np.select([g.significant & g.wired, g.significant & ~g.wired, g.wired], list(VERDICTS[:3]), VERDICTS[3])
    assert g.p.notna().all() and (g.verdict == expected).all()
    # the control (sequences mismatched between sites) is null: F near 1, ~alpha of sequences significant
    assert not g.significant_control.any()
    assert 0.6 < g.F_control.mean() < 1.3 and g.frac_significant_control.mean() < 0.1
    # what Granger finds: layer 0 -> layer 1, as wired, and layer 1 -> layer 0, which the model does not have
    assert g.loc[("mlp.0", "mlp.1"), "verdict"] == "true positive"
    assert g.loc[("mlp.1", "mlp.0"), "verdict"] == "false positive"
    assert isinstance(layers_granger, GrangerResult) and g.p_fdr_control.between(0, 1).all()
    fig = layers_granger.plot()
    for trace, column in zip(fig.data, ("p_fdr", "p_fdr_control")):  # real beside control, target x source
        assert list(trace.x) == LAYERS and list(trace.y) == LAYERS
        expected = -np.log10(layers_granger.df.pivot(index="target", columns="source", values=column)
                             .reindex(index=LAYERS, columns=LAYERS).to_numpy(dtype=float))
        np.testing.assert_allclose(np.array(trace.z, dtype=float), expected)


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_before_any_work(rec, fp):
    with pytest.raises(SiteError, match=r"'mlp.9'.*mlp.0"):
        field_potential(rec, ["mlp.0", "mlp.9"], progress=False)
    with pytest.raises(SiteError, match="mlp.9"):
        lfp_spectrum(fp, "mlp.9", progress=False)
    with pytest.raises(AnalysisError, match=r"nperseg=512.*longest here has \d+"):
        lfp_spectrum(fp, nperseg=512, progress=False)
    with pytest.raises(AnalysisError, match="nperseg must be an integer >= 4"):
        lfp_spectrum(fp, nperseg=2, progress=False)
    with pytest.raises(AnalysisError, match=r"window of 100 \+ 1 \+ 100 tokens.*longest has \d+"):
        event_average(fp, "repeat_onset", window=100, progress=False)
    with pytest.raises(AnalysisError, match=r"window's before \(tokens before the event\) must be an integer >= 1"):
        event_average(fp, "repeat_onset", window=(0, 4), progress=False)
    with pytest.raises(AnalysisError, match="window must be an integer >= 1"):
        event_average(fp, "repeat_onset", window=2.5, progress=False)
    with pytest.raises(ColumnError, match="no_such_column"):
        event_average(fp, "no_such_column > 0", progress=False)
    with pytest.raises(AnalysisError, match="matches none"):
        event_average(fp, "pos < 0", progress=False)
    with pytest.raises(AnalysisError, match=r"maxlag=60 needs sequences of more than 181 tokens"):
        granger(fp, LAYERS, maxlag=60, progress=False)
    with pytest.raises(AnalysisError, match="at least two sites"):
        granger(fp, ["mlp.0"], progress=False)
    with pytest.raises(AnalysisError, match="alpha must be a number strictly between 0"):
        granger(fp, LAYERS, alpha=1.5, progress=False)
    with pytest.raises(AnalysisError, match="include_bos applies to a Recording"):
        granger(fp, LAYERS, include_bos=True, progress=False)
    with pytest.raises(AnalysisError, match="consecutive positions"):
        lfp_spectrum(rec.select("~is_repeat"), progress=False)
    with pytest.raises(AnalysisError, match="takes a FieldPotential .* or a Recording; got DataFrame"):
        event_average(fp.df, "repeat_onset")
    with pytest.raises(AnalysisError, match="reads a Recording"):
        field_potential(fp)


# ---------------------------------------------------------------- the old names, for one release


@pytest.mark.parametrize("old, new", [
    (lambda r, fp: field_potential(r, sites=["mlp.0", "attn.1"], progress=False),
     lambda r, fp: field_potential(r, ["mlp.0", "attn.1"], progress=False)),
    (lambda r, fp: fp.subset(sites="attn.1"), lambda r, fp: fp.subset("attn.1")),
    (lambda r, fp: lfp_spectrum(fp, sites="mlp.0", nperseg=16, n_shuffle=5, progress=False),
     lambda r, fp: lfp_spectrum(fp, "mlp.0", nperseg=16, n_controls=5, progress=False)),
    (lambda r, fp: event_average(fp, event="repeat_onset", before=2, after=3, sites="attn.1", n_shuffle=5),
     lambda r, fp: event_average(fp, "repeat_onset", (2, 3), units="attn.1", n_controls=5)),
    (lambda r, fp: event_average(fp, "repeat_onset", after=3, n_controls=5),
     lambda r, fp: event_average(fp, "repeat_onset", (5, 3), n_controls=5)),
    (lambda r, fp: granger(fp, sites=["mlp.0", "mlp.1"], progress=False),
     lambda r, fp: granger(fp, ["mlp.0", "mlp.1"], progress=False)),
])
def test_old_names_warn_and_give_the_same_result(rec, fp, old, new):
    assert_renamed(lambda: old(rec, fp), lambda: new(rec, fp))


def test_window_and_its_old_form_together_is_an_error(fp):
    with pytest.raises(AnalysisError, match=r"window= and before=; these are the old form"):
        event_average(fp, "repeat_onset", window=3, before=2)
