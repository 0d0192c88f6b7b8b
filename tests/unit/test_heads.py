"""Head localizers and their lesion confirmation, against the organism's known heads.

grammar-2l's card: previous-token head attn.0 head 2, induction head attn.1 head 0, whose
zero lesion raises the loss on repeated tokens by ~4.4 nats.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from llmscope.stimuli import trials
from llmscope.analysis.heads import SCORES, confirm_by_lesion, localize_heads
from llmscope.behaviour import correct, loss
from llmscope.errors import AnalysisError, ColumnError, SiteError, LLMScopeError
from llmscope.interventions import intervene, lesion
from llmscope.organisms.facts import organism_folder
from llmscope.stimuli import Stimuli, grammar, induction

CARD = json.loads((organism_folder("grammar-2l") / "card.json").read_text())["facts"]["heads"]


@pytest.fixture(scope="module")
def docs(organism):
    """Organism documents: about half their spans are verbatim repeats (is_repeat)."""
    return grammar(organism, n_docs=16, seed=1)


@pytest.fixture(scope="module")
def salad(organism):
    """Random tokens shown twice: the organism never saw word salad in training."""
    return induction(organism, n_seqs=16, half_len=20, seed=0)


@pytest.fixture(scope="module")
def scores(organism, docs):
    return localize_heads(organism, docs, progress=False)


@pytest.fixture(scope="module")
def baseline(organism, docs):
    with torch.no_grad():
        return organism(docs.ids)


def assert_pristine(model, stim, logits):
    with torch.no_grad():
        assert torch.equal(model(stim.ids), logits), "a hook was left on the model"


# ---------------------------------------------------------------- localize_heads


def test_localizer_finds_the_cards_heads_on_documents(scores):
    df = scores.df
    assert scores.top(1, by="previous_token").index.tolist() == [("attn.0", 2)]
    assert scores.top(1).index.tolist() == [("attn.1", 0)]  # induction ranks by default
    for name, best in (("previous_token", ("attn.0", 2)), ("induction", ("attn.1", 0))):
        runner_up = df[name].drop(best).max()
        assert df.loc[best, name] > 2 * runner_up, name
        assert df.loc[best, name] > 10 * df.loc[best, f"{name}_control"], name
    # the previous-token score has the card's definition: it reproduces the card's figure
    assert abs(df.loc[("attn.0", 2), "previous_token"] - CARD["previous_token_score"]) < 0.05


def test_localizer_finds_the_same_heads_on_random_repeats(organism, salad):
    # the organism predicts word salad badly, but its attention still copies: the same two heads
    r = localize_heads(organism, salad, progress=False)
    assert r.top(1, by="previous_token").index.tolist() == [("attn.0", 2)]
    assert r.top(1, by="induction").index.tolist() == [("attn.1", 0)]
    assert r.meta["n_queries"]["induction"] == 16 * 20  # every token of the second copy


def test_scores_agree_with_transformer_lens_head_detector(organism):
    from transformer_lens.head_detector import detect_head

    doc = grammar(organism, n_docs=1, seed=3, max_tokens=64)
    text = " ".join(doc.tokens["text"].iloc[1:])
    assert torch.equal(organism.to_tokens(text)[0], doc.ids[0])
    r = localize_heads(organism, doc, include_bos=True, progress=False)
    n = len(doc)
    for name in SCORES:
        n_q = r.meta["n_queries"][name]
        assert 0 < n_q < n
        # TL divides by every query's attention (n rows of 1); we average over scored queries
        ours = torch.tensor(r.df[name].to_numpy().reshape(2, 4)) * n_q / n
        ref = detect_head(organism, text, f"{name}_head").double()
        assert torch.allclose(ours, ref, atol=1e-6), name


def test_control_equals_score_for_uniform_attention(tiny):
    # a freshly initialised GPT-2 attends almost uniformly: no head is tuned to any target
    r = localize_heads(tiny, induction(tiny, n_seqs=8, half_len=12, seed=0), progress=False)
    for name in SCORES:
        gap = (r.df[name] - r.df[f"{name}_control"]).abs().max()
        assert gap < 0.01, (name, gap)
        assert r.df[name].min() > 0.04  # several targets per query: a real, nonzero score


def test_scores_table_passes_to_lesion(organism, docs, scores, baseline):
    assert list(scores.df.index.names) == ["site", "unit"]
    assert len(scores.df) == 8 and scores.df[list(SCORES)].apply(lambda c: c.between(0, 1).all()).all()
    with intervene(organism, lesion(scores.df.nlargest(1, "induction"))), torch.no_grad():
        hit = organism(docs.ids)
    assert not torch.equal(hit, baseline)
    with intervene(organism, lesion("attn.1", [0])), torch.no_grad():
        assert torch.equal(organism(docs.ids), hit)
    assert_pristine(organism, docs, baseline)


def test_plot_is_a_categorical_heatmap_per_score(scores):
    fig = scores.plot()
    assert [t.type for t in fig.data] == ["heatmap"] * 3
    assert list(fig.data[0].y) == ["attn.0", "attn.1"] and list(fig.data[0].x) == ["0", "1", "2", "3"]
    assert all(ax.type == "category" for ax in (fig.layout.xaxis, fig.layout.yaxis, fig.layout.xaxis3))
    one = scores.plot(by="induction")
    assert len(one.data) == 1 and one.data[0].z[1][0] == pytest.approx(scores.df.loc[("attn.1", 0), "induction"])


def test_no_repeats_gives_nan_with_a_warning(organism, docs):
    vocab = docs.tokens.loc[docs.tokens["pos"] > 0, "token"].unique()[:30]
    stim = Stimuli.from_ids(organism, [[int(docs.ids[0, 0]), *vocab[:15]], [int(docs.ids[0, 0]), *vocab[15:]]])
    with torch.no_grad():
        before = organism(stim.ids)
    with pytest.warns(UserWarning, match="duplicate_token.*induction"):
        r = localize_heads(organism, stim, progress=False)
    assert r.df["induction"].isna().all() and r.df["duplicate_token"].isna().all()
    assert r.df["previous_token"].notna().all()
    assert r.top(1, by="previous_token").index.tolist() == [("attn.0", 2)]
    with pytest.raises(AnalysisError, match="induction"):
        r.top(1)
    assert_pristine(organism, stim, before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(include_bos="yes"), "include_bos"),
    (dict(progress=None), "progress"),
])
def test_localize_bad_arguments(organism, docs, baseline, kwargs, match):
    with pytest.raises(AnalysisError, match=match):
        localize_heads(organism, docs, **kwargs)
    assert_pristine(organism, docs, baseline)


def test_localize_refuses_what_it_cannot_score(organism, docs, scores, baseline):
    with pytest.raises(TypeError, match="Stimuli"):
        localize_heads(organism, docs.ids)
    bos = int(docs.ids[0, 0])
    with pytest.raises(AnalysisError, match="no query token"):
        localize_heads(organism, Stimuli.from_ids(organism, [[bos], [bos]]), progress=False)
    with pytest.raises(ColumnError, match="by='copying'"):
        scores.top(1, by="copying")
    with pytest.raises(AnalysisError, match="n must be"):
        scores.top(0)
    with pytest.warns(FutureWarning, match=r"top\(2, by='induction'\)"):
        assert scores.top("induction", 2).index.tolist() == scores.top(2).index.tolist()
    assert_pristine(organism, docs, baseline)


# ---------------------------------------------------------------- confirm_by_lesion


@pytest.fixture(scope="module")
def confirmed(organism, docs, scores):
    return confirm_by_lesion(organism, docs, scores.top(1), n_controls=20, progress=False)


def test_lesion_of_the_induction_head_beats_every_other_head(confirmed, scores):
    df, meta = confirmed.df, confirmed.meta
    assert df.index.tolist() == [("attn.1", 0)]
    # 20 draws asked, 7 heads left: the null is every other head, so percentile 100 = ranked first of 8
    assert meta["n_controls"] == 7 and "attn.1:0" not in list(confirmed.data["unit"].values)
    row = df.iloc[0]
    assert row["percentile"] == 100.0 and row["p"] == pytest.approx(1 / 8)
    assert row["harm"] > row["harm_control_p95"] > row["harm_control"]
    assert row["delta_loss"] == row["harm"] > 2.0  # the card measured a 4.4-nat rise on repeats
    assert row["harm_control"] == pytest.approx(float(confirmed.data["delta"].mean()))


def per_row(model, stim, metric, *interventions):
    """``metric`` (behaviour.loss or .correct) per trial row, with ``interventions`` on."""
    with intervene(model, *interventions), torch.no_grad():
        return metric(model(stim.ids), stim)


def test_delta_is_the_loss_on_repeated_tokens(organism, docs, confirmed):
    t = docs.tokens
    rows = t["is_repeat"].astype(bool).to_numpy() & trials.rows(t)
    intact = per_row(organism, docs, loss)
    assert np.isnan(intact[t["pos"] == 0]).all()  # the loss belongs to the predicted token
    assert confirmed.meta["baseline"] == pytest.approx(np.nanmean(intact[rows]), rel=1e-6)
    hit = per_row(organism, docs, loss, lesion("attn.1", [0]))
    delta = np.nanmean(hit[rows]) - np.nanmean(intact[rows])
    assert confirmed.df["delta_loss"].iloc[0] == pytest.approx(delta, rel=1e-5)  # stacked: exact to float rounding


def test_lesion_ranks_the_induction_head_first(organism, docs, scores, baseline):
    r = confirm_by_lesion(organism, docs, scores.df.nlargest(3, "induction"), n_controls=5, seed=1, progress=False)
    assert r.df.index[0] == ("attn.1", 0)
    assert r.df["delta_loss"].is_monotonic_decreasing and len(r.df) == 3
    assert r.meta["n_controls"] == 5 and not set(r.data["unit"].values) & {f"{s}:{u}" for s, u in r.df.index}
    assert r.top(1).index.tolist() == [("attn.1", 0)]
    fig = r.plot()
    assert [t.type for t in fig.data] == ["bar", "box"] and fig.layout.xaxis.type == "category"
    assert list(fig.data[0].x) == [f"{s}:{u}" for s, u in r.df.index]
    assert_pristine(organism, docs, baseline)


def test_correct_metric_counts_a_fall_as_harm(organism, docs, baseline):
    r = confirm_by_lesion(organism, docs, [("attn.1", 0)], metric="correct", n_controls=7, progress=False)
    row = r.df.iloc[0]
    assert row["delta_correct"] < -row["harm_control_p95"] < 0  # accuracy on repeats falls the most
    assert row["harm"] == -row["delta_correct"]
    t = docs.tokens
    rows = t["is_repeat"].astype(bool).to_numpy() & trials.rows(t) & (t["pos"] > 0).to_numpy()
    expected = per_row(organism, docs, correct, lesion("attn.1", [0]))[rows].mean() - per_row(organism, docs, correct)[rows].mean()
    assert row["delta_correct"] == pytest.approx(expected, abs=1e-9)
    assert row["percentile"] == 100.0
    assert_pristine(organism, docs, baseline)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(units=[("attn.1", 4)]), SiteError, r"\[4\] out of range for attn.1.*0\.\.3"),
    (dict(units=[("attn.2", 0)]), SiteError, "layer 2 out of range"),
    (dict(units=[("mlp.0", 1)]), SiteError, r"\['mlp.0'\] are not attention sites"),
    (dict(n_controls=0), AnalysisError, "n_controls must be an integer >= 1 and <= 100, got 0"),
    (dict(n_controls=2.5), AnalysisError, "n_controls"),
    (dict(metric="perplexity"), AnalysisError, r"unknown metric 'perplexity'.*'loss', 'correct'"),
    (dict(where="is_copy"), ColumnError, "no where column 'is_copy'.*is_repeat"),
    (dict(where="pos_tag"), AnalysisError, "where='pos_tag' must name a boolean column"),
    (dict(seed=-1), AnalysisError, "seed"),
    (dict(stimuli=3), LLMScopeError, "Stimuli"),
])
def test_confirm_bad_arguments(organism, docs, baseline, kwargs, error, match):
    args = dict(stimuli=docs, units=[("attn.1", 0)], progress=False) | kwargs
    with pytest.raises(error, match=match):
        confirm_by_lesion(organism, args.pop("stimuli"), args.pop("units"), **args)
    assert_pristine(organism, docs, baseline)


def test_confirm_needs_heads_left_for_the_control(organism, docs, scores, baseline):
    with pytest.raises(AnalysisError, match="all 8 heads are tested"):
        confirm_by_lesion(organism, docs, scores, progress=False)
    assert_pristine(organism, docs, baseline)


def test_confirm_needs_rows_of_interest(organism, docs, baseline):
    stim = Stimuli(docs.ids, docs.lengths, docs.tokens.assign(first=docs.tokens["pos"] == 0), name="docs")
    with pytest.raises(AnalysisError, match="first"):
        confirm_by_lesion(organism, stim, [("attn.1", 0)], where="first", progress=False)
    assert_pristine(organism, docs, baseline)


# ---------------------------------------------------------------- SmolLM2


@pytest.mark.slow
@pytest.mark.smollm2
def test_smollm2_has_an_induction_head_whose_lesion_beats_random_heads(smol):
    stim = induction(smol, n_seqs=4, half_len=20, seed=0)
    start = time.perf_counter()
    with torch.no_grad():
        before = smol(stim.ids)
    scores = localize_heads(smol, stim, progress=False)
    assert len(scores.df) == 30 * 9  # grouped-query attention still has 9 query heads per layer
    top = scores.top(3)
    assert (top["induction"] > 5 * top["induction_control"]).all()
    r = confirm_by_lesion(smol, stim, top, n_controls=30, progress=False)
    elapsed = time.perf_counter() - start
    found = r.df[r.df["harm"] > r.df["harm_control_p95"]]
    print(f"\nSmolLM2 induction heads ({elapsed:.0f} s):\n"
          f"{top[['induction', 'induction_control']].join(r.df[['delta_loss', 'harm_control_p95', 'p']]).to_string()}")
    assert len(found) >= 1
    assert_pristine(smol, stim, before)
