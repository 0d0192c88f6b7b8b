"""Top examples: the k strongest responses of one unit in context, with escaped HTML."""

from __future__ import annotations

import html
import json
import shutil

import numpy as np
import pytest

import llmscope
from llmscope.analysis.examples import ExamplesResult, top_examples
from llmscope.analysis.responses import scalar
from llmscope.stimuli.trials import rows
from llmscope.analysis.tuning import tuning
from llmscope.errors import AnalysisError, SiteError
from llmscope.recording import IncompleteRecordingWarning, Recording
from llmscope.stimuli import from_texts, grammar
from tests.unit.renames import assert_renamed

TEXTS = ["w1 w2 w3 w4 w5 w6", "w7 w8", "w9 w10 w11 w12 w13 w14 w15 w16 w17 w18", "w19 w20 w21"]
EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def stim(tiny):
    stim = from_texts(tiny, TEXTS, tag=False)
    stim.tokens["text"] = stim.tokens["text"].where(stim.tokens.token != 12, EVIL)  # w9, as a hostile vocabulary might
    stim.tokens["kind"] = np.where(stim.tokens.seq.to_numpy() % 2, "odd", "even")
    return stim


@pytest.fixture(scope="module")
def rec(tiny, stim) -> Recording:
    return llmscope.record(tiny, stim, ["mlp.0", "attn.1"], dtype="float32", progress=False)


def test_the_k_strongest_responses_in_context(rec):
    ex = top_examples(rec, "mlp.0", 5, k=4, context=2)
    df, t = ex.df, rec.tokens
    x = scalar(rec, "mlp.0", [5])[:, 0]
    keep = rows(t)
    best = np.flatnonzero(keep)[np.argsort(-x[keep], kind="stable")[:4]]
    assert df["rank"].tolist() == [1, 2, 3, 4]
    assert df.activation.tolist() == x[best].tolist() and df.activation.is_monotonic_decreasing
    assert df.seq.tolist() == t.seq[best].tolist() and df.pos.tolist() == t.pos[best].tolist()
    assert df.text.tolist() == t.text[best].tolist() and df.token.tolist() == t.token[best].tolist()
    assert df.kind.tolist() == t.kind[best].tolist()  # every label of the token rides along
    for r, row in zip(best, df.itertuples()):
        same = t[(t.seq == t.seq[r])]
        before = same[(same.pos < t.pos[r]) & (same.pos >= t.pos[r] - 2)]
        after = same[(same.pos > t.pos[r]) & (same.pos <= t.pos[r] + 2)]
        assert row.left == " ".join(before.text) and row.right == " ".join(after.text)  # word-level: joined by spaces
    assert not df.text.isin(t.text[~keep]).any()  # no BOS row among the examples
    assert ex.meta["site"] == "mlp.0" and ex.meta["unit"] == 5 and ex.meta["joiner"] == " "
    assert isinstance(ex, ExamplesResult) and ex.kind == "top_examples" and not ex.has_units


def test_bos_rows_only_when_asked(rec):
    on = top_examples(rec, "attn.1", 0, k=len(rec), include_bos=True)
    off = top_examples(rec, "attn.1", 0, k=len(rec))
    assert len(on.df) == len(rec) and len(off.df) == rows(rec.tokens).sum() < len(rec)
    assert np.allclose(on.df.activation.max(), scalar(rec, "attn.1", [0]).max())


def test_unit_given_as_pair_or_one_row_table(rec):
    a = top_examples(rec, "attn.1", 2, k=3).df
    assert a.equals(top_examples(rec, ("attn.1", 2), k=3).df)
    res = tuning(rec, "attn.1", "kind", progress=False)
    one = res.df.loc[[("attn.1", 2)]]
    assert a.equals(top_examples(rec, one, k=3).df)
    assert a.equals(top_examples(rec, rec.site("attn.1"), 2, k=3).df)
    assert a.equals(top_examples(rec, "attn.1", indices=2, k=3).df)


def test_html_escapes_every_token_text(rec):
    ex = top_examples(rec, "mlp.0", 0, k=len(rec), context=3)  # every token: the hostile one is an example
    assert (ex.df.text == EVIL).sum() == 1 and ex.df.left.str.contains(EVIL, regex=False).any()
    for page in (ex.html(), ex._repr_html_()):
        assert "<img" not in page and "onerror=alert(1)&gt;" in page
        assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 3  # as an example and in others' contexts
        assert page.count("<mark>") == len(ex.df)
    fig = ex.plot()
    assert all("<img" not in str(v) for v in [*fig.data[0].y, *fig.data[0].hovertext])
    assert fig.layout.yaxis.type == "category"
    np.testing.assert_array_equal(fig.data[0].x, ex.df.activation)  # a bar per example, best first
    assert list(fig.data[0].y) == [f"{r}. {html.escape(t)}" for r, t in zip(ex.df["rank"], ex.df.text)]


def test_strongly_selective_units_fire_on_their_category(organism):
    """Units whose preferred category sits far above the rest (d' > 4: PUNCT, DET, ADP, ADJ
    detectors of the organism's mlp.0) have it as their top examples. (Weaker selectivity need
    not show there: the best NOUN unit by AUC, 0.84, peaks on rare "the" tokens.)"""
    rec = llmscope.record(organism, grammar(organism, n_docs=40, seed=3), ["mlp.0"], dtype="float32", progress=False)
    res = tuning(rec, "mlp.0", "pos_tag", progress=False)
    sharp = res.df[res.df.dprime > 4]
    assert len(sharp) >= 4 and sharp.preferred.nunique() >= 3
    for unit, row in sharp.iterrows():
        ex = top_examples(rec, unit, k=20)
        assert (ex.df.pos_tag == row.preferred).mean() >= 0.8, (unit, ex.df[["text", "pos_tag"]])


# ---------------------------------------------------------------- bad input


def test_unit_out_of_range(rec):
    with pytest.raises(SiteError, match=r"neuron \[64\] out of range for mlp.0: .*indices 0..63"):
        top_examples(rec, "mlp.0", 64)
    with pytest.raises(SiteError, match=r"neuron \[-1\] out of range"):
        top_examples(rec, "mlp.0", -1)
    with pytest.raises(SiteError, match="'mlp.7' was not recorded; this recording holds mlp.0, attn.1"):
        top_examples(rec, "mlp.7", 0)


def test_one_unit_only(rec):
    res = tuning(rec, "mlp.0", "kind", progress=False)
    with pytest.raises(SiteError, match="top_examples shows one unit"):
        top_examples(rec, res.top(2))
    with pytest.raises(SiteError, match="top_examples shows one unit"):
        top_examples(rec, "mlp.0")
    with pytest.raises(SiteError, match="top_examples shows one unit"):
        top_examples(rec, "mlp.0", [1, 2])


def test_a_unit_table_of_another_model(rec, organism):
    from llmscope.identity import fingerprint

    table = tuning(rec, "attn.1", "kind", progress=False).top(1)
    top_examples(rec, table)  # made on this recording's model: fine
    table.attrs["fingerprint"] = fingerprint(organism).to_dict()
    with pytest.raises(SiteError, match="these units were made for grammar-2l"):
        top_examples(rec, table)


@pytest.mark.parametrize("k", [0, -3, 2.5, "5"])
def test_k_must_be_at_least_one(rec, k):
    with pytest.raises(AnalysisError, match=f"k must be an integer >= 1, got {k!r}"):
        top_examples(rec, "mlp.0", 1, k=k)


def test_context_and_rows(rec):
    with pytest.raises(AnalysisError, match="context must be an integer >= 0, got -1"):
        top_examples(rec, "mlp.0", 1, context=-1)
    with pytest.raises(AnalysisError, match="no rows to search"):
        top_examples(rec.select(np.zeros(len(rec), dtype=bool)), "mlp.0", 1)
    with pytest.raises(AnalysisError, match="reads a Recording"):
        top_examples("rec.zarr", "mlp.0", 1)


def test_incomplete_recording_warns(tiny, stim, tmp_path):
    path = tmp_path / "r.zarr"
    llmscope.record(tiny, stim, ["mlp.0"], store=path, progress=False)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["done_seqs"] = 2
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.warns(IncompleteRecordingWarning):
        part = Recording.open(path)
    with pytest.warns(IncompleteRecordingWarning, match="top_examples: .*2 of 4 sequences"):
        ex = top_examples(part, "mlp.0", 3, k=50)
    assert ex.meta["complete"] is False and set(ex.df.seq) <= {0, 1} and len(ex.df) == rows(part.tokens).sum()
    shutil.rmtree(path)


@pytest.mark.parametrize("old", [lambda r: top_examples(r, site="mlp.0", unit=4, k=3),
                                 lambda r: top_examples(r, "mlp.0", unit=4, k=3)])
def test_old_names_warn_and_give_the_same_result(rec, old):
    assert_renamed(lambda: old(rec), lambda: top_examples(rec, ("mlp.0", 4), k=3))
