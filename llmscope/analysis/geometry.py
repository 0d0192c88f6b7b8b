"""Population geometry: PCA trajectories, representational dissimilarity (RDM, RSA) and linear CKA.

Three views of a site's population of units, each with its control beside it:

* :func:`pca` fits principal components to a population's responses over tokens and projects
  every token onto them: a trajectory per sequence. Control: the same PCA on the responses with
  each unit's column permuted independently across tokens, which keeps every unit's marginal
  distribution but breaks the correlations between units (shuffling whole token rows would
  change nothing: PCA ignores row order).
* :func:`rdm` averages a population's responses per category of a label (``pos_tag``...) and
  takes the correlation distance (1 - Pearson r, ``scipy.spatial.distance``) between the
  category means: an RDM over conditions, not tokens, so RDMs compare across layers and across
  models whose tokenizers differ (the organism and SmolLM2 share the UPOS tags). Control: the
  same RDM with the labels permuted across tokens. :func:`rsa` correlates RDMs by the Spearman
  correlation of their upper triangles (``scipy.stats``) over the categories they share, against
  a null that permutes the condition labels of one RDM.
* :func:`cka` is linear centred kernel alignment (Kornblith et al. 2019) between two populations'
  responses to the same tokens (one recording, or two recordings of the same tokens). It is 1
  for a site with itself and invariant to rotations and isotropic scaling of either population.
  Control: the rows of the second site shuffled, which keeps both populations and breaks the
  token pairing (CKA of unrelated populations is not 0 on few tokens: the control says how far
  from it).

scipy computes the RDMs and the rank correlations; rsatoolbox is not used (ARCHITECTURE.md says
why). Analyses read recordings and never run the model. A head of ``attn.L`` responds with the L2
norm of its ``hook_z`` (:mod:`~llmscope.analysis.responses`).

Example:
    >>> import llmscope
    >>> from llmscope import cka, pca, rdm, rsa
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> p = pca(rec, "mlp.0", "pos_tag", n_components=3)
    >>> p.df.columns.tolist()
    ['seq', 'pos', 'text', 'pos_tag', 'PC1', 'PC2', 'PC3']
    >>> p.meta["explained_variance"][0] > p.meta["explained_variance_control"][0]
    True
    >>> r = rsa(rdm(rec, ["mlp.0", "mlp.1"], "pos_tag"), n_controls=200)
    >>> r.df[["site_a", "site_b"]].values.tolist()[:2]
    [['mlp.0', 'mlp.0'], ['mlp.0', 'mlp.1']]
    >>> c = cka(rec, ["mlp.0", "mlp.1"], progress=False)
    >>> round(float(c.df.set_index(["site_a", "site_b"]).loc[("mlp.0", "mlp.0"), "cka"]), 6)
    1.0
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmscope.analysis import responses
from llmscope.checks import count, draws, flag
from llmscope.errors import AnalysisError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.result import Result, unit_dataset
from llmscope.sites import Site, UnitsLike
from llmscope.stimuli import trials
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go

MIN_RSA_CATEGORIES = 3  # an RDM over 3 conditions has 3 pairs: the fewest a rank correlation can use


def _kept(recording: Recording, include_bos: bool) -> np.ndarray:
    keep = trials.rows(recording.tokens, include_bos)
    if keep.sum() < 2:
        raise AnalysisError(f"the recording {recording.name!r} has {int(keep.sum())} rows to analyse; "
                            "geometry needs at least 2 tokens.")
    return keep


def _centred(X: np.ndarray) -> np.ndarray:
    """``X [n, d]`` as float64 with each column's mean taken out."""
    X = np.asarray(X, dtype=np.float64)
    return X - X.mean(0)


def _self_norm(Xc: np.ndarray) -> float:
    """``||Xc^T Xc||_F``, through the smaller of ``Xc^T Xc`` and ``Xc Xc^T`` (same nonzero spectrum)."""
    return float(np.linalg.norm(Xc.T @ Xc if Xc.shape[1] <= Xc.shape[0] else Xc @ Xc.T))


def _source(recording: Recording) -> str:
    """How a figure names a recording: its model and stimuli."""
    return f"{recording.model_name} on {recording.name}"


# ---------------------------------------------------------------- PCA


def _participation(X: np.ndarray) -> float:
    """Participation ratio ``(sum ev)^2 / sum ev^2`` of the covariance eigenvalues ``ev`` of
    ``X [n, d]``: the effective number of dimensions. It is ``trace(C)^2 / ||C||_F^2``, so no
    eigendecomposition is needed."""
    Xc = _centred(X)
    norm = _self_norm(Xc)
    return float(np.square(Xc).sum() ** 2 / norm**2) if norm else float("nan")


class PCAResult(Result):
    """What :func:`pca` returns.

    ``.df``: one row per analysed token (index: its row in the recording): ``seq``, ``pos``,
    ``text``, the label column (when one is given, under its own name), then ``PC1..PCn``, the
    token's coordinates (same units as the responses).

    ``.data``: ``components [unit, component]``, the loadings (unit-norm columns; ``component``
    labelled ``PC1..PCn``); :attr:`components` is the same as a unit table.

    ``.meta``: ``sites``, ``n_units``, ``n_components``, ``label``, ``explained_variance`` (the
    fraction of variance of each component, a list), ``explained_variance_control`` (the same
    for the control), ``participation_ratio`` and ``participation_ratio_control`` (the
    effective dimensionality, ``(sum ev)^2 / sum ev^2`` over the whole spectrum), ``control``,
    ``seed``, ``include_bos``, ``n_tokens``, ``n_seqs``, ``model``, ``fingerprint``, ``stimuli``,
    ``complete``, ``recorded_seqs``, ``stimuli_seqs``.

    ``.plot(columns=("PC1", "PC2"), n_seqs=4)``: the first ``n_seqs`` sequences as paths in the
    plane of two components, tokens coloured by the label.
    """

    kind = "pca"

    @property
    def components(self) -> pd.DataFrame:
        """The loadings as a unit table ``[units, PC1..PCn]`` indexed by ``(site, unit)``:
        ``components.PC1.abs().nlargest(8)`` passes to ``lesion``."""
        loadings = self.data["components"]
        index = pd.MultiIndex.from_arrays([loadings["site"].to_numpy(), loadings["index"].to_numpy()],
                                          names=["site", "unit"])
        return pd.DataFrame(loadings.to_numpy(), index=index, columns=loadings["component"].to_numpy().tolist())

    def plot(self, columns: tuple[str, str] = ("PC1", "PC2"), n_seqs: int = 4, **kwargs: Any) -> "go.Figure":
        """The first ``n_seqs`` sequences as paths in the plane of two components (``columns``,
        x then y), tokens coloured by the label. (``x=``/``y=`` are the old form of ``columns``.)"""
        import plotly.graph_objects as go

        columns = _old_axes(columns, kwargs)
        pcs = [c for c in self.df.columns if c.startswith("PC")]
        x, y = columns
        if x not in pcs or y not in pcs:
            raise AnalysisError.Unknown(f"columns are two components of this result, {pcs}; got {columns!r}.")
        df = self.df[self.df.seq.isin(self.df.seq.unique()[:count(n_seqs, "n_seqs")])]
        fig = go.Figure()
        for _, part in df.groupby("seq", sort=False):  # each sequence's path through the space, in token order
            fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="lines", line=dict(color="lightgrey", width=1),
                                     hoverinfo="skip", showlegend=False))
        text = df.text.map(lambda t: html.escape(str(t)))
        label = self.meta["label"]
        hover = "%{customdata}<extra></extra>"
        if label is None:
            fig.add_trace(go.Scatter(x=df[x], y=df[y], mode="markers", customdata=text, hovertemplate=hover,
                                     name="token"))
        elif pd.api.types.is_numeric_dtype(df[label]) and not pd.api.types.is_bool_dtype(df[label]):
            fig.add_trace(go.Scatter(x=df[x], y=df[y], mode="markers", customdata=text, hovertemplate=hover,
                                     marker=dict(color=df[label], colorscale="Viridis", showscale=True,
                                                 colorbar=dict(title=html.escape(label))), name=html.escape(label)))
        else:
            for value, part in df.groupby(df[label].astype(str), sort=True):
                fig.add_trace(go.Scatter(x=part[x], y=part[y], mode="markers", name=html.escape(value),
                                         customdata=text[part.index], hovertemplate=hover))
        ev = dict(zip(pcs, self.meta["explained_variance"]))
        units = ", ".join(self.meta["sites"])
        return fig.update_layout(
            title=f"PCA of {html.escape(units)}: {min(n_seqs, self.meta['n_seqs'])} sequences"
                  + (f", coloured by {html.escape(label)}" if label else ""),
            xaxis_title=f"{x} ({ev[x]:.1%} of variance)", yaxis_title=f"{y} ({ev[y]:.1%} of variance)",
            legend_title=html.escape(label or ""))


def _old_axes(columns: tuple[str, str], kwargs: dict[str, Any]) -> tuple[str, str]:
    """``columns`` from PCAResult.plot's old ``x=``/``y=`` (for one release, with a FutureWarning)."""
    import warnings

    unknown = set(kwargs) - {"x", "y"}
    if unknown:
        raise AnalysisError.Type(f"PCAResult.plot() takes columns= and n_seqs=; got {sorted(unknown)}.")
    if not kwargs:
        return columns
    warnings.warn("PCAResult.plot(x=..., y=...) is now plot(columns=(x, y)); x and y will be removed in the next "
                  "release.", FutureWarning, stacklevel=3)
    return kwargs.get("x", columns[0]), kwargs.get("y", columns[1])


def pca(recording: Recording, units: UnitsLike, label: str | None = None, n_components: int = 3, *,
        include_bos: bool = False, seed: int = 0) -> PCAResult:
    """Principal components of a population's responses over tokens, and every token's trajectory.

    The components are fitted (``sklearn.decomposition.PCA``, centred, not scaled) on the
    analysed rows and the same rows are projected onto them.

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: the population: a site (``"mlp.0"``: all its units), or any unit form
            (``("mlp.1", [3, 7])``, a unit table such as ``tuning(...).top(50)``).
        label: a trial-table column to carry in ``.df`` and colour the plot by (or None).
        n_components: components to keep, at most the number of units and of tokens.
        include_bos: analyse BOS rows too (left out by default).
        seed: seeds the control's permutations.

    Returns:
        :class:`PCAResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: not a Recording, fewer than 2 tokens, ``n_components`` above the number
            of units or of tokens.
        ColumnError: a ``label`` the trial table lacks.
        SiteError: a site not recorded, a unit out of range.

    Example:
        >>> import llmscope
        >>> from llmscope import pca
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> p = pca(rec, "mlp.1", "is_repeat", n_components=2)
        >>> p.components.index.names, p.components.shape
        (FrozenList(['site', 'unit']), (512, 2))
    """
    from sklearn.decomposition import PCA

    meta = responses.check_recording(recording, "pca")
    n_components = count(n_components, "n_components")
    seed = count(seed, "seed", minimum=0)
    keep = _kept(recording, include_bos)
    if label is not None:
        trials.column(recording.tokens, label, "label column")
    resolved = responses.resolve(recording, units)
    n_units, n_rows = sum(len(idx) for _, idx in resolved), int(keep.sum())
    if n_components > min(n_units, n_rows):
        raise AnalysisError.Range(f"n_components={n_components} is more than this population allows: it has "
                                  f"{n_units} units and {n_rows} tokens, so at most {min(n_units, n_rows)} components.")
    X, index = responses.matrix(recording, [(s.name, idx) for s, idx in resolved], keep)
    fit = PCA(n_components=n_components, random_state=seed).fit(X)
    shuffled = np.random.default_rng(seed).permuted(X, axis=0)  # each unit's column on its own
    control = PCA(n_components=n_components, random_state=seed).fit(shuffled)
    names = [f"PC{i + 1}" for i in range(n_components)]
    columns = ["seq", "pos", "text"] + ([label] if label is not None and label not in ("seq", "pos", "text") else [])
    df = recording.tokens.loc[keep, columns].copy()
    df[names] = fit.transform(X)
    data = unit_dataset(index, {"components": fit.components_.T}, "component", names)
    meta.update(sites=list(dict.fromkeys(s.name for s, _ in resolved)), n_units=n_units, n_components=n_components,
                label=label, explained_variance=fit.explained_variance_ratio_.tolist(),
                explained_variance_control=control.explained_variance_ratio_.tolist(),
                participation_ratio=_participation(X), participation_ratio_control=_participation(shuffled),
                control="each unit's responses permuted across tokens independently (unit correlations broken)",
                seed=seed, include_bos=include_bos, n_tokens=n_rows, n_seqs=int(df.seq.nunique()))
    return PCAResult(df, meta, data)


# ---------------------------------------------------------------- RDM and RSA


def _rdms(X: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """The ``[k, k]`` correlation-distance RDM of the category means of ``X [n, d]``."""
    from scipy.spatial.distance import pdist, squareform

    means = pd.DataFrame(X).groupby(codes, sort=True).mean().to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return squareform(pdist(means, "correlation"), checks=False).reshape(k, k)


class RDMResult(Result):
    """What :func:`rdm` returns: one RDM per site over the categories of a label.

    ``.df``: one row per site (index ``site``): ``mean_dissimilarity`` (over the upper triangle of
    its RDM) and ``mean_dissimilarity_control`` (the same with the labels permuted across tokens).

    ``.data``: ``rdm`` and ``rdm_control`` ``[site, <label>_a, <label>_b]``: the correlation
    distance (1 - Pearson r, 0..2) between two categories' mean responses, and the same with
    the labels permuted (``r.data.rdm.sel(site="mlp.0").to_pandas()`` is one RDM as a table).

    ``.meta``: ``sites``, ``units`` (site -> the unit indices read, None for all),
    ``label``, ``categories``, ``counts`` (tokens per category), ``metric``
    (``"correlation"``), ``control``, ``seed``, ``include_bos``, ``n_tokens``, ``model``,
    ``fingerprint``, ``stimuli``, ``source``, ``complete``, ``recorded_seqs``, ``stimuli_seqs``.

    ``.plot()``: the RDMs side by side.
    """

    kind = "rdm"

    def plot(self) -> "go.Figure":
        """The sites' RDMs as heatmaps, side by side, on one colour scale."""
        from plotly.subplots import make_subplots
        import plotly.graph_objects as go

        sites, cats = self.meta["sites"], [html.escape(str(c)) for c in self.meta["categories"]]
        fig = make_subplots(1, len(sites), subplot_titles=[html.escape(s) for s in sites], horizontal_spacing=0.04)
        for i, site in enumerate(sites):
            fig.add_trace(go.Heatmap(z=self.data["rdm"].sel(site=site).to_numpy(), x=cats, y=cats,
                                     coloraxis="coloraxis",
                                     hovertemplate=f"{html.escape(site)}: %{{y}} vs %{{x}}<br>1 - r = %{{z:.3f}}"
                                                   "<extra></extra>"), 1, i + 1)
            fig.update_yaxes(autorange="reversed", type="category", row=1, col=i + 1, showticklabels=i == 0)
            fig.update_xaxes(type="category", row=1, col=i + 1)
        return fig.update_layout(coloraxis=dict(colorscale="Viridis", colorbar=dict(title="1 - r")),
                                 title=f"RDMs over {html.escape(self.meta['label'])} "
                                       f"({html.escape(self.meta['model'])})")


@renamed(sites="units")
def rdm(recording: Recording, units: UnitsLike, label: str = "pos_tag", *, include_bos: bool = False,
        seed: int = 0) -> RDMResult:
    """Representational dissimilarity matrices of each site over the categories of ``label``.

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: a recorded site or a list of them (one RDM each, over all the site's units), or
            some of their units (``("mlp.0", [3, 7])``, a unit table): one RDM per site, over those.
        label: a categorical trial-table column; rows where it is missing are left out.
        include_bos: analyse BOS rows too (left out by default).
        seed: seeds the control's label permutation.

    Returns:
        :class:`RDMResult` (columns and meta keys in its docstring); compare RDMs with :func:`rsa`.

    Raises:
        AnalysisError: not a Recording, a label with fewer than 2 categories among the rows analysed.
        ColumnError: a ``label`` the trial table lacks.
        SiteError: a site not recorded, a unit out of range.

    Example:
        >>> import numpy as np
        >>> import llmscope
        >>> from llmscope import rdm
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> r = rdm(rec, "mlp.0", "pos_tag")
        >>> m = r.data.rdm.sel(site="mlp.0").to_pandas()
        >>> bool((np.diag(m) < 1e-9).all()), bool(m.loc["NOUN", "DET"] > 0)
        (True, True)
    """
    import xarray as xr

    meta = responses.check_recording(recording, "rdm")
    seed = count(seed, "seed", minimum=0)
    populations = _populations(recording, units)
    values = trials.labels(recording.tokens, label, trials.rows(recording.tokens, include_bos))
    codes, categories = pd.factorize(values, sort=True)
    shuffled_codes = np.random.default_rng(seed).permutation(codes)
    keep = np.zeros(len(recording), dtype=bool)
    keep[values.index.to_numpy()] = True
    k = len(categories)
    real, control = [], []
    for s, idx in populations:
        X = responses.scalar(recording, s.name, idx)[keep]
        real.append(_rdms(X, codes, k))
        control.append(_rdms(X, shuffled_codes, k))
    names = [s.name for s, _ in populations]
    upper = np.triu_indices(k, 1)
    df = pd.DataFrame({"mean_dissimilarity": [float(m[upper].mean()) for m in real],
                       "mean_dissimilarity_control": [float(m[upper].mean()) for m in control]},
                      index=pd.Index(names, name="site"))
    dims = ("site", f"{label}_a", f"{label}_b")
    data = xr.Dataset({"rdm": (dims, np.stack(real)), "rdm_control": (dims, np.stack(control))},
                      coords={"site": names, dims[1]: categories.to_numpy(), dims[2]: categories.to_numpy()})
    meta.update(sites=names, units={s.name: None if idx is None else idx.tolist() for s, idx in populations},
                label=label, categories=categories.tolist(),
                counts=values.value_counts().reindex(categories).astype(int).to_dict(), metric="correlation",
                control="labels permuted across the analysed tokens", seed=seed, include_bos=include_bos,
                n_tokens=len(values), source=_source(recording))
    return RDMResult(df, meta, data)


def _populations(recording: Recording, units: UnitsLike) -> list[tuple[Site, np.ndarray | None]]:
    """Each site of ``units`` with the indices of its units, None when they are all of them (read whole)."""
    return [(s, None if len(idx) == s.n_units else idx) for s, idx in responses.resolve(recording, units)]


def _ranks(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` as centred, unit-norm midranks: their dot products are Spearman correlations."""
    from scipy.stats import rankdata

    r = rankdata(a, axis=-1)
    r -= r.mean(-1, keepdims=True)
    return r / np.linalg.norm(r, axis=-1, keepdims=True)


def _pairs_figure(result: Result, value: str, title: str) -> "go.Figure":
    """A heatmap of ``value`` over the ``(site_a, site_b)`` pairs of a comparison table."""
    import plotly.graph_objects as go

    z = result.df.pivot(index="site_a", columns="site_b", values=value)
    z = z.loc[list(dict.fromkeys(result.df.site_a)), list(dict.fromkeys(result.df.site_b))]
    a, b = html.escape(result.meta["a"]), html.escape(result.meta["b"])
    fig = go.Figure(go.Heatmap(z=z.to_numpy(), x=[html.escape(s) for s in z.columns],
                               y=[html.escape(s) for s in z.index], colorscale="Viridis", zmin=0, zmax=1,
                               colorbar=dict(title=value),
                               hovertemplate="%{y} vs %{x}<br>" + value + " %{z:.3f}<extra></extra>"))
    fig.update_yaxes(type="category", autorange="reversed", title=a)
    fig.update_xaxes(type="category", title=b)
    return fig.update_layout(title=title)


class RSAResult(Result):
    """What :func:`rsa` returns.

    ``.df``: one row per pair of RDMs: ``site_a``, ``site_b``, ``rho`` (Spearman correlation of
    the upper triangles), ``p`` (one-sided permutation p-value, ``(1 + #{control >= rho}) / (1 +
    n_controls)``), ``rho_control`` and ``rho_control_95`` (mean and 95th percentile of rho over
    the condition permutations).

    ``.meta``: ``label``, ``categories`` (those compared), ``dropped`` (categories one side lacks,
    per side), ``n_pairs`` (cells of an upper triangle), ``n_controls``, ``seed``, ``control``,
    ``a`` and ``b`` (the recordings), ``model_a``, ``model_b``.

    ``.plot()``: a heatmap of ``rho``.
    """

    kind = "rsa"

    def plot(self) -> "go.Figure":
        """A heatmap of ``rho`` over the pairs of sites."""
        return _pairs_figure(self, "rho", f"RSA over {html.escape(self.meta['label'])}: Spearman rho of RDMs")


@renamed(a="result", b="other", n_perm="n_controls")
def rsa(result: RDMResult, other: RDMResult | None = None, *, n_controls: int = 1000, seed: int = 0) -> RSAResult:
    """Representational similarity: the Spearman correlation of every pair of RDMs of ``result`` and ``other``.

    Each site of ``result`` is compared with each site of ``other`` (with ``other`` None,
    ``result`` with itself: a layers x layers table), over the categories both hold (an RDM over
    pos_tag of the organism compares with one of SmolLM2 over their shared tags). Only the upper
    triangles count. The control permutes the condition labels of ``other``'s RDM (rows and
    columns together) ``n_controls`` times, the same permutations for every pair.

    Args:
        result, other: results of :func:`rdm` over the same label.
        n_controls: permutations of the control (1..100000).
        seed: seeds them.

    Returns:
        :class:`RSAResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: not RDM results, different labels, fewer than 3 shared categories, an
            RDM with undefined cells (a category whose mean response is the same in every
            unit), a bad ``n_controls`` or ``seed``.

    Example:
        >>> import llmscope
        >>> from llmscope import rdm, rsa
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> r = rsa(rdm(rec, ["mlp.0", "mlp.1"]), n_controls=100)
        >>> r.df.rho.round(6).tolist()[0], len(r.df)
        (1.0, 4)
    """
    a, b = result, result if other is None else other
    for name, x in (("result", a), ("other", b)):
        if not isinstance(x, RDMResult):
            raise AnalysisError.Type(f"rsa() compares results of rdm(); {name} is a {type(x).__name__}.")
    if a.meta["label"] != b.meta["label"]:
        raise AnalysisError(f"rsa() compares RDMs over the same label; result is over {a.meta['label']!r}, "
                            f"other over {b.meta['label']!r}.")
    n_controls = draws(n_controls, "n_controls", "resample")
    seed = count(seed, "seed", minimum=0)
    shared = [c for c in a.meta["categories"] if c in set(b.meta["categories"])]
    if len(shared) < MIN_RSA_CATEGORIES:
        raise AnalysisError(f"rsa() needs at least {MIN_RSA_CATEGORIES} categories both RDMs hold; result has "
                            f"{a.meta['categories']}, other has {b.meta['categories']}, shared {shared}.")
    k = len(shared)
    upper = np.triu_indices(k, 1)
    side = {}
    for name, x in (("result", a), ("other", b)):
        rdms = x.data["rdm"]
        mats = rdms.sel({rdms.dims[1]: shared, rdms.dims[2]: shared}).to_numpy()
        if not np.isfinite(mats).all():
            bad = [s for s, m in zip(x.meta["sites"], mats) if not np.isfinite(m).all()]
            raise AnalysisError(f"the RDMs of {bad} in {name} have undefined cells: a category's mean response is "
                                "the same in every unit, so its correlation distance is undefined.")
        side[name] = mats
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(k) for _ in range(n_controls)])
    ra = _ranks(side["result"][:, upper[0], upper[1]])  # [sites_a, pairs]
    rb = _ranks(side["other"][:, upper[0], upper[1]])  # [sites_b, pairs]
    null_b = _ranks(side["other"][:, perms[:, upper[0]], perms[:, upper[1]]])  # [sites_b, n_controls, pairs]
    rho = ra @ rb.T
    null = np.einsum("ap,bnp->abn", ra, null_b)
    rows = [dict(site_a=sa, site_b=sb, rho=rho[i, j],
                 p=(1 + (null[i, j] >= rho[i, j] - 1e-12).sum()) / (1 + n_controls),
                 rho_control=null[i, j].mean(), rho_control_95=np.percentile(null[i, j], 95))
            for (i, sa), (j, sb) in itertools.product(enumerate(a.meta["sites"]), enumerate(b.meta["sites"]))]
    meta = dict(label=a.meta["label"], categories=shared, n_pairs=len(upper[0]), n_controls=n_controls, seed=seed,
                dropped={"a": [c for c in a.meta["categories"] if c not in shared],
                         "b": [c for c in b.meta["categories"] if c not in shared]},
                control="condition labels of other's RDM permuted (rows and columns together)",
                a=a.meta["source"], b=b.meta["source"], model_a=a.meta["model"], model_b=b.meta["model"])
    return RSAResult(pd.DataFrame(rows), meta)


# ---------------------------------------------------------------- CKA


@dataclass(frozen=True)
class _Population:
    """A site's centred responses in the form CKA's products are cheapest in: the Gram matrix
    ``Xc Xc^T [n, n]`` when the tokens are no more than the widest population's units (each
    pair and shuffle is then an elementwise product), else ``Xc [n, d]`` itself."""

    data: np.ndarray
    gram: bool
    norm: float  # ||Xc^T Xc||_F = ||Xc Xc^T||_F

    @classmethod
    def of(cls, X: np.ndarray, gram: bool) -> "_Population":
        Xc = _centred(X)
        if gram:
            K = Xc @ Xc.T
            return cls(K, True, float(np.linalg.norm(K)))
        return cls(Xc, False, _self_norm(Xc))

    def cka(self, other: "_Population", perm: np.ndarray | None = None) -> float:
        """Linear CKA with ``other`` (its tokens in the order ``perm``): ``||Xc^T Yc||_F^2 =
        <K, L>_F`` over the two norms. A permuted centred matrix is still centred."""
        if self.gram:
            L = other.data if perm is None else other.data[np.ix_(perm, perm)]
            hsic = float(np.vdot(self.data, L))
        else:
            Y = other.data if perm is None else other.data[perm]
            hsic = float(np.square(self.data.T @ Y).sum())
        return hsic / (self.norm * other.norm)


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two populations' responses to the same ``n`` tokens, ``X [n, a]`` and ``Y [n, b]``:
    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` on column-centred data, in 0..1.

    Raises:
        AnalysisError: not two 2-d arrays with the same rows (at least 2), or a population
            that does not vary (CKA is undefined).

    Example:
        >>> import numpy as np
        >>> from llmscope.analysis.geometry import linear_cka
        >>> X = np.random.default_rng(0).normal(size=(50, 8))
        >>> round(linear_cka(X, 3 * X @ np.linalg.qr(X.T @ X)[0]), 6)
        1.0
    """
    X, Y = np.asarray(X), np.asarray(Y)
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y) or len(X) < 2:
        raise AnalysisError(f"linear_cka takes two 2-d arrays [tokens, units] with the same number (>= 2) of "
                            f"rows; got shapes {X.shape} and {Y.shape}.")
    gram = len(X) <= max(X.shape[1], Y.shape[1])
    a, b = _Population.of(X, gram), _Population.of(Y, gram)
    if a.norm == 0 or b.norm == 0:
        raise AnalysisError("linear CKA is undefined for a population whose responses do not vary across tokens.")
    return a.cka(b)


def _same_tokens(a: Recording, b: Recording) -> None:
    """An AnalysisError unless ``b``'s trial table holds the same tokens, row for row, as ``a``'s."""
    cols = ["seq", "pos", "token"]
    ta, tb = a.tokens[cols], b.tokens[cols]
    if len(ta) != len(tb):
        raise AnalysisError(f"cka() compares responses to the same tokens; {a.name!r} holds {len(ta)} tokens and "
                            f"{b.name!r} {len(tb)}. Record both on the same stimuli.")
    differ = np.flatnonzero((ta.to_numpy() != tb.to_numpy()).any(1))
    if len(differ):
        row = int(differ[0])
        raise AnalysisError(f"cka() compares responses to the same tokens; {a.name!r} and {b.name!r} differ at "
                            f"{len(differ)} rows (first: row {row}, (seq, pos, token) {tuple(ta.iloc[row])} vs "
                            f"{tuple(tb.iloc[row])}). Record both on the same stimuli.")


class CKAResult(Result):
    """What :func:`cka` returns.

    ``.df``: one row per pair of populations: ``site_a``, ``site_b``, ``cka`` (0..1),
    ``cka_control`` (mean over the shuffles of the second population's rows), ``cka_control_max``.

    ``.meta``: ``a``, ``b`` (the recordings), ``model_a``, ``model_b``, ``units`` and
    ``other_units`` (site -> the unit indices read, None for all), ``n_tokens``, ``n_controls``,
    ``seed``, ``include_bos``, ``control``, ``complete``.

    ``.plot()``: a heatmap of ``cka``.
    """

    kind = "cka"

    def plot(self) -> "go.Figure":
        """A heatmap of ``cka`` over the pairs of sites."""
        return _pairs_figure(self, "cka", "linear CKA between sites")


@renamed(sites="units", other_sites="other_units", n_shuffle="n_controls")
def cka(recording: Recording, units: UnitsLike, other: Recording | None = None, other_units: UnitsLike | None = None,
        *, include_bos: bool = False, n_controls: int = 5, seed: int = 0, progress: bool = True) -> CKAResult:
    """Linear CKA between every population of ``units`` and every population of ``other_units``, on the same tokens.

    A population is a site's units (all of them for a bare site). Each is read whole and held
    centred in float64 (``8 x n_tokens x n_units`` bytes, or ``8 x n_tokens^2`` as a Gram matrix
    when the tokens are fewer than the widest population's units), so select tokens
    (``recording.select``) for big recordings.

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: a recorded site or a list of them (all units of each), or some of their units
            (``("mlp.0", [3, 7])``, a unit table): one population per site.
        other: a second recording of the same tokens (another checkpoint, or other sites), or
            None for ``recording`` itself.
        other_units: units of ``other`` (default: ``units``).
        include_bos: analyse BOS rows too (left out by default).
        n_controls: shuffles of the control (>= 1): the rows of the second population permuted.
        seed: seeds them.
        progress: show a progress bar over the pairs.

    Returns:
        :class:`CKAResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: not Recordings, recordings of different tokens, fewer than 2 tokens,
            a population whose responses do not vary, a bad ``n_controls``/``seed``/``progress``.
        SiteError: a site not recorded, a unit out of range.

    Example:
        >>> import llmscope
        >>> from llmscope import cka
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> c = cka(rec, "mlp.0", other_units=["mlp.1", "attn.1"], progress=False)
        >>> bool((c.df.cka > c.df.cka_control).all())
        True
    """
    meta_a = responses.check_recording(recording, "cka")
    other = recording if other is None else other
    meta_b = meta_a if other is recording else responses.check_recording(other, "cka")
    n_controls = draws(n_controls, "n_controls", "resample")
    seed = count(seed, "seed", minimum=0)
    flag(progress, "progress")
    pops_a = _populations(recording, units)
    pops_b = _populations(other, units if other_units is None else other_units)
    if other is not recording:
        _same_tokens(recording, other)
    keep = _kept(recording, include_bos)
    n = int(keep.sum())
    gram = n <= max(s.n_units if idx is None else len(idx) for s, idx in pops_a + pops_b)
    populations: dict[tuple, _Population] = {}

    def key(which: int, s: Site, idx: np.ndarray | None) -> tuple:
        """One population: the same site and units of the same recording are read and centred once."""
        return (0 if other is recording else which, s.name, None if idx is None else tuple(idx.tolist()))

    def population(which: int, s: Site, idx: np.ndarray | None) -> _Population:
        k = key(which, s, idx)
        if k not in populations:
            populations[k] = _Population.of(responses.scalar((recording, other)[which], s.name, idx)[keep], gram)
            if populations[k].norm == 0:
                raise AnalysisError(f"the responses of {s.name} do not vary across the tokens analysed: "
                                    "CKA is undefined.")
        return populations[k]

    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(n_controls)]
    found: dict[tuple, dict[str, Any]] = {}
    for (sa, ia), (sb, ib) in progress_bar(list(itertools.product(pops_a, pops_b)), unit="pair", desc="cka",
                                           show=progress):
        ka, kb = key(0, sa, ia), key(1, sb, ib)
        if (kb, ka) in found:  # CKA is symmetric; the mirrored shuffles are shuffles too
            found[ka, kb] = dict(found[kb, ka], site_a=sa.name, site_b=sb.name)
            continue
        x, y = population(0, sa, ia), population(1, sb, ib)
        control = [x.cka(y, p) for p in perms]
        found[ka, kb] = dict(site_a=sa.name, site_b=sb.name, cka=x.cka(y), cka_control=float(np.mean(control)),
                             cka_control_max=float(np.max(control)))
    used = {side: {s.name: None if idx is None else idx.tolist() for s, idx in pops}
            for side, pops in (("units", pops_a), ("other_units", pops_b))}
    meta = dict(a=_source(recording), b=_source(other), model_a=meta_a["model"], model_b=meta_b["model"], **used,
                n_tokens=n, n_controls=n_controls, seed=seed, include_bos=include_bos,
                control="rows of the second population permuted (token pairing broken)",
                complete=meta_a["complete"] and meta_b["complete"])
    return CKAResult(pd.DataFrame(list(found.values())), meta)


__all__ = ["pca", "PCAResult", "rdm", "RDMResult", "rsa", "RSAResult", "cka", "CKAResult", "linear_cka"]
