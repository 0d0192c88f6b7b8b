"""Behaviour metrics, intervention effects and activation patching on the tiny GPT-2 (and one
effect that must hurt on SmolLM2); Result's table, figure and reprs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from llmscope.behaviour import effect, logit_diff, metric, patching, token_loss
from llmscope.interventions import InterventionError, gain, intervene, lesion, patch
from llmscope.result import Result
from llmscope.sites import SiteError
from llmscope.stimuli.core import Stimuli
from llmscope.tokens import PromptError

SEQS = [[1, 5, 9, 14, 22, 31, 40], [1, 60, 3, 3, 17], [1, 8, 8, 12, 30, 41, 50, 62, 7], [1, 20, 21]]
GOOD, BAD = 10, 11


def labels(seqs) -> dict:
    """Alternating ``kind`` labels; the target is each sequence's second-to-last token."""
    n = sum(map(len, seqs))
    target = np.zeros(n, bool)
    target[np.cumsum([len(s) for s in seqs]) - 2] = True
    return {"kind": np.where(np.arange(n) % 2, "odd", "even"), "is_target": target,
            "good_id": np.where(target, GOOD, -1), "bad_id": np.where(target, BAD, -1)}


@pytest.fixture(scope="module")
def stim(tiny) -> Stimuli:
    return Stimuli.from_ids(tiny, SEQS, labels=labels(SEQS), name="toy")


def logits_of(model, seq) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([seq]))[0]


def assert_pristine(model, stimuli: Stimuli, baseline: pd.DataFrame) -> None:
    assert model.list_hooks() == {}
    pd.testing.assert_frame_equal(token_loss(model, stimuli), baseline)


# ---------------------------------------------------------------- per-token behaviour


def test_token_loss_matches_a_manual_cross_entropy(tiny, stim):
    table = token_loss(tiny, stim, batch_size=3)
    assert list(table.columns) == [*stim.tokens.columns, "loss", "correct"] and len(table) == len(stim)
    for q, seq in enumerate(SEQS):
        rows = table[table["seq"] == q]
        logits = logits_of(tiny, seq)
        manual = F.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="none").numpy()
        np.testing.assert_allclose(rows["loss"].to_numpy()[:-1], manual, rtol=1e-5)
        assert np.isnan(rows["loss"].iloc[-1]) and rows["correct"].isna().iloc[-1]
        hits = (logits[:-1].argmax(-1) == torch.tensor(seq[1:])).numpy()
        assert rows["correct"].iloc[:-1].to_numpy(dtype=bool).tolist() == hits.tolist()


def test_logit_diff_reads_good_minus_bad_at_targets(tiny, stim):
    rows = logit_diff(tiny, stim)
    assert len(rows) == len(SEQS) and rows["is_target"].all()
    for (_, row), seq in zip(rows.iterrows(), SEQS):
        logits = logits_of(tiny, seq)[row["pos"]]
        assert row["logit_diff"] == pytest.approx(float(logits[GOOD] - logits[BAD]), abs=1e-5)


def test_metric_groups_by_any_trial_table_column(tiny, stim):
    table = token_loss(tiny, stim)
    by_kind = metric(tiny, stim, "loss", by="kind")
    expected = table.groupby("kind")["loss"].agg(["mean", "count"])
    assert by_kind["kind"].tolist() == expected.index.tolist()
    np.testing.assert_allclose(by_kind["mean"], expected["mean"])
    assert by_kind["n"].tolist() == expected["count"].tolist()
    overall = metric(tiny, stim, "correct")
    assert overall["n"].item() == len(stim) - len(SEQS)
    two = metric(tiny, stim, lambda m, s: logit_diff(m, s), by=["kind", "seq"])
    assert two["n"].sum() == len(SEQS)


# ---------------------------------------------------------------- effect


def test_effect_table_and_figure(tiny, stim):
    r = effect(tiny, stim, lesion(("mlp.1", range(32))), metric="loss", by="kind")
    df = r.df
    assert r.kind == "effect" and df["kind"].tolist() == ["even", "odd"]
    assert {"baseline", "intervened", "difference", "ratio", "ci_low", "ci_high", "p", "n", "n_seqs"} <= set(df)
    np.testing.assert_allclose(df["difference"], df["intervened"] - df["baseline"])
    np.testing.assert_allclose(df["ratio"], df["intervened"] / df["baseline"])
    assert ((df["ci_low"] <= df["difference"]) & (df["difference"] <= df["ci_high"])).all()
    assert df["n"].sum() == len(stim) - len(SEQS)
    fig = r.plot()
    assert isinstance(fig, go.Figure) and fig.data[0].type == "bar" and list(fig.data[0].x) == ["even", "odd"]
    assert "lesion" in repr(r) and "<table" in r._repr_html_()


def test_effect_of_a_null_intervention_is_exactly_zero(tiny, stim):
    df = effect(tiny, stim, gain(("mlp.0", [1, 2]), 1.0), metric="logit_diff").df
    assert df.loc[0, "difference"] == 0 and df.loc[0, "ci_low"] == 0 == df.loc[0, "ci_high"]


@pytest.mark.smollm2
def test_effect_of_a_lesion_that_must_hurt(smol):
    texts = ["The cat sat on the mat and looked out of the window.",
             "Paris is the capital and largest city of France.",
             "She opened the door, smiled, and said good morning to everyone.",
             "Water boils at one hundred degrees Celsius at sea level."]
    stim = Stimuli.from_ids(smol, [smol.to_tokens(t)[0].tolist() for t in texts])
    r = effect(smol, stim, lesion(("mlp.0", None)), metric="loss", n_boot=500)
    row = r.df.iloc[0]
    assert row["n_seqs"] == 4 and row["difference"] > 1.0 and row["ci_low"] > 0
    assert smol.list_hooks() == {}


# ---------------------------------------------------------------- patching


@pytest.fixture(scope="module")
def pair(tiny):
    """Clean and corrupt differ at position 2 only; all targets at position 4."""
    clean_seqs = [[1, 5, 9, 14, 22, 31], [1, 60, 3, 3, 17, 40], [1, 8, 8, 12, 30, 41]]
    corrupt_seqs = [[s[0], s[1], 44, *s[3:]] for s in clean_seqs]
    lab = labels(clean_seqs)
    return (Stimuli.from_ids(tiny, clean_seqs, labels=lab, name="clean"),
            Stimuli.from_ids(tiny, corrupt_seqs, labels=lab, name="corrupt"))


def test_patching_map_over_layers_and_positions(tiny, pair):
    clean, corrupt = pair
    r = patching(tiny, clean, corrupt, "logit_diff")
    df = r.df
    assert r.kind == "patching" and len(df) == 3 * 6
    assert list(df.columns) == ["site", "layer", "pos", "text", "metric", "value"]
    grid = df.pivot(index="layer", columns="pos", values="value")
    np.testing.assert_allclose(grid.loc[0], [0, 0, 1, 0, 0, 0], atol=1e-5)  # the changed token restores all
    np.testing.assert_allclose(grid.loc[2], [0, 0, 0, 0, 1, 0], atol=1e-5)  # the last residual at the target
    fig = r.plot()
    heat = fig.data[0]
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (3, 6)
    assert list(heat.x) == [f"{p}: {t}" for p, t in zip(range(6), clean.tokens["text"][:6])]
    assert tiny.list_hooks() == {}


def test_patching_chosen_sites_and_positions(tiny, pair):
    r = patching(tiny, *pair, "logit_diff", sites=["attn.0", "mlp.1"], positions=[2, -2])
    assert r.df[["site", "pos"]].values.tolist() == [["attn.0", 2], ["attn.0", 4], ["mlp.1", 2], ["mlp.1", 4]]


def test_stacked_patching_equals_one_pass_per_position(tiny):
    """The batched map against the definition: one intervened run per site x position."""
    clean_seqs = [[1, 5, 9, 14, 22, 31, 7], [1, 60, 3, 3, 17], [1, 8, 8, 12, 30, 41]]  # unequal lengths
    corrupt_seqs = [[s[0], 44, 45, *s[3:]] for s in clean_seqs]
    clean = Stimuli.from_ids(tiny, clean_seqs, labels=labels(clean_seqs))
    corrupt = Stimuli.from_ids(tiny, corrupt_seqs, labels=labels(clean_seqs))
    r = patching(tiny, clean, corrupt, "logit_diff", sites=["resid.1", "attn.1", "mlp.0"])
    target = Stimuli(corrupt.ids, corrupt.lengths, clean.tokens.assign(token=corrupt.tokens["token"]))
    _, source = tiny.run_with_cache(clean.ids)
    for row in r.df.itertuples():
        with intervene(tiny, patch(source, row.site, positions=[row.pos])):
            expected = logit_diff(tiny, target)["logit_diff"].mean()
        assert row.metric == pytest.approx(expected, abs=1e-4), (row.site, row.pos)
    assert r.df["value"].abs().max() > 0.1  # the map is not flat: the comparison means something


# ---------------------------------------------------------------- bad input: clear errors, model pristine


def test_bad_behaviour_input_raises_and_leaves_the_model_pristine(tiny, stim, pair):
    baseline = token_loss(tiny, stim)
    empty = Stimuli(torch.zeros((0, 0), dtype=torch.long), [], pd.DataFrame(columns=["seq", "pos", "token", "text"]))
    too_long = Stimuli(torch.ones((1, 40), dtype=torch.long), [40],
                       pd.DataFrame({"seq": 0, "pos": range(40), "token": 1, "text": "<bos>"}))
    cases = [
        (lambda: token_loss(tiny, empty), PromptError, "empty"),
        (lambda: effect(tiny, too_long, lesion(("mlp.0", [1]))), PromptError, "context"),
        (lambda: metric(tiny, stim, "loss", by="pos_tag"), KeyError, "cannot group by"),
        (lambda: metric(tiny, stim, "perplexity"), ValueError, "unknown metric"),
        (lambda: logit_diff(tiny, stim, good="io_id"), KeyError, "io_id"),
        (lambda: effect(tiny, stim, lesion(("mlp.1", [99]))), SiteError, "out of range"),
        (lambda: effect(tiny, stim, gain(("mlp.1", [1]), 3.0), metric=lambda m, s: 1 / 0),
         ZeroDivisionError, "division"),
        (lambda: patching(tiny, pair[0], stim, "logit_diff"), ValueError, "pair up"),
        (lambda: patching(tiny, pair[0], pair[0], "logit_diff"), ValueError, "nothing for patching"),
        (lambda: patching(tiny, *pair, "logit_diff", positions=[6]), ValueError, "positions"),
        (lambda: patching(tiny, *pair, lambda m, s: logit_diff(m, s, batch_size=2)), InterventionError,
         "as one batch"),
        (lambda: metric(tiny, Stimuli.from_ids(tiny, [[1], [5]]), "loss"), ValueError, "no row has a value"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
        assert_pristine(tiny, stim, baseline)


# ---------------------------------------------------------------- Result


def test_result_without_a_plotter_shows_its_table():
    r = Result(pd.DataFrame({"unit": [3, 7], "score": [0.5, 0.25]}), kind="demo", meta={"site": "mlp.1"})
    fig = r.plot()
    assert fig.data[0].type == "table" and list(fig.data[0].header.values) == ["unit", "score"]
    assert repr(r).startswith("Result('demo': 2 rows x 2 columns; site='mlp.1')")
    assert "<b>" in r._repr_html_() and "<script" not in Result(pd.DataFrame({"t": ["<script>"]}))._repr_html_()
