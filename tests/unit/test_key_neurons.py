"""Key-neuron scoring (seed 002) on the organism grammar-2l, whose grammar and tags are known.

The attributions are checked against runs that share none of the scoring machinery: the
organism re-run with one layer zeroed at one position (Integrated Gradients' completeness), and
plain autograd one prediction at a time (gradient x activation).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import llmscope
from llmscope.analysis.key_neurons import attributions, check_separation, key_neurons
from llmscope.behaviour import loss, next_token_loss
from llmscope.engine import cache, passes, routes
from llmscope.errors import AnalysisError, ColumnError, SiteError
from llmscope.interventions import intervene, lesion
from llmscope.stimuli import Stimuli, grammar

kn = importlib.import_module("llmscope.analysis.key_neurons")  # the module (the package's attribute is the function)


@pytest.fixture(scope="module")
def docs(organism):
    return grammar(organism, n_docs=4, seed=0)


@pytest.fixture(scope="module")
def one_doc(organism):
    return grammar(organism, n_docs=1, seed=1)


@pytest.fixture(scope="module")
def keys(organism, docs):
    return key_neurons(organism, docs, method="grad_x_act", k=10, progress=False)


@pytest.fixture(scope="module")
def baseline(organism, docs):
    with torch.no_grad():
        return organism(docs.ids)


def assert_pristine(model, stim, logits):
    with torch.no_grad():
        assert torch.equal(model(stim.ids), logits), "a hook was left on the model"
    assert all(p.requires_grad for p in model.parameters()), "weights were left frozen"


def zeroed_change(model, stim, site, rows):
    """log p(actual) minus the same with ``site`` zeroed at the context position, one plain run per sample."""
    hook = llmscope.site(model, site).hook
    out = []
    for seq, pos in rows:
        ids = stim.ids[seq: seq + 1, : pos + 1]

        def zero(act, hook, p=pos - 1):
            act = act.clone()
            act[:, p] = 0
            return act

        with torch.no_grad():
            actual = -next_token_loss(model(ids), ids)[0, -1]
            with model.hooks(fwd_hooks=[(hook, zero)]):
                out.append(float(actual + next_token_loss(model(ids), ids)[0, -1]))
    return np.array(out)


# ---------------------------------------------------------------- attributions


@pytest.mark.parametrize("site, steps", [("mlp.1", 16), ("mlp.0", 64)])
def test_ig_is_complete_per_sample(organism, one_doc, site, steps):
    res = attributions(organism, one_doc, site, "ig", steps=steps, progress=False)
    some = res.df.sample(30, random_state=0)
    truth = zeroed_change(organism, one_doc, site, zip(some["seq"], some["pos"]))
    assert np.abs(truth).sum() > 1.0, "zeroing the layer should change the predictions"
    np.testing.assert_allclose(some["change"], truth, atol=1e-4)  # the separated pass re-runs the downstream exactly
    assert np.abs(some["total"] - truth).sum() / np.abs(truth).sum() < 0.05
    assert res.meta["completeness_error"] < 0.05 and list(res.meta["completeness_by_site"]) == [site]


def test_grad_x_act_is_each_predictions_own_gradient(organism, one_doc):
    stim = Stimuli(one_doc.ids[:, :24], [24], one_doc.tokens.iloc[:24].copy(), name="prefix")
    res = attributions(organism, stim, "mlp.0", "grad_x_act", progress=False)
    hook = llmscope.site(organism, "mlp.0").hook
    held = {}

    def hold(act, hook):
        held["act"] = act
        return act

    with organism.hooks(fwd_hooks=[(hook, hold)]):
        logp = -next_token_loss(organism(stim.ids), stim.ids)[0]
    values = res.data["score"].values
    for row, (_, sample) in enumerate(res.df.iterrows()):
        grad, = torch.autograd.grad(logp[sample["pos"]], held["act"], retain_graph=True)
        expected = (held["act"] * grad)[0, sample["context_pos"]].detach().numpy()
        np.testing.assert_allclose(values[row], expected, rtol=1e-3, atol=1e-6)
    organism.zero_grad(set_to_none=True)


def test_short_passes_give_the_full_passes_scores_and_a_wrong_route_is_left_out(organism, one_doc, monkeypatch):
    """IG's passes start at the site's block and every pass unembeds only the samples' rows; with
    both route checks made to fail, the passes run whole and the scores stay the same."""
    def scores():
        return {m: attributions(organism, one_doc, "mlp.1", m, steps=8, progress=False) for m in ("ig", "grad_x_act")}

    short = scores()
    assert routes.resumes(organism, 1) and routes.readout(organism) is not None  # the short cuts were taken
    cache.forget(organism)  # worked out again below, and again after the test
    monkeypatch.setattr(passes, "readout", lambda model: model.unembed)  # leaves ln_final out: not the logits
    real_run_from = passes.run_from
    monkeypatch.setattr(passes, "run_from", lambda model, x, layer, *a: real_run_from(model, x.flip(-1) if layer else x,
                                                                                     layer, *a))  # a wrong resumption
    with pytest.warns(UserWarning, match="does not reproduce"):
        full = scores()
    assert not routes.resumes(organism, 1) and routes.readout(organism) is None
    monkeypatch.undo()
    cache.forget(organism)
    for m in full:
        np.testing.assert_allclose(full[m].data["score"].values, short[m].data["score"].values, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(full["ig"].df["change"], short["ig"].df["change"], atol=1e-5)


def test_separation_is_checked_and_a_mismatch_refused(organism, tiny, docs, baseline, monkeypatch):
    cache.forget(tiny)
    assert set(check_separation(tiny)) == {0, 1}  # a random GPT-2 passes the probe too
    assert "scales" in cache.memo(tiny, "separation")
    cache.forget(organism)
    monkeypatch.setattr(kn, "_scale", lambda *args: 0.0)  # a wrong score correction must be caught
    with pytest.raises(AnalysisError, match="does not reproduce one-position runs"):
        key_neurons(organism, docs, method="grad_x_act", progress=False)
    assert "scales" not in cache.memo(organism, "separation")  # a failed check is not remembered
    assert_pristine(organism, docs, baseline)


# ---------------------------------------------------------------- key neurons


def test_every_sample_keeps_top_frac_of_every_layer(keys):
    n_top = keys.meta["n_top"]
    assert n_top == int(np.ceil(0.05 * 512))
    counts = keys.data["count"]
    for site in keys.meta["sites"]:
        per_class = counts[counts["site"] == site].sum("unit")
        assert (per_class.values == keys.n_samples.values * n_top).all()
    assert keys.n_samples.sum() == keys.meta["n_samples"]


def test_samples_leave_bos_out_and_take_the_asked_tokens_label(organism, docs, keys):
    t = docs.tokens
    real = ~t["is_bos"].to_numpy()
    sample = (t["pos"].to_numpy() >= 1) & real & np.roll(real, 1)
    assert keys.meta["n_samples"] == sample.sum()
    assert keys.n_samples.to_dict() == t.loc[sample, "pos_tag"].value_counts().to_dict()
    current = key_neurons(organism, docs, method="activation", label_of="current", k=5, progress=False)
    context = np.flatnonzero(sample) - 1
    assert current.n_samples.to_dict() == t["pos_tag"].iloc[context].value_counts().to_dict()
    assert "BOS" not in keys.meta["classes"] and "BOS" not in current.meta["classes"]


def test_the_table_has_one_row_per_neuron_and_its_key_neurons_are_specific_beyond_the_control(keys):
    df, d = keys.df, keys.data
    assert len(df) == 2 * 512 and df.index.is_unique and list(df.index.names) == ["site", "unit"]
    classes = keys.meta["classes"]
    n = keys.n_samples.to_numpy()
    counts = d["count"].values
    frequency = counts / n
    specificity = frequency - (counts.sum(1, keepdims=True) - counts) / (n.sum() - n)
    best = specificity.argmax(1)
    assert (df["preferred"].to_numpy() == np.asarray(classes)[best]).all()
    np.testing.assert_allclose(df["specificity"], specificity.max(1))
    for site in keys.meta["sites"]:  # ranks 1..d_mlp within each class and site, by count first
        part = d["rank"].values[d["site"].values == site]
        assert (np.sort(part, axis=0) == np.arange(1, 513)[:, None]).all()
        first = part.argmin(0)
        assert (counts[d["site"].values == site][first, range(len(classes))] ==
                counts[d["site"].values == site].max(0)).all()
    for c in classes:  # key_for lists the classes a neuron is among the k most recurrent of, in its site
        assert (df["key_for"].str.split(", ").map(lambda hit: c in hit).to_numpy() ==
                (d["rank"].sel({"class": c}).values <= keys.meta["k"])).all()
    key = df[df["key_for"] != ""]
    by_site = key.groupby(level="site")[["specificity", "specificity_control"]].mean()
    assert (by_site["specificity"] > 2 * by_site["specificity_control"]).all()


def test_key_neurons_of_a_class_pass_to_lesion(organism, docs, keys, baseline):
    nouns = keys.units("NOUN", site="mlp.1")
    assert list(nouns.index.names) == ["site", "unit"] and len(nouns) == 10
    assert set(nouns.index.get_level_values("site")) == {"mlp.1"} and nouns["rank"].tolist() == list(range(1, 11))
    ranks = keys.data["rank"].sel({"class": "NOUN"})
    assert sorted(ranks.values[(ranks["site"] == "mlp.1").values].argsort()[:10]) == sorted(nouns.index.get_level_values(1))
    rows = docs.tokens["pos"].to_numpy() > 0
    nouns_rows = rows & (docs.tokens["pos_tag"] == "NOUN").to_numpy()
    with torch.no_grad():
        intact = loss(organism(docs.ids), docs)
        with intervene(organism, lesion(nouns)):
            hit = loss(organism(docs.ids), docs)
    assert np.nanmean(hit[nouns_rows]) > np.nanmean(intact[nouns_rows])
    assert_pristine(organism, docs, baseline)


def test_units_over_all_layers_top_and_plot(keys):
    both = keys.units("VERB", k=30)
    assert len(both) == 30 and (np.diff(both["count"].to_numpy()) <= 0).all()
    assert set(both.index.get_level_values("site")) <= {"mlp.0", "mlp.1"}
    control = keys.units("VERB", site="mlp.1", control=True)
    assert control["specificity"].mean() < keys.units("VERB", site="mlp.1")["specificity"].mean()
    with pytest.warns(FutureWarning, match="shuffled"):
        assert keys.units("VERB", site="mlp.1", shuffled=True).equals(control)
    top = keys.top(5, where="preferred == 'DET' and site == 'mlp.0'")
    assert top["preferred"].eq("DET").all() and (np.diff(top["specificity"].to_numpy()) <= 0).all()
    assert set(top.index.get_level_values("site")) == {"mlp.0"}
    with pytest.raises(AnalysisError, match="not a value of 'pos_tag'"):
        keys.units("BOS")
    with pytest.raises(SiteError, match="was not scored"):
        keys.units("NOUN", site="mlp.7")
    fig = keys.plot()
    assert fig.data[0].type == "heatmap" and list(fig.data[0].x) == keys.meta["sites"]
    z = np.asarray(fig.data[0].z, float)
    nouns = keys.units("NOUN", site="mlp.1")
    assert z[keys.meta["classes"].index("NOUN"), 1] == pytest.approx(nouns["specificity"].mean())


def test_old_names_still_work_with_a_warning(organism, one_doc):
    with pytest.warns(FutureWarning, match="sites"):
        old = key_neurons(organism, one_doc, method="activation", sites=["mlp.1"], k=3, progress=False)
    assert old.meta["sites"] == ["mlp.1"]


# ---------------------------------------------------------------- bad input, model left pristine


def test_bad_input_raises_before_any_work(organism, docs, baseline, monkeypatch):
    monkeypatch.setattr(kn, "_run", lambda *a, **k: pytest.fail("work started before the arguments were checked"))
    one_class = Stimuli(docs.ids, docs.lengths, docs.tokens.assign(same="x"), name="one class")
    cases = [
        (dict(method="lrp"), AnalysisError, "unknown method 'lrp'"),
        (dict(top_frac=0.0), AnalysisError, "top_frac"),
        (dict(top_frac=1.5), AnalysisError, "top_frac"),
        (dict(k=0), AnalysisError, "k must be an integer >= 1"),
        (dict(k=513), AnalysisError, r"k must be an integer in 1\.\.512"),
        (dict(steps=0), AnalysisError, "steps"),
        (dict(label_of="previous"), AnalysisError, "label_of"),
        (dict(label="tag"), ColumnError, "no label column 'tag'"),
        (dict(units=["attn.0"]), SiteError, "MLP neurons"),
        (dict(units=["mlp.5"]), SiteError, "out of range"),
        (dict(units=("mlp.0", [1, 2])), SiteError, "whole MLP sites"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            key_neurons(organism, docs, **kwargs, progress=False)
    with pytest.raises(AnalysisError, match="1 category"):
        key_neurons(organism, one_class, label="same", progress=False)
    with pytest.raises(SiteError, match="MLP neurons"):
        attributions(organism, docs, "resid.1", progress=False)
    assert_pristine(organism, docs, baseline)


def test_model_is_pristine_after_an_error_inside_a_pass(organism, docs, baseline, monkeypatch):
    real = kn.separated

    def failing(model, layers, scales, clean=None):
        def boom(act, hook):
            raise RuntimeError("inside the pass")
        return real(model, layers, scales, clean) + [("blocks.1.attn.hook_z", boom)]

    monkeypatch.setattr(kn, "separated", failing)
    for method in ("ig", "grad_x_act"):
        with pytest.raises(RuntimeError, match="inside the pass"):
            key_neurons(organism, docs, method=method, steps=2, progress=False)
        assert_pristine(organism, docs, baseline)
