"""Sparse coding on grammar-2l: exact against a dense numpy computation, streamed block by block
like one block, the rotation control, the threshold's effect, and bad input."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import llmscope
from llmscope.analysis import responses
from llmscope.stimuli import trials
from llmscope.analysis.sparsity import REFERENCE, SparsityResult, _rotation, sparsity
from llmscope.errors import AnalysisError, SiteError
from tests.unit.renames import assert_renamed

sparsity_module = importlib.import_module("llmscope.analysis.sparsity")  # the module, not the function

THRESHOLDS = (0.0, 1.0, 3.0)


@pytest.fixture(scope="module")
def rec(organism):
    stim = llmscope.stimuli.grammar(organism, n_docs=8, seed=2)
    return llmscope.record(organism, stim, ["mlp.0", "mlp.1", "attn.1"], dtype="float32", progress=False)


def _dense(x: np.ndarray, thresholds: tuple[float, ...], rectify) -> dict[str, np.ndarray]:
    """The measures of ``x [tokens, units]`` straight from their definitions."""
    r = rectify(x.astype(np.float64))
    scale = np.sqrt(np.mean(r**2))
    out = {"level": [], "population": [], "lifetime": [], "silent": [], "tr": []}
    for t in thresholds:
        active = r > t * scale
        kept = np.where(active, r, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            tr = kept.mean(0) ** 2 / np.mean(kept**2, 0)
        out["level"].append(t * scale)
        out["population"].append(active.mean(1).mean())
        out["lifetime"].append(np.nanmedian(tr) if np.isfinite(tr).any() else np.nan)
        out["silent"].append(1 - active.any(0).mean())
        out["tr"].append(tr)
    return out


def test_sparsity_matches_the_definitions(rec):
    sp = sparsity(rec, ["mlp.0", "attn.1"], THRESHOLDS, progress=False)
    assert isinstance(sp, SparsityResult)
    keep = trials.rows(rec.tokens)
    for site in ("mlp.0", "attn.1"):
        x = responses.scalar(rec, site)[keep]
        want = _dense(x, THRESHOLDS, lambda a: np.maximum(a, 0))
        got = sp.df.loc[site]
        for key in ("level", "population", "lifetime", "silent"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-9, err_msg=f"{site} {key}")
        units = sp.data.sel(unit=sp.data.site == site)
        for t, level, tr in zip(THRESHOLDS, want["level"], want["tr"]):
            np.testing.assert_allclose(units.lifetime.sel(threshold=t), tr, rtol=1e-5)
            np.testing.assert_allclose(sp.data.population.sel(sites=site, threshold=t), (x > level).mean(1), rtol=1e-6)
            active = x.astype(np.float64) > level
            np.testing.assert_allclose(units.active.sel(threshold=t), active.mean(0), rtol=1e-6)
    x = responses.scalar(rec, "mlp.0")[keep]  # the first site draws the first rotation of the seed's generator
    rotated = _dense(x @ _rotation(512, np.random.default_rng(0)), THRESHOLDS, lambda a: np.maximum(a, 0))
    np.testing.assert_allclose(sp.df.loc["mlp.0", "population_control"], rotated["population"], rtol=1e-4)
    np.testing.assert_allclose(sp.df.loc["mlp.0", "lifetime_control"], rotated["lifetime"], rtol=1e-4)
    assert sp.meta["reference"] == REFERENCE == 0.02 and sp.meta["negative"] == "clip"
    assert sp.data.lifetime.dims == ("unit", "threshold") and sp.data.sizes["unit"] == 512 + 4
    assert sp.data.unit.values[512] == "attn.1:0" and sp.data.index.values[512] == 0
    assert sp.data.sizes["token"] == keep.sum() and not (sp.data.text == "<bos>").any()
    # the table's columns are the median and mean over .data's units and tokens
    np.testing.assert_allclose(sp.data.lifetime.sel(unit=sp.data.site == "mlp.0").median("unit"),
                               sp.df.loc["mlp.0", "lifetime"])
    np.testing.assert_allclose(sp.data.population.sel(sites="attn.1").mean("token"), sp.df.loc["attn.1", "population"])


def test_sparsity_of_some_units_is_that_population(rec):
    units = [("mlp.0", list(range(0, 512, 8))), ("mlp.1", [3, 5, 7])]
    sp = sparsity(rec, units, THRESHOLDS, progress=False)
    keep = trials.rows(rec.tokens)
    for site, idx in units:
        want = _dense(responses.scalar(rec, site, idx)[keep], THRESHOLDS, lambda a: np.maximum(a, 0))
        for key in ("level", "population", "lifetime", "silent"):
            np.testing.assert_allclose(sp.df.loc[site, key], want[key], rtol=1e-5, atol=1e-9, err_msg=f"{site} {key}")
    assert sp.meta["units"] == dict(units) and sp.data.sizes["unit"] == 64 + 3
    with pytest.raises(AnalysisError, match=r"\{'mlp.1': 1\} \(units per site\) have fewer than 2"):
        sparsity(rec, ("mlp.1", [3]), progress=False)


def test_sparsity_streams_blocks_like_one_block(rec, monkeypatch):
    whole = sparsity(rec, "mlp.1", THRESHOLDS, progress=False)
    original = responses.blocks
    monkeypatch.setattr(sparsity_module.responses, "blocks",
                        lambda r, s, units=None: original(r, s, units, block_bytes=4 * 512 * 37))  # 37 rows a block
    pieces = sparsity(rec, "mlp.1", THRESHOLDS, progress=False)
    np.testing.assert_allclose(pieces.df.to_numpy(), whole.df.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(pieces.data.lifetime, whole.data.lifetime, rtol=1e-6)
    np.testing.assert_allclose(pieces.data.population, whole.data.population, rtol=1e-6)


def test_threshold_effect_and_basis_aligned_sparsity(rec):
    sp = sparsity(rec, ["mlp.0", "mlp.1"], (0.0, 0.5, 1.0, 2.0, 3.0), progress=False)
    for site in ("mlp.0", "mlp.1"):
        df = sp.df.loc[site]
        assert (np.diff(df.level) > 0).all() and (np.diff(df.population) < 0).all()  # higher bar, fewer active
        assert (np.diff(df.silent) >= 0).all()
        # GELU neurons are sparser over their lifetime than random directions of the same population
        assert df.lifetime.loc[0.0] < 0.6 * df.lifetime_control.loc[0.0]
        assert 0.45 < df.population_control.loc[0.0] < 0.55  # a rotated unit is near-Gaussian: positive half the time
    fig = sp.plot()
    assert any(shape.y0 == REFERENCE for shape in fig.layout.shapes)  # seed 003's ~2% drawn beside the curves


def test_abs_counts_negative_values_as_activity(rec):
    clip = sparsity(rec, "mlp.0", (0.0, 1.0), control=None, progress=False)
    mag = sparsity(rec, "mlp.0", (0.0, 1.0), negative="abs", control=None, progress=False)
    x = responses.scalar(rec, "mlp.0")[trials.rows(rec.tokens)]
    assert mag.df.population.loc[("mlp.0", 0.0)] == pytest.approx((x != 0).mean())
    assert clip.df.population.loc[("mlp.0", 0.0)] == pytest.approx((x > 0).mean())
    assert "population_control" not in clip.df.columns and clip.meta["control"] is None


def test_rotation_is_orthogonal():
    q = _rotation(64, np.random.default_rng(1))
    np.testing.assert_allclose(q @ q.T, np.eye(64), atol=1e-5)
    assert not np.allclose(q, _rotation(64, np.random.default_rng(2)))


def test_sparsity_bad_input(rec):
    for bad in ([], (1.0, 1.0), (-1.0,), (np.nan,), "1", (True,)):
        with pytest.raises(AnalysisError, match="thresholds"):
            sparsity(rec, "mlp.0", bad, progress=False)
    with pytest.raises(AnalysisError, match="'clip', 'abs'"):
        sparsity(rec, "mlp.0", negative="relu", progress=False)
    with pytest.raises(AnalysisError, match="control"):
        sparsity(rec, "mlp.0", control="gaussian", progress=False)
    with pytest.raises(SiteError, match="attn.0"):
        sparsity(rec, "attn.0", progress=False)
    with pytest.raises(AnalysisError, match="at least 2 analysed tokens"):
        sparsity(rec.select("seq == 0 and pos <= 1"), "mlp.0", progress=False)
    with pytest.raises(AnalysisError, match="progress"):
        sparsity(rec, "mlp.0", progress=1)


def test_plot_draws_each_legend_entry_in_one_colour_in_both_panels(rec):
    sp = sparsity(rec, ["mlp.0", "mlp.1", "attn.1"], (0.0, 1.0), progress=False)
    fig = sp.plot()
    panels = {"x": "population", "x2": "lifetime"}
    styles: dict[str, set] = {}
    for trace in fig.data:
        assert trace.line.color is not None  # left to plotly, each trace takes the next colour of its cycle
        styles.setdefault(trace.name, set()).add((trace.line.color, trace.line.dash))
        site, _, control = trace.name.partition(" ")
        column = panels[trace.xaxis] + ("_control" if control == "rotated" else "")
        np.testing.assert_array_equal(trace.y, sp.df.loc[site, column])  # the curve is the one it is named for
    names = [f"{s}{suffix}" for s in ("mlp.0", "mlp.1", "attn.1") for suffix in ("", " rotated")]
    assert sorted(styles) == sorted(names)
    assert all(len(s) == 1 for s in styles.values())  # one colour and dash per name, in both panels
    assert len(set.union(*styles.values())) == len(names)  # and no two names look alike
    for name in names:
        traces = [t for t in fig.data if t.name == name]
        assert sorted(t.xaxis for t in traces) == ["x", "x2"] and all(t.legendgroup == name for t in traces)
        assert sum(t.showlegend is not False for t in traces) == 1  # one legend entry toggles both panels


def test_the_old_name_warns_and_gives_the_same_result(rec):
    assert_renamed(lambda: sparsity(rec, sites=["mlp.0"], thresholds=(0.0, 1.0), progress=False),
                   lambda: sparsity(rec, ["mlp.0"], (0.0, 1.0), progress=False))
