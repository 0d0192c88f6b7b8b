"""Population geometry on grammar-2l: PCA against numpy's SVD, RDMs against numpy's corrcoef, RSA
against scipy's spearmanr, CKA's invariances and its Gram-matrix form, each control, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

import llmscope
from llmscope.analysis import responses
from llmscope.stimuli import trials
from llmscope.analysis.geometry import CKAResult, PCAResult, RDMResult, RSAResult, cka, linear_cka, pca, rdm, rsa
from llmscope.errors import AnalysisError, ColumnError, SiteError
from tests.unit.renames import assert_renamed

SITES = ["mlp.0", "mlp.1", "attn.0", "attn.1"]


@pytest.fixture(scope="module")
def rec(organism):
    stim = llmscope.stimuli.grammar(organism, n_docs=12, seed=1)
    return llmscope.record(organism, stim, SITES, dtype="float32", progress=False)


@pytest.fixture(scope="module")
def X0(rec):
    """mlp.0's responses at the analysed rows (BOS out)."""
    return responses.scalar(rec, "mlp.0")[trials.rows(rec.tokens)]


# ---------------------------------------------------------------- PCA


def test_pca_is_the_svd_of_the_centred_responses(rec):
    part = rec.select("seq < 4")  # a small SVD for the reference
    X0 = responses.scalar(part, "mlp.0")[trials.rows(part.tokens)]
    p = pca(part, "mlp.0", "pos_tag", n_components=4)
    assert isinstance(p, PCAResult) and len(p.df) == len(X0)
    assert p.df.columns.tolist() == ["seq", "pos", "text", "pos_tag", "PC1", "PC2", "PC3", "PC4"]
    assert not p.df.text.eq("<bos>").any()  # BOS rows out
    Xc = X0.astype(np.float64) - X0.mean(0, dtype=np.float64)
    u, s, vt = np.linalg.svd(Xc, full_matrices=False)
    ev = s**2 / np.square(s).sum()
    np.testing.assert_allclose(p.meta["explained_variance"], ev[:4], rtol=1e-4)
    for i in range(4):  # each component equals the SVD's up to its sign (sklearn's solver is randomized here)
        coords, exact = np.abs(p.df[f"PC{i + 1}"].to_numpy()), np.abs(u[:, i] * s[i])
        np.testing.assert_allclose(coords, exact, atol=1e-3 * exact.max())
        np.testing.assert_allclose(np.abs(p.components[f"PC{i + 1}"]), np.abs(vt[i]), atol=1e-3)
    assert p.data["components"].dims == ("unit", "component") and p.data.unit.values[3] == "mlp.0:3"
    np.testing.assert_array_equal(p.data["components"].sel(component="PC2").to_numpy(), p.components.PC2)
    np.testing.assert_allclose(p.meta["participation_ratio"], (s**2).sum() ** 2 / (s**4).sum(),
                               rtol=1e-6)


def test_pca_control_breaks_unit_correlations(rec):
    p = pca(rec, "mlp.0", n_components=3)
    real, shuffled = p.meta["explained_variance"], p.meta["explained_variance_control"]
    assert real[0] > 3 * shuffled[0]  # a population with structure, against its own marginals
    assert p.meta["participation_ratio"] < p.meta["participation_ratio_control"] / 3
    assert p.meta["seed"] == 0 and "permuted" in p.meta["control"]
    again = pca(rec, "mlp.0", n_components=3, seed=1)
    np.testing.assert_allclose(again.meta["explained_variance"], real, rtol=1e-3)  # the fit does not hang on the seed
    assert again.meta["explained_variance_control"] != shuffled


def test_pca_components_are_a_unit_table(organism, rec):
    p = pca(rec, [("mlp.1", [5, 1, 9]), ("attn.1", None)], n_components=2)
    assert p.components.index.tolist() == [("mlp.1", 1), ("mlp.1", 5), ("mlp.1", 9)] + [("attn.1", h) for h in range(4)]
    top = p.components.PC1.abs().nlargest(2)
    assert llmscope.sites.unit_index(organism, top).tolist() == top.index.tolist()  # passes to lesion/gain as is


def test_pca_plot_draws_each_sequence_and_colours_by_label(rec):
    p = pca(rec, "mlp.0", "pos_tag", n_components=2)
    fig = p.plot(n_seqs=2)
    lines = [t for t in fig.data if t.mode == "lines"]
    markers = [t for t in fig.data if t.mode == "markers"]
    shown = p.df[p.df.seq.isin(p.df.seq.unique()[:2])]
    assert len(lines) == 2 and sum(len(t.x) for t in markers) == len(shown)
    assert sorted(t.name for t in markers) == sorted(shown.pos_tag.unique())
    for trace in markers:  # each category's tokens at their coordinates
        part = shown[shown.pos_tag == trace.name]
        np.testing.assert_array_equal(trace.x, part.PC1)
        np.testing.assert_array_equal(trace.y, part.PC2)
    numeric = pca(rec, "mlp.0", "sent_pos", n_components=2)
    shown = numeric.df[numeric.df.seq.isin(numeric.df.seq.unique()[:4])]
    np.testing.assert_array_equal(numeric.plot().data[-1].marker.color, shown.sent_pos)  # numeric: a colour scale
    with pytest.raises(AnalysisError, match="PC3"):
        p.plot(columns=("PC1", "PC3"))
    with pytest.warns(FutureWarning, match=r"plot\(columns=\(x, y\)\)"):
        old = p.plot(y="PC1", x="PC2", n_seqs=2)
    np.testing.assert_array_equal(old.data[-1].x, p.plot(columns=("PC2", "PC1"), n_seqs=2).data[-1].x)


def test_pca_bad_input(rec):
    with pytest.raises(AnalysisError, match=r"n_components=5 .* 4 units"):
        pca(rec, "attn.0", n_components=5)  # four heads: at most 4 components
    few = rec.select("seq == 0 and pos <= 3")  # BOS and 3 tokens
    with pytest.raises(AnalysisError, match="3 tokens"):
        pca(few, "mlp.0", n_components=4)
    with pytest.raises(ColumnError, match="no label column 'tag'"):
        pca(rec, "mlp.0", "tag")
    with pytest.raises(SiteError):
        pca(rec, ("mlp.0", [512]))
    with pytest.raises(AnalysisError, match="n_components"):
        pca(rec, "mlp.0", n_components=0)
    with pytest.raises(AnalysisError, match="reads a Recording"):
        pca(responses.scalar(rec, "mlp.0"), "mlp.0")


# ---------------------------------------------------------------- RDM and RSA


def test_rdm_is_the_correlation_distance_of_category_means(rec, X0):
    r = rdm(rec, ["mlp.0", "attn.1"], "pos_tag")
    assert isinstance(r, RDMResult)
    tags = rec.tokens.pos_tag[trials.rows(rec.tokens)].to_numpy()
    cats = sorted(set(tags))
    assert r.meta["categories"] == cats and "BOS" not in cats
    means = np.stack([X0[tags == c].mean(0, dtype=np.float64) for c in cats])
    np.testing.assert_allclose(r.data.rdm.sel(site="mlp.0").to_numpy(), 1 - np.corrcoef(means), atol=1e-9)
    m = r.data.rdm.sel(site="attn.1").to_pandas()
    assert m.index.tolist() == m.columns.tolist() == cats and r.data.rdm.dims == ("site", "pos_tag_a", "pos_tag_b")
    np.testing.assert_allclose(m, m.T)
    assert np.allclose(np.diag(m), 0) and r.df.index.name == "site" and r.df.index.tolist() == ["mlp.0", "attn.1"]
    assert r.meta["counts"] == pd.Series(tags).value_counts().reindex(cats).to_dict()
    upper = np.triu_indices(len(cats), 1)
    assert r.df.loc["attn.1", "mean_dissimilarity"] == pytest.approx(m.to_numpy()[upper].mean())


def test_rdm_of_some_units_reads_only_those(rec, X0):
    r = rdm(rec, ("mlp.0", [5, 1, 9, 30]), "pos_tag")
    tags = rec.tokens.pos_tag[trials.rows(rec.tokens)].to_numpy()
    means = np.stack([X0[tags == c][:, [1, 5, 9, 30]].mean(0, dtype=np.float64) for c in r.meta["categories"]])
    np.testing.assert_allclose(r.data.rdm.sel(site="mlp.0").to_numpy(), 1 - np.corrcoef(means), atol=1e-6)  # float32 means
    assert r.meta["units"] == {"mlp.0": [1, 5, 9, 30]}


def test_rdm_control_shuffled_labels_blur_the_categories(rec):
    r = rdm(rec, ["mlp.0", "mlp.1"], "pos_tag")
    for site in ("mlp.0", "mlp.1"):  # POS is decoded from mlp.0 at 0.998: real categories sit far apart
        assert r.df.loc[site, "mean_dissimilarity"] > 2 * r.df.loc[site, "mean_dissimilarity_control"]
    assert r.data.rdm_control.shape == r.data.rdm.shape and not np.allclose(r.data.rdm_control, r.data.rdm)
    fig = r.plot()
    for trace, site in zip(fig.data, ("mlp.0", "mlp.1")):  # a heatmap per site: its RDM
        np.testing.assert_array_equal(trace.z, r.data.rdm.sel(site=site).to_numpy())
        assert list(trace.x) == list(trace.y) == r.meta["categories"]


def test_rdm_bad_input(rec):
    with pytest.raises(AnalysisError, match="1 category"):
        rdm(rec.select("pos_tag == 'NOUN'"), "mlp.0", "pos_tag")
    with pytest.raises(ColumnError):
        rdm(rec, "mlp.0", "tag")
    with pytest.raises(SiteError, match="resid.0"):
        rdm(rec, "resid.0")


def test_rsa_is_spearman_of_upper_triangles_with_a_permutation_null(rec):
    r = rdm(rec, ["mlp.0", "mlp.1", "attn.1"], "pos_tag")
    res = rsa(r, n_controls=500, seed=3)
    assert isinstance(res, RSAResult) and len(res.df) == 9 and res.meta["n_controls"] == 500
    k = len(r.meta["categories"])
    iu = np.triu_indices(k, 1)
    for row in res.df.itertuples():
        expected = spearmanr(r.data.rdm.sel(site=row.site_a).to_numpy()[iu],
                             r.data.rdm.sel(site=row.site_b).to_numpy()[iu]).statistic
        assert row.rho == pytest.approx(expected, abs=1e-12)
        assert 1 / 501 <= row.p <= 1 and abs(row.rho_control) < 0.15  # a null centred near 0
        assert row.rho_control < row.rho_control_95
    diag = res.df[res.df.site_a == res.df.site_b]
    assert np.allclose(diag.rho, 1) and (diag.p < 0.01).all()  # an RDM matches itself beyond its null
    z = res.plot().data[0]
    sites = ["mlp.0", "mlp.1", "attn.1"]
    assert list(z.x) == list(z.y) == sites
    np.testing.assert_array_equal(z.z, res.df.pivot(index="site_a", columns="site_b", values="rho").loc[sites, sites])


def test_rsa_across_models_uses_shared_categories(rec, tiny):
    stim = llmscope.stimuli.induction(tiny, n_seqs=6, half_len=8, seed=0)
    tags = np.array(["NOUN", "VERB", "DET", "ADJ", "AUX"])  # a different model, tokenizer and tag set
    stim.tokens["pos_tag"] = tags[np.random.default_rng(0).integers(0, len(tags), len(stim.tokens))]
    other = llmscope.record(tiny, stim, ["mlp.0", "mlp.1"], dtype="float32", progress=False)
    res = rsa(rdm(rec, ["mlp.0", "mlp.1"]), rdm(other, ["mlp.0", "mlp.1"]), n_controls=200)
    assert res.meta["categories"] == ["ADJ", "DET", "NOUN", "VERB"]
    assert res.meta["dropped"] == {"a": ["ADP", "ADV", "CCONJ", "PRON", "PUNCT"], "b": ["AUX"]}
    assert res.meta["model_a"] == "grammar-2l" and res.meta["model_b"] != "grammar-2l" and res.meta["n_pairs"] == 6
    assert res.df.rho.between(-1, 1).all() and len(res.df) == 4


def test_rsa_bad_input(rec):
    r = rdm(rec, "mlp.0", "pos_tag")
    with pytest.raises(AnalysisError, match="same label"):
        rsa(r, rdm(rec, "mlp.0", "is_repeat"))
    with pytest.raises(AnalysisError, match="at least 3 categories"):
        rsa(rdm(rec, "mlp.0", "is_repeat"))
    with pytest.raises(AnalysisError, match="results of rdm"):
        rsa(r, r.df)
    with pytest.raises(AnalysisError, match="n_controls"):
        rsa(r, n_controls=0)


# ---------------------------------------------------------------- CKA


def _gram_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA in its kernel form, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)): an independent reference."""
    n = len(X)
    H = np.eye(n) - 1 / n
    K, L = H @ (X @ X.T) @ H, H @ (Y @ Y.T) @ H
    return float((K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum()))


def test_linear_cka_invariances_and_kernel_form(rec, X0):
    X = X0[:300].astype(np.float64)
    Y = responses.scalar(rec, "mlp.1")[trials.rows(rec.tokens)][:300].astype(np.float64)
    q, r = np.linalg.qr(np.random.default_rng(0).normal(size=(512, 512)))
    assert linear_cka(X, X) == pytest.approx(1, abs=1e-12)
    assert linear_cka(X, 2.5 * X @ q) == pytest.approx(1, abs=1e-9)  # rotation and isotropic scaling
    value = linear_cka(X, Y)
    assert linear_cka(X @ q, 0.1 * Y) == pytest.approx(value, rel=1e-9)
    assert value == pytest.approx(_gram_cka(X, Y), rel=1e-9)
    heads = [responses.scalar(rec, s)[trials.rows(rec.tokens)][:300].astype(np.float64) for s in ("attn.0", "attn.1")]
    assert linear_cka(*heads) == pytest.approx(_gram_cka(*heads), rel=1e-9)  # 4 units, 300 tokens: feature form
    stretched = X * np.where(np.arange(512) < 8, 20.0, 1.0)  # not isotropic: CKA changes
    assert linear_cka(X, stretched) < 0.99
    with pytest.raises(AnalysisError, match="same number"):
        linear_cka(X, Y[:10])
    with pytest.raises(AnalysisError, match="do not vary"):
        linear_cka(X, np.ones((300, 3)))


def test_cka_table_and_shuffled_control(rec):
    c = cka(rec, SITES, progress=False)
    assert isinstance(c, CKAResult) and len(c.df) == 16 and c.meta["n_tokens"] == int(trials.rows(rec.tokens).sum())
    table = c.df.set_index(["site_a", "site_b"])
    for s in SITES:
        assert table.loc[(s, s), "cka"] == pytest.approx(1, abs=1e-9)
    np.testing.assert_allclose(table.loc[("mlp.0", "mlp.1"), "cka"], table.loc[("mlp.1", "mlp.0"), "cka"])
    assert (table.cka > table.cka_control_max).all()  # every pairing beats its shuffled rows
    assert table.cka_control.max() < 0.1
    z = c.plot().data[0]
    assert list(z.x) == list(z.y) == SITES
    np.testing.assert_array_equal(z.z, c.df.pivot(index="site_a", columns="site_b", values="cka").loc[SITES, SITES])
    few = rec.select("seq < 2")  # fewer tokens than units: the Gram form
    keep = trials.rows(few.tokens)
    small = cka(few, ["mlp.0", "attn.1"], other_units=["mlp.1"], progress=False).df
    for row in small.itertuples():
        X, Y = (responses.scalar(few, s)[keep] for s in (row.site_a, row.site_b))
        assert len(X) < 512 and row.cka == pytest.approx(linear_cka(X, Y), rel=1e-9)


def test_cka_across_recordings_of_the_same_tokens(organism, rec):
    other = llmscope.record(organism, rec.stimuli, ["mlp.1"], dtype="float32", progress=False)
    across = cka(rec, "mlp.0", other, "mlp.1", progress=False).df.cka.item()
    within = cka(rec, "mlp.0", other_units="mlp.1", progress=False).df.cka.item()
    assert across == pytest.approx(within, rel=1e-12)


def test_cka_of_some_units_of_a_site_against_all_of_them(rec):
    keep = trials.rows(rec.tokens)
    c = cka(rec, [("mlp.0", list(range(40))), "mlp.1"], other_units=["mlp.0", ("mlp.1", [1, 2, 3])], n_controls=2,
            progress=False)
    assert c.meta["units"] == {"mlp.0": list(range(40)), "mlp.1": None}
    for row in c.df.itertuples():  # each population is its own units, even where a site's name repeats
        X = responses.scalar(rec, row.site_a, list(range(40)) if row.site_a == "mlp.0" else None)[keep]
        Y = responses.scalar(rec, row.site_b, [1, 2, 3] if row.site_b == "mlp.1" else None)[keep]
        assert row.cka == pytest.approx(linear_cka(X, Y), rel=1e-9)
    assert c.df.cka.iloc[0] < 0.999  # 40 neurons of mlp.0 against all 512 of them


def test_cka_refuses_recordings_of_different_tokens(organism, rec):
    a = llmscope.record(organism, llmscope.stimuli.induction(organism, 4, 6, seed=0), ["mlp.0"], dtype="float32",
                        progress=False)
    b = llmscope.record(organism, llmscope.stimuli.induction(organism, 4, 6, seed=1), ["mlp.0"], dtype="float32",
                        progress=False)
    with pytest.raises(AnalysisError, match=r"differ at \d+ rows"):
        cka(a, "mlp.0", b, progress=False)
    with pytest.raises(AnalysisError, match="holds"):
        cka(rec, "mlp.0", a, progress=False)
    with pytest.raises(SiteError):
        cka(a, "mlp.0", b, "mlp.1", progress=False)
    with pytest.raises(AnalysisError, match="n_controls"):
        cka(rec, "mlp.0", n_controls=0)


# ---------------------------------------------------------------- the old names, for one release


@pytest.mark.parametrize("old, new", [
    (lambda r: rdm(r, sites=["mlp.0", "mlp.1"]), lambda r: rdm(r, ["mlp.0", "mlp.1"])),
    (lambda r: rsa(a=rdm(r, ["mlp.0", "mlp.1"]), n_perm=50), lambda r: rsa(rdm(r, ["mlp.0", "mlp.1"]), n_controls=50)),
    (lambda r: cka(r, sites="mlp.0", other_sites=["mlp.1"], n_shuffle=2, progress=False),
     lambda r: cka(r, "mlp.0", other_units=["mlp.1"], n_controls=2, progress=False)),
])
def test_old_names_warn_and_give_the_same_result(rec, old, new):
    assert_renamed(lambda: old(rec), lambda: new(rec))
