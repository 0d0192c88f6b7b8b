"""Raster without a browser: the window codes threshold exactly as spikes() does, clicks get
tuning curves, examples and contexts, the selection feeds lesion(), bad messages are answered."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from ipywidgets.widgets.widget import _remove_buffers

import llmscope
from llmscope.analysis.examples import top_examples
from llmscope.analysis.spikes import spikes
from llmscope.analysis.tuning import tuning
from llmscope.errors import AnalysisError, SiteError, WidgetError
from llmscope.widgets import wire
from llmscope.widgets.raster import MIDDLE, RUNGS, Raster
from tests.unit.widget_pages import ask, opened

HOSTILE = "<img src=x onerror=alert(1)>"





@pytest.fixture(scope="module")
def rec(organism):
    stim = llmscope.stimuli.grammar(organism, n_docs=12, seed=0)
    return llmscope.record(organism, stim, ["mlp.0", "attn.1"], dtype="float32", progress=False)


@pytest.fixture(scope="module")
def raster(rec) -> Raster:
    return Raster(rec, "mlp.0", sort_by="pos_tag")


def test_rows_are_in_spikes_order_and_the_middle_rung_is_spikes_threshold(raster: Raster, rec) -> None:
    sp = spikes(rec, "mlp.0", sort_by="pos_tag", progress=False)
    assert raster.selected.names == ["site", "unit"] and len(raster.selected) == 0
    assert raster.rung == MIDDLE and raster.threshold == 3.0 and len(raster.ladder) == RUNGS
    assert np.all(np.diff(raster.ladder) > 0)
    np.testing.assert_array_equal(raster._units, sp.df.index.get_level_values("unit"))
    assert raster.units.tolist() == sp.df.index.tolist() and raster.units.names == ["site", "unit"]
    codes = raster.codes()
    assert codes.dtype == np.uint8 and codes.shape == sp.matrix.shape
    np.testing.assert_array_equal(codes > MIDDLE, sp.matrix.toarray().astype(bool))
    assert 0 < (codes > MIDDLE).mean() < 0.1


@pytest.mark.parametrize("method, threshold, rung", [("zscore", 3.0, 20), ("zscore", 3.0, 230),
                                                     ("quantile", 0.95, 60), ("quantile", 0.95, 200)])
def test_each_rung_thresholds_as_spikes_at_that_rungs_threshold(rec, method: str, threshold: float, rung: int) -> None:
    r = Raster(rec, "attn.1", method=method, threshold=threshold)
    r.rung = rung
    expected = spikes(rec, "attn.1", threshold=r.threshold, method=method, progress=False).reorder(r._units)
    np.testing.assert_array_equal(r.codes() > rung, expected.matrix.toarray().astype(bool))
    np.testing.assert_array_equal(r.spikes.matrix.toarray(), expected.matrix.toarray())
    assert r.threshold != threshold


def test_a_window_is_uint8_codes_of_its_ranges_with_units_and_texts(raster: Raster, rec) -> None:
    reply, buffers = ask(raster, "_window", u0=3, u1=13, t0=100, t1=140)
    data = opened(reply, buffers)
    assert sorted(reply["buffer_paths"]) == [["codes", "buffer"], ["counts", "buffer"], ["units", "buffer"]]
    assert data["codes"].dtype == np.uint8 and data["units"].dtype == np.int32 and data["counts"].dtype == np.int32
    np.testing.assert_array_equal(data["codes"], raster.codes()[3:13, 100:140])
    for rung in (0, MIDDLE, RUNGS - 1):  # the page counts the spikes in view from the counts alone
        assert data["counts"][rung + 1:].sum() == (data["codes"] > rung).sum()
    assert data["counts"].shape == (256,) and data["counts"].sum() == 10 * 40
    np.testing.assert_array_equal(data["units"], raster._units[3:13])
    assert raster._meta["site"] == "mlp.0"  # the page labels rows "mlp.0:<unit>"
    assert data["preferred"] == raster._spikes.df["preferred"].astype(str).tolist()[3:13]
    analysed = rec.tokens[~rec.tokens["is_bos"].astype(bool)] if "is_bos" in rec.tokens else rec.tokens
    assert data["tokens"] == analysed["text"].astype(str).tolist()[100:140]
    assert raster.view == (3, 13, 100, 140)


def test_a_window_costs_a_byte_a_cell_and_little_else(raster: Raster) -> None:
    reply, buffers = ask(raster, "_window", u0=0, u1=512, t0=0, t1=1000)
    codes = buffers[[p[0] for p in reply["buffer_paths"]].index("codes")]
    assert codes.nbytes == 512 * 1000  # uncompressed: nothing to inflate in the page
    assert wire.reply_bytes(reply, buffers) < 512 * 1000 + 512 * 4 + 20_000  # + int32 units, texts


def test_the_first_window_rides_in_the_widgets_state_as_binary_buffers(rec) -> None:
    r = Raster(rec, "mlp.0", sort_by="pos_tag")
    state, paths, buffers = _remove_buffers(r.get_state())  # what the comm's opening message carries
    shipped = {name: opened({"ok": True, "data": state[name], "buffer_paths": [p[1:] for p in paths if p[0] == name]},
                            [b for p, b in zip(paths, buffers) if p[0] == name]) for name in ("_meta", "_first_window")}
    first, asked = shipped["_first_window"], opened(*ask(r, "_window", u0=0, u1=512, t0=0, t1=1000))
    assert r.view == (0, 512, 0, 1000) and first.keys() == asked.keys()  # the first view's `_window` answer
    for key, value in first.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, asked[key])
        else:
            assert value == asked[key], key
    np.testing.assert_array_equal(first["codes"], r.codes()[:512, :1000])
    np.testing.assert_array_equal(shipped["_meta"]["ladder"], r.ladder.astype(np.float32))
    assert shipped["_meta"]["n_units"] == 512 and shipped["_meta"]["n_tokens"] == r.codes().shape[1]
    assert sum(b.nbytes for b in buffers) >= 512 * 1000 and len(json.dumps(state)) < 100_000  # codes not in JSON
    r.view = (0, 8, 0, 50)  # the page moved: it asks for windows now, and the kernel drops the first
    assert r._first_window == {} and [b.nbytes for b in _remove_buffers(r.get_state())[2]] == [RUNGS * 4]  # the ladder


@pytest.mark.parametrize("fields, message", [
    ({"u0": 0, "u1": 0, "t0": 0, "t1": 5}, "unit row range [0, 0)"),
    ({"u0": 0, "u1": 5, "t0": -1, "t1": 5}, "token range [-1, 5)"),
    ({"u0": 0, "u1": 513, "t0": 0, "t1": 5}, "inside 0..512"),
    ({"u0": 0, "u1": 5, "t0": 0}, "missing ['t1']"),
    ({"u0": 0, "u1": 5, "t0": 0, "t1": "9"}, "field 't1'"),
])
def test_a_bad_window_request_is_an_error_reply(raster: Raster, fields: dict, message: str) -> None:
    view = raster.view
    reply, buffers = ask(raster, "_window", seq=7, **fields)
    assert reply["ok"] is False and reply["seq"] == 7 and buffers == []
    assert message in reply["error"]["message"], reply["error"]
    assert raster.last_error.startswith(reply["error"]["type"]) and raster.view == view


def test_a_clicked_unit_gets_its_tuning_curve_and_top_examples(raster: Raster, rec) -> None:
    unit = int(raster._units[0])
    data = opened(*ask(raster, "_unit", unit=unit))
    curve = tuning(rec, "mlp.0", "pos_tag", progress=False).curve(unit)
    assert data["label"] == f"mlp.0:{unit}" and data["curve"]["categories"] == curve["category"].tolist()
    assert data["curve"]["mean"].dtype == np.float32
    np.testing.assert_allclose(data["curve"]["mean"], curve["mean"], rtol=1e-6)
    np.testing.assert_allclose(data["curve"]["sem"], curve["sem"], rtol=1e-6)
    ex = top_examples(rec, "mlp.0", unit, k=8, context=6).df
    assert data["examples"]["text"] == ex["text"].tolist() and data["examples"]["left"] == ex["left"].tolist()
    np.testing.assert_allclose(data["examples"]["activation"], ex["activation"], rtol=1e-6)
    reply, _ = ask(raster, "_unit", unit=10_000)
    assert reply["ok"] is False and reply["error"]["type"] == "WidgetError.Unknown"
    assert "unit 10000 of mlp.0 is not in this raster" in reply["error"]["message"]


def test_a_clicked_token_gets_its_context_and_labels(raster: Raster) -> None:
    data = opened(*ask(raster, "_token", column=5))
    row = int(raster._rows[5])
    assert data["text"] == str(raster._text[row]) and raster.token == 5
    assert data["labels"]["pos_tag"] == str(raster._recording.tokens["pos_tag"].iloc[row])
    assert data["left"].split(" ")[-1] == str(raster._text[row - 1])
    reply, _ = ask(raster, "_token", column=len(raster._rows))
    assert reply["ok"] is False and reply["error"]["type"] == "WidgetError.Range"
    assert "token range" in reply["error"]["message"]


def test_the_slider_s_rungs_come_from_python_once(raster: Raster) -> None:
    """The page builds its slider from `_meta` (0..rungs - 1), so the ladder's size is written once."""
    assert raster._meta["rungs"] == RUNGS == len(raster.ladder) and raster._meta["middle"] == MIDDLE


def test_selected_is_a_unit_table_ready_for_lesion(raster: Raster, organism) -> None:
    top = tuning(raster._recording, "mlp.0", "pos_tag", progress=False).top(3)
    raster.selected = top
    assert raster.selected.tolist() == top.index.tolist() and raster.selection == top.index.get_level_values(1).tolist()
    assert sorted(llmscope.sites.unit_index(organism, raster.selected).tolist()) == sorted(top.index.tolist())
    ids = torch.tensor([[1, 973, 4, 973, 4]])
    base = organism(ids)
    with llmscope.intervene(organism, llmscope.lesion(raster.selected)):
        lesioned = organism(ids)
    assert not torch.allclose(base, lesioned)
    assert torch.allclose(base, organism(ids))
    raster.selected = [1, 2]
    assert raster.selected.tolist() == [("mlp.0", 1), ("mlp.0", 2)]
    with pytest.raises(SiteError, match="not to this raster's site mlp.0"):
        raster.selected = pd.MultiIndex.from_tuples([("attn.1", 0)], names=["site", "unit"])
    with pytest.raises(SiteError, match=r"units \[9999\] of mlp.0 are not in this raster"):
        raster.selection = [9999]
    with pytest.raises(SiteError, match="selected takes unit indices"):
        raster.selected = "mlp.0"
    assert raster.selection == [1, 2]


def test_bad_arguments_are_refused_before_any_work(rec) -> None:
    with pytest.raises(AnalysisError, match="z-score threshold"):
        Raster(rec, "mlp.0", threshold=-1)
    with pytest.raises(AnalysisError, match="unknown spike method 'rank'"):
        Raster(rec, "mlp.0", method="rank")
    with pytest.raises(SiteError):
        Raster(rec, "mlp.9")
    r = Raster(rec, "attn.1")
    with pytest.raises(WidgetError.Range, match="rung 255 is not a slider position"):
        r.rung = 255
    with pytest.raises(WidgetError.Range, match=r"token range \[0, 0\) is not inside"):
        Raster(rec, "attn.1").view = (0, 4, 0, 0)


def test_hostile_token_text_is_kept_as_data_and_escaped_in_the_figure(organism) -> None:
    stim = llmscope.stimuli.grammar(organism, n_docs=3, seed=1)
    rec = llmscope.record(organism, stim, ["attn.1"], dtype="float32", progress=False)
    rec.tokens.loc[rec.tokens.index[3], "text"] = HOSTILE
    r = Raster(rec, "attn.1")
    col = int(np.flatnonzero(r._rows == 3)[0])
    data = opened(*ask(r, "_window", u0=0, u1=4, t0=0, t1=col + 1))
    assert data["tokens"][col] == HOSTILE
    assert opened(*ask(r, "_token", column=col))["text"] == HOSTILE
    fig = r.figure()
    assert HOSTILE not in fig.to_json() and "&lt;img src=x onerror=alert(1)&gt;" in fig.data[0].customdata[0]


def test_the_figure_is_the_view_at_the_current_threshold(raster: Raster) -> None:
    raster.view = (0, 8, 0, 50)
    raster.rung = 100
    raster.selection = [int(raster._units[2])]
    fig = raster.figure()
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), (raster.codes()[:8, :50] > 100).astype(np.uint8))
    assert fig.layout.yaxis.type == "category" and list(fig.data[0].y) == [f"mlp.0:{u}" for u in raster._units[:8]]
    assert list(fig.data[1].y) == [f"mlp.0:{raster._units[2]}"]
    assert f"{raster.ladder[100]:.3g}" in fig.layout.title.text and "sorted by pos_tag" in fig.layout.title.text
    raster.rung = MIDDLE
