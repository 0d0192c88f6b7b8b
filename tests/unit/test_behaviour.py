"""Behaviour metrics, intervention effects and activation patching on the tiny GPT-2 (and one
effect that must hurt on SmolLM2); Result's table, figure and reprs."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from functools import partial

from llmscope.analysis.effect import effect
from llmscope.analysis.patching import patching
from llmscope.behaviour import evaluate, logit_diff, metric, token_loss
from llmscope.errors import AnalysisError, ColumnError, InterventionError, LLMScopeError, PromptError, SiteError
from llmscope.interventions import gain, intervene, lesion, patch
from llmscope.result import Result
from llmscope.stimuli import grammar
from llmscope.stimuli.core import Stimuli

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
    pd.testing.assert_frame_equal(token_loss(model, stimuli).df, baseline)


# ---------------------------------------------------------------- per-token behaviour


def test_token_loss_matches_a_manual_cross_entropy(tiny, stim):
    table = token_loss(tiny, stim, batch_size=3).df
    assert list(table.columns) == [*stim.tokens.columns, "loss", "correct"] and len(table) == len(stim)
    after = token_loss(tiny, stim, batch_size=3, align="context").df
    for q, seq in enumerate(SEQS):
        rows, ctx = table[table["seq"] == q], after[after["seq"] == q]
        logits = logits_of(tiny, seq)
        manual = F.cross_entropy(logits[:-1], torch.tensor(seq[1:]), reduction="none").numpy()
        # the loss belongs to the predicted token: row pos holds the loss of predicting token pos
        np.testing.assert_allclose(rows["loss"].to_numpy()[1:], manual, rtol=1e-5)
        assert np.isnan(rows["loss"].iloc[0]) and rows["correct"].isna().iloc[0]
        np.testing.assert_allclose(ctx["loss"].to_numpy()[:-1], manual, rtol=1e-5)
        assert np.isnan(ctx["loss"].iloc[-1])
        hits = (logits[:-1].argmax(-1) == torch.tensor(seq[1:])).numpy()
        assert rows["correct"].iloc[1:].to_numpy(dtype=bool).tolist() == hits.tolist()


def test_logit_diff_reads_good_minus_bad_at_targets(tiny, stim):
    table = evaluate(tiny, stim, "logit_diff").df
    rows = table.dropna(subset=["logit_diff"])
    assert len(rows) == len(SEQS) and rows["is_target"].all()
    for (_, row), seq in zip(rows.iterrows(), SEQS):
        logits = logits_of(tiny, seq)[row["pos"]]
        assert row["logit_diff"] == pytest.approx(float(logits[GOOD] - logits[BAD]), abs=1e-5)


def test_metric_groups_by_any_trial_table_column(tiny, stim):
    table = token_loss(tiny, stim).df
    by_kind = metric(tiny, stim, "loss", by="kind").df
    expected = table.groupby("kind")["loss"].agg(["mean", "count"])
    assert by_kind["kind"].tolist() == expected.index.tolist()
    np.testing.assert_allclose(by_kind["mean"], expected["mean"])
    assert by_kind["n"].tolist() == expected["count"].tolist()
    overall = metric(tiny, stim, "correct").df
    assert overall["n"].item() == len(stim) - len(SEQS)
    two = metric(tiny, stim, partial(logit_diff, good="good_id"), by=["kind", "seq"]).df
    assert two["n"].sum() == len(SEQS)


def test_loss_on_nouns_is_not_loss_after_nouns(organism):
    """The default groups a loss under the predicted token's tag; the other alignment differs."""
    stim = grammar(organism, n_docs=24, seed=3)
    on = metric(organism, stim, "loss", by="pos_tag").df.set_index("pos_tag")
    after = metric(organism, stim, "loss", by="pos_tag", align="context").df.set_index("pos_tag")
    table = token_loss(organism, stim).df
    nouns = table[table.pos_tag == "NOUN"]
    assert on.loc["NOUN", "mean"] == pytest.approx(nouns["loss"].mean())
    assert abs(on.loc["NOUN", "mean"] - after.loc["NOUN", "mean"]) > 0.5
    # a determiner is hard to predict less often than what follows it (a noun or an adjective)
    assert on.loc["DET", "mean"] < after.loc["DET", "mean"]


def test_bos_rows_stay_out_unless_asked(tiny):
    bos = Stimuli.from_ids(tiny, SEQS, n_bos=1)
    ctx = metric(tiny, bos, "loss", align="context").df
    with_bos = metric(tiny, bos, "loss", align="context", include_bos=True).df
    assert ctx["n"].item() == len(bos) - 2 * len(SEQS) and with_bos["n"].item() == len(bos) - len(SEQS)


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
    df = effect(tiny, stim, gain(("mlp.0", [1, 2]), factor=1.0), metric="logit_diff").df
    assert df.loc[0, "difference"] == 0 and df.loc[0, "ci_low"] == 0 == df.loc[0, "ci_high"]


def test_effect_interval_and_p_come_from_one_resampling():
    """The interval of a difference excludes zero exactly when p < 0.05, whatever the sequence
    lengths (a t-test of unweighted per-sequence means disagreed with the token-weighted
    bootstrap interval when long and short sequences differ)."""
    from llmscope.analysis.effect import compare

    rng = np.random.default_rng(0)
    agree, excluded = [], []
    for case in range(40):
        lengths = np.where(rng.random(12) < 0.25, 2, 40)  # a few short sequences among long ones
        seq = np.repeat(np.arange(12), lengths)
        shift = np.where(lengths == 2, rng.normal(0.5, 0.3), rng.normal(-0.02, 0.03))[seq]  # short ones differ
        base = rng.normal(3.0, 0.5, len(seq))
        rows = pd.DataFrame({"seq": seq, "baseline": base, "intervened": base + shift + rng.normal(0, 0.05, len(seq))})
        out = compare(rows, n_boot=400, seed=case)
        assert out["ci_low"] <= out["difference"] <= out["ci_high"]
        excluded.append(out["ci_low"] > 0 or out["ci_high"] < 0)
        agree.append(excluded[-1] == (out["p"] < 0.05))
    assert all(agree), np.flatnonzero(~np.array(agree))
    assert 0 < sum(excluded) < len(excluded)  # both outcomes occur


def test_effect_ratio_only_where_the_baseline_is_bounded_away_from_zero():
    from llmscope.analysis.effect import compare

    seq = np.repeat(np.arange(8), 5)
    around_zero = pd.DataFrame({"seq": seq, "baseline": np.where(seq % 2, 1.0, -1.0) + 0.01, "intervened": 2.0})
    out = compare(around_zero, n_boot=200)
    assert out["baseline"] == pytest.approx(0.01) and np.isnan(out["ratio"])  # not 2 / 0.01 = 200
    away = compare(around_zero.assign(baseline=around_zero.baseline + 3), n_boot=200)
    assert away["ratio"] == pytest.approx(2 / 3.01)


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
    assert list(df.columns) == ["site", "layer", "head", "pos", "text", "metric", "value"]
    grid = df.pivot(index="layer", columns="pos", values="value")
    np.testing.assert_allclose(grid.loc[0], [0, 0, 1, 0, 0, 0], atol=1e-5)  # the changed token restores all
    np.testing.assert_allclose(grid.loc[2], [0, 0, 0, 0, 1, 0], atol=1e-5)  # the last residual at the target
    fig = r.plot()
    heat = fig.data[0]
    assert heat.type == "heatmap" and np.asarray(heat.z).shape == (3, 6)
    assert list(heat.x) == [f"{p}: {html.escape(t)}" for p, t in zip(range(6), clean.tokens["text"][:6])]
    assert tiny.list_hooks() == {}


def test_patching_chosen_sites_and_positions(tiny, pair):
    r = patching(tiny, *pair, "logit_diff", sites=["attn.0", "mlp.1"], positions=[2, -2], progress=False)
    assert r.df[["site", "pos"]].values.tolist() == [["attn.0", 2], ["attn.0", 4], ["mlp.1", 2], ["mlp.1", 4]]


def test_head_level_patching_patches_one_head_at_a_time(tiny, pair):
    clean, corrupt = pair
    r = patching(tiny, clean, corrupt, "logit_diff", sites=["attn.1"], positions=[4], per_head=True, progress=False)
    assert r.df["head"].tolist() == [0, 1, 2, 3] and r.meta["per_head"]
    target = Stimuli(corrupt.ids, corrupt.lengths, clean.tokens.assign(token=corrupt.tokens["token"]))
    _, source = tiny.run_with_cache(clean.ids)
    _, base = tiny.run_with_cache(target.ids)
    for row in r.df.itertuples():
        mixed = base["blocks.1.attn.hook_z"].clone()
        mixed[:, 4, row.head] = source["blocks.1.attn.hook_z"][:, 4, row.head]
        with intervene(tiny, patch({"blocks.1.attn.hook_z": mixed}, "attn.1")):
            expected = evaluate(tiny, target, "logit_diff").df["logit_diff"].mean()
        assert row.metric == pytest.approx(expected, abs=1e-4)
    assert r.df["value"].std() > 0  # heads differ: the cells are not one patch repeated


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
            expected = evaluate(tiny, target, "logit_diff").df["logit_diff"].mean()
        assert row.metric == pytest.approx(expected, abs=1e-4), (row.site, row.pos)
    assert r.df["value"].abs().max() > 0.1  # the map is not flat: the comparison means something


# ---------------------------------------------------------------- bad input: clear errors, model pristine


def test_bad_behaviour_input_raises_and_leaves_the_model_pristine(tiny, stim, pair):
    baseline = token_loss(tiny, stim).df
    empty = Stimuli(torch.zeros((0, 0), dtype=torch.long), [], pd.DataFrame(columns=["seq", "pos", "token", "text"]))
    too_long = Stimuli(torch.ones((1, 40), dtype=torch.long), [40],
                       pd.DataFrame({"seq": 0, "pos": range(40), "token": 1, "text": "<bos>"}))
    cases = [
        (lambda: token_loss(tiny, empty), PromptError, "empty"),
        (lambda: effect(tiny, too_long, lesion(("mlp.0", [1]))), PromptError, "context"),
        (lambda: metric(tiny, stim, "loss", by="pos_tag"), ColumnError, "no column to group by 'pos_tag'"),
        (lambda: metric(tiny, stim, "perplexity"), AnalysisError, "unknown metric"),
        (lambda: metric(tiny, stim, 3), AnalysisError, "a metric is a name"),
        (lambda: metric(tiny, stim, "loss", align="next"), AnalysisError, "unknown align"),
        (lambda: evaluate(tiny, stim, partial(logit_diff, good="io_id")), ColumnError, "io_id"),
        (lambda: effect(tiny, stim, lesion(("mlp.1", [99]))), SiteError, "out of range"),
        (lambda: effect(tiny, stim, gain(("mlp.1", [1]), factor=3.0), metric=lambda lg, s: 1 / 0),
         ZeroDivisionError, "division"),
        (lambda: effect(tiny, stim, gain(("mlp.1", [1]), factor=3.0), metric=lambda lg, s: "high"),
         AnalysisError, "one number per trial row"),
        (lambda: effect(tiny, stim, lesion(("mlp.1", [1])), metric=lambda lg, s: np.zeros(3)),
         AnalysisError, "shape \\(3,\\)"),
        (lambda: effect(tiny, stim, lesion(("mlp.1", [1])), n_boot=0), AnalysisError, "n_boot"),
        (lambda: effect(tiny, stim, ("mlp.1", [1])), InterventionError, "takes an intervention"),
        (lambda: metric(tiny, stim, batch_size=2.5), AnalysisError, "batch_size"),
        (lambda: patching(tiny, pair[0], stim, "logit_diff"), AnalysisError, "pair up"),
        (lambda: patching(tiny, pair[0], pair[0], "logit_diff"), AnalysisError, "nothing for patching"),
        (lambda: patching(tiny, *pair, "logit_diff", positions=[6]), AnalysisError, "positions"),
        (lambda: metric(tiny, Stimuli.from_ids(tiny, [[1], [5]]), "loss"), AnalysisError, "no row has a value"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match) as info:
            call()
        assert isinstance(info.value, LLMScopeError) or error is ZeroDivisionError
        assert "'" != str(info.value)[:1] or "no column" not in str(info.value)  # KeyError text unquoted
        assert_pristine(tiny, stim, baseline)


# ---------------------------------------------------------------- Result


def test_the_base_result_shows_its_table():
    r = Result(pd.DataFrame({"unit": [3, 7], "score": [0.5, 0.25]}), meta={"site": "mlp.1"})
    fig = r.plot()
    assert fig.data[0].type == "table" and list(fig.data[0].header.values) == ["unit", "score"]
    assert list(fig.data[0].cells.values[1]) == ["0.5", "0.25"]
    assert repr(r).startswith("Result(result: 2 rows x 2 columns; site='mlp.1')")
    assert "<b>" in r._repr_html_() and "<script" not in Result(pd.DataFrame({"t": ["<script>"]}))._repr_html_()
