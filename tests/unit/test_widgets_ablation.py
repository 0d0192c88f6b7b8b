"""AblationPanel without a browser: commands called directly, the payloads checked against the
interventions run by hand, the model pristine after every move, error and close."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import llmscope
from llmscope.behaviour import evaluate, metric
from llmscope.errors import AnalysisError, InterventionError, PromptError, SiteError
from llmscope.interventions import gain, intervene, lesion
from llmscope.widgets.ablation import GAIN_RANGE, GAIN_STEP, AblationPanel
from llmscope.widgets.attention import AttentionMap
from llmscope.widgets.raster import Raster
from tests.unit.widget_pages import opened

PROMPT = "the dog runs . the dog"
HOSTILE = "<img src=x onerror=alert(1)>"
UNITS = [("attn.1", 0), ("attn.0", 2)]  # the organism's induction and previous-token heads


def move(panel: AblationPanel, factors: list, mode: str = "zero", seq: int = 1) -> tuple[dict, list]:
    return panel._move({"seq": seq, "factors": factors, "mode": mode}, [])


def hooks_left(model) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_dict.values())


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, return_type="logits")


@pytest.fixture(scope="module")
def stim(organism):
    return llmscope.stimuli.from_texts(organism, PROMPT, tag=False)


@pytest.fixture(scope="module")
def pristine(organism, stim) -> torch.Tensor:
    return logits(organism, stim.ids)


@pytest.fixture
def panel(organism) -> AblationPanel:
    return AblationPanel(organism, PROMPT, units=UNITS)


def assert_pristine(model, stim, pristine) -> None:
    assert hooks_left(model) == 0
    assert torch.equal(logits(model, stim.ids), pristine)


def test_a_slider_at_zero_lesions_its_head_and_the_page_gets_both_distributions(panel, organism, stim,
                                                                                pristine) -> None:
    assert panel.gains == {("attn.1", 0): 1.0, ("attn.0", 2): 1.0} and panel.mode == "zero"
    data = opened(*move(panel, [0.0, 1.0]))
    assert panel.gains == {("attn.1", 0): 0.0, ("attn.0", 2): 1.0}
    with intervene(organism, lesion("attn.1", [0])):
        lesioned = logits(organism, stim.ids)
    probs, base = (torch.softmax(x[0, -1].float(), -1) for x in (lesioned, pristine))
    ids = torch.as_tensor(data["ids"].astype(np.int64))
    assert data["ids"].dtype == np.int32 and len(ids) >= 10 and len(set(ids.tolist())) == len(ids)
    np.testing.assert_allclose(data["now"], probs[ids].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(data["base"], base[ids].numpy(), rtol=1e-5, atol=1e-7)
    assert set(base.topk(10).indices.tolist()) <= set(ids.tolist())  # the baseline's top 10 ...
    assert set(probs.topk(10).indices.tolist()) <= set(ids.tolist())  # ... beside the intervened top 10
    assert data["texts"] == [organism.tokenizer.decode([i]) for i in ids.tolist()]
    expected = evaluate(organism, stim, "loss").df["loss"]
    assert data["metric"] == {"name": "loss", "base": pytest.approx(expected.mean()), "now": pytest.approx(panel.value)}
    with intervene(organism, lesion("attn.1", [0])):
        assert panel.value == pytest.approx(evaluate(organism, stim, "loss").df["loss"].mean())
    assert panel.value > panel.baseline + 0.5  # the induction head matters on a repeat
    assert data["labels"] == ["attn.1:0", "attn.0:2"] and data["factors"] == [0.0, 1.0]
    assert data["context"] == stim.tokens["text"].tolist() and data["n_bos"] == 1
    assert_pristine(organism, stim, pristine)


def test_stimulation_and_mean_ablation_match_the_interventions(panel, organism, stim, pristine) -> None:
    data = opened(*move(panel, [1.0, 2.0]))
    with intervene(organism, gain("attn.0", [2], factor=2.0)):
        doubled = torch.softmax(logits(organism, stim.ids)[0, -1].float(), -1)
    np.testing.assert_allclose(data["now"], doubled[torch.as_tensor(data["ids"].astype(np.int64))].numpy(),
                               rtol=1e-5, atol=1e-7)
    data = opened(*move(panel, [0.0, 1.0], mode="mean"))
    assert panel.mode == "mean"
    with intervene(organism, lesion("attn.1", [0], mode="mean", reference=stim)):
        mean_lesioned = torch.softmax(logits(organism, stim.ids)[0, -1].float(), -1)
    np.testing.assert_allclose(data["now"], mean_lesioned[torch.as_tensor(data["ids"].astype(np.int64))].numpy(),
                               rtol=1e-4, atol=1e-6)
    half = opened(*move(panel, [0.5, 1.0], mode="mean"))
    assert not np.allclose(half["now"][:3], data["now"][:3])  # between the mean and intact
    assert_pristine(organism, stim, pristine)


def test_all_sliders_back_at_one_give_the_baseline_exactly(panel, organism, stim, pristine) -> None:
    move(panel, [0.0, 0.0])
    data = opened(*move(panel, [1.0, 1.0]))
    np.testing.assert_array_equal(data["now"], data["base"])
    assert panel.value == panel.baseline
    move(panel, [0.3, 1.7])
    version = panel.version
    panel.reset()
    assert panel.gains == {("attn.1", 0): 1.0, ("attn.0", 2): 1.0} and panel.value == panel.baseline
    assert panel.version == version + 1  # the page asks _view again
    view = opened(*panel._view({"seq": 9}, []))
    assert view["factors"] == [1.0, 1.0]
    panel.close()
    assert_pristine(organism, stim, pristine)


def test_mode_set_from_python_reruns_and_the_page_follows(panel) -> None:
    move(panel, [0.0, 1.0])
    zero, version = panel.value, panel.version
    panel.mode = "mean"
    assert panel.version == version + 1 and panel.value != zero
    with pytest.raises(InterventionError, match="'resample'.*'zero', 'mean'"):
        panel.mode = "resample"
    assert panel.mode == "mean"


def test_units_straight_from_analysis_results(organism, stim, pristine) -> None:
    grammar = llmscope.stimuli.grammar(organism, n_docs=3, seed=0)
    rec = llmscope.record(organism, grammar, ["mlp.0"], dtype="float32", progress=False)
    top = llmscope.tuning(rec, "mlp.0", "pos_tag", progress=False).top(8)
    panel = AblationPanel(organism, grammar.select_seqs([0]), units=top)
    assert list(panel.gains) == list(top.index)  # one slider per row, keyed (site, unit)
    heads = llmscope.localize_heads(organism, grammar, progress=False).top(2, by="induction")
    panel = AblationPanel(organism, PROMPT, units=heads)
    assert list(panel.gains)[0] == ("attn.1", 0) and len(panel.gains) == 2
    data = opened(*move(panel, [0.0, 1.0]))
    assert data["labels"][0] == "attn.1:0" and data["metric"]["now"] > data["metric"]["base"]
    assert_pristine(organism, stim, pristine)


def test_named_groups_and_paired_stimuli_use_the_logit_difference(organism) -> None:
    pairs = llmscope.stimuli.agreement(organism, n=8)
    panel = AblationPanel(organism, pairs, units={"heads": [("attn.1", [0]), ("attn.0", [2])], "mlp": ("mlp.0", range(64))})
    assert panel.metric_name == "logit_diff" and list(panel.gains) == ["heads", "mlp"]
    assert panel.baseline == pytest.approx(metric(organism, pairs, "logit_diff").df["mean"].item())
    move(panel, [0.0, 1.0])
    with intervene(organism, lesion("attn.1", [0]), lesion("attn.0", [2])):
        assert panel.value == pytest.approx(metric(organism, pairs, "logit_diff").df["mean"].item())
    assert AblationPanel(organism, pairs, units=UNITS, metric="loss").metric_name == "loss"


def test_malformed_messages_get_an_error_reply_and_change_nothing(panel, organism, stim, pristine) -> None:
    move(panel, [0.5, 1.0])
    before = (dict(panel.gains), panel.mode, panel.value)
    bad = [
        ({"seq": 2, "factors": [0.0]}, "WidgetError", "missing \\['mode'\\]"),
        ({"seq": 2, "factors": [0.0, 1.0], "mode": "zero", "x": 1}, "WidgetError.Unknown", "unexpected \\['x'\\]"),
        ({"seq": 2, "factors": "0", "mode": "zero"}, "WidgetError.Type", "'factors' .* must be list"),
        ({"seq": 2, "factors": [0.0], "mode": "zero"}, "WidgetError", "a list of 2 numbers, got 1"),
        ({"seq": 2, "factors": [float("nan"), 1.0], "mode": "zero"}, "WidgetError.Range",
         "gain of attn.1:0 must be a finite number in \\[0.0, 2.0\\], got nan"),
        ({"seq": 2, "factors": [None, 1.0], "mode": "zero"}, "WidgetError.Type", "finite number .*, got None"),
        ({"seq": 2, "factors": [2.5, 1.0], "mode": "zero"}, "WidgetError.Range", "attn.1:0 .* in \\[0.0, 2.0\\], got 2.5"),
        ({"seq": 2, "factors": [0.0, 1.0], "mode": "resample"}, "WidgetError.Unknown", "unknown ablation mode 'resample'"),
        ("not a dict", "WidgetError.Type", "JSON object"),
    ]
    for msg, kind, message in bad:
        reply, buffers = panel._move(msg, [])
        assert reply["ok"] is False and buffers == [], msg
        assert reply["error"]["type"] == kind, (msg, reply["error"])
        assert reply["seq"] == (2 if isinstance(msg, dict) else None)
        assert re.search(message, reply["error"]["message"]), reply["error"]["message"]
        assert panel.last_error.endswith(reply["error"]["message"])
        assert (dict(panel.gains), panel.mode, panel.value) == before
        assert_pristine(organism, stim, pristine)
    move(panel, [0.5, 1.0])
    assert panel.last_error == ""


def test_the_sliders_range_comes_from_python_once(panel) -> None:
    """The page builds its sliders from `_meta`; the kernel checks a move against the same range."""
    assert panel._meta == {"gain": {"min": GAIN_RANGE[0], "max": GAIN_RANGE[1], "step": GAIN_STEP}}
    top = GAIN_RANGE[1]
    assert opened(*move(panel, [top, 1.0]))["factors"] == [top, 1.0]
    assert panel._move({"seq": 3, "factors": [top + GAIN_STEP, 1.0], "mode": "zero"}, [])[0]["ok"] is False
    move(panel, [1.0, 1.0])


def test_bad_arguments_are_refused_before_any_work(organism) -> None:
    with pytest.raises(AnalysisError, match="TransformerBridge.*got str"):
        AblationPanel("grammar-2l", PROMPT, units=UNITS)
    with pytest.raises(AnalysisError, match="prompt \\(str\\) or Stimuli; got int"):
        AblationPanel(organism, 3, units=UNITS)
    with pytest.raises(PromptError, match="empty prompt"):
        AblationPanel(organism, "  ", units=UNITS)
    with pytest.raises(SiteError, match="mlp.9"):
        AblationPanel(organism, PROMPT, units=[("mlp.9", 0)])
    with pytest.raises(SiteError):
        AblationPanel(organism, PROMPT, units=[("attn.1", 7)])
    with pytest.raises(AnalysisError, match="names no group"):
        AblationPanel(organism, PROMPT, units={})
    with pytest.raises(InterventionError, match="'half'"):
        AblationPanel(organism, PROMPT, units=UNITS, mode="half")
    with pytest.raises(AnalysisError, match="unknown metric 'acc'"):
        AblationPanel(organism, PROMPT, units=UNITS, metric="acc")
    with pytest.raises(llmscope.errors.ColumnError, match="good_id"):
        AblationPanel(organism, PROMPT, units=UNITS, metric="logit_diff")
    with pytest.raises(AnalysisError, match="1..50; got 0"):
        AblationPanel(organism, PROMPT, units=UNITS, k=0)
    with pytest.raises(AnalysisError, match="seq=3 is out of range"):
        AblationPanel(organism, PROMPT, units=UNITS, seq=3)


def test_hostile_text_stays_text(organism) -> None:
    stim = llmscope.Stimuli.from_ids(organism, [[1, 973, 4, 973]], name="hostile", n_bos=1)
    stim.tokens["text"] = ["<bos>", HOSTILE, "the", "dog"]
    panel = AblationPanel(organism, stim, units={HOSTILE: ("attn.1", [0])})
    data = opened(*panel._view({"seq": 1}, []))
    assert data["context"][1] == HOSTILE and data["labels"] == [HOSTILE]  # the page sets textContent
    move(panel, [0.0])
    fig = panel.figure()
    assert HOSTILE not in fig.layout.title.text and "&lt;img" in fig.layout.title.text


def test_figure_is_the_current_view(panel) -> None:
    move(panel, [0.0, 1.0])
    fig = panel.figure()
    assert [t.name for t in fig.data] == ["baseline", "intervened"]
    assert fig.layout.xaxis.type == "category" and len(fig.data[0].x) >= 10
    assert "attn.1:0 x0" in fig.layout.title.text and "attn.0:2" not in fig.layout.title.text
    np.testing.assert_allclose(fig.data[1].y, panel._top()[2].numpy())


def test_sliders_follow_a_rasters_selection_live(organism, stim, pristine) -> None:
    rec = llmscope.record(organism, llmscope.stimuli.grammar(organism, n_docs=2, seed=0), ["mlp.1"],
                          dtype="float32", progress=False)
    raster = Raster(rec, "mlp.1")
    panel = AblationPanel(organism, PROMPT, units=raster)
    assert len(panel.units) == 0 and panel.gains == {}  # nothing selected yet: no slider
    assert opened(*panel._view({"seq": 1}, []))["labels"] == []
    raster.selected = [3, 7]  # as a click and a shift-click in the raster's page would
    assert panel.units.tolist() == [("mlp.1", 3), ("mlp.1", 7)] and list(panel.gains) == [("mlp.1", 3), ("mlp.1", 7)]
    version = panel.version
    data = opened(*move(panel, [0.0, 1.0]))
    assert data["labels"] == ["mlp.1:3", "mlp.1:7"]
    with intervene(organism, lesion("mlp.1", [3])):
        by_hand = metric(organism, stim, "loss").df["mean"].item()
    assert panel.value == pytest.approx(by_hand, rel=1e-5)
    raster.selected = [3, 9]  # unit 3 stays and keeps its gain (the model still runs it lesioned)
    assert panel.gains == {("mlp.1", 3): 0.0, ("mlp.1", 9): 1.0} and panel.version == version + 1
    assert panel.value == pytest.approx(by_hand, rel=1e-5)
    assert opened(*panel._view({"seq": 2}, []))["labels"] == ["mlp.1:3", "mlp.1:9"]
    assert_pristine(organism, stim, pristine)
    panel.unlink()
    raster.selected = [1]
    assert list(panel.gains) == [("mlp.1", 3), ("mlp.1", 9)]
    panel.link(raster)
    assert list(panel.gains) == [("mlp.1", 1)] and panel.value == panel.baseline
    panel.units = [("attn.0", 2)]  # set by hand: the link is dropped
    raster.selected = [2]
    assert list(panel.gains) == [("attn.0", 2)]


def test_a_slider_follows_an_attention_maps_focused_head(organism, tiny) -> None:
    amap = AttentionMap(organism, PROMPT)
    panel = AblationPanel(organism, PROMPT, units=[("attn.0", 1)])
    panel.link(amap)
    assert panel.units.tolist() == [amap.unit]
    amap.focus = (0, 2)
    assert panel.units.tolist() == [("attn.0", 2)]
    with pytest.raises(SiteError, match="mlp.1"):  # the tiny GPT-2 has 64 neurons, not the organism's 512
        AblationPanel(tiny, "w1 w2", units=Raster(llmscope.record(
            organism, llmscope.stimuli.grammar(organism, n_docs=1, seed=0), ["mlp.1"], progress=False), "mlp.1"))
    with pytest.raises(AnalysisError, match="links to a Raster"):
        panel.link("mlp.1")
    assert panel.units.tolist() == [("attn.0", 2)]
