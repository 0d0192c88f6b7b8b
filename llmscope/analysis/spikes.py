"""Spikes, rasters and peri-stimulus time histograms (PSTH).

A unit *spikes* at a token where its scalar response (:mod:`~llmscope.analysis.responses`:
a neuron's activation, a head's ``hook_z`` norm) is strictly above a per-unit threshold,
computed over the rows analysed (BOS rows out unless asked):

* ``method="zscore"``: threshold = mean + ``threshold`` x std (population std) of the unit;
* ``method="quantile"``: threshold = the unit's ``threshold``-quantile (numpy's linear
  interpolation), so about ``1 - threshold`` of its tokens spike.

The raster is units x tokens. It is kept sparse, as the list of ``(unit_row, token_col)``
pairs in a scipy CSR matrix (int32 indices, uint8 ones): 5 bytes per spike, where a dense
uint8 raster costs a byte per cell (1e6 cells = 1 MB) whatever the rate. Spikes are rare by
definition, so the list wins whenever fewer than 1 cell in 5 spikes: 4x smaller at q = 0.95,
10x at the ~2% rate of z = 3 on grammar-2l's mlp.0 (a SmolLM2 MLP site over 20,000 tokens:
31 MB dense, ~3 MB as a list). Reordering units or taking one unit's spikes is a row slice.
A canvas gets :meth:`Spikes.pairs` (int32 ``[n_spikes, 2]``, 8 bytes per spike) for the
whole raster, or :meth:`Spikes.window` (dense uint8) for the part on screen only.

Units are those of one site: ``spikes(rec, "mlp.0")`` (all), ``spikes(rec, "mlp.0", [3, 7])``,
``spikes(rec, ("mlp.0", [3, 7]))`` or a unit table of one site (``tuning(...).top(40)``).

Example:
    >>> import llmscope
    >>> from llmscope import psth, spikes
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> sp = spikes(rec, "attn.1", method="quantile", threshold=0.9, sort_by="pos_tag", progress=False)
    >>> sp.matrix.shape == (4, len(sp.tokens))
    True
    >>> p = psth(sp, "pos_tag == 'NOUN'", window=3, n_controls=20)
    >>> sorted(p.df.offset.unique().tolist())
    [-3, -2, -1, 0, 1, 2, 3]
"""

from __future__ import annotations

import html
import math
import warnings
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

from llmscope.analysis import events, responses
from llmscope.checks import choice, count, draws, flag, fraction
from llmscope.errors import AnalysisError, SiteError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.result import Result
from llmscope.sites import Site, UnitsLike, parse_units, unit_labels
from llmscope.stimuli import trials
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go

METHODS = ("zscore", "quantile")
CONTROLS = ("shuffle", None)


# ---------------------------------------------------------------- shared helpers


def _site_units(units: Any, name: str) -> Any:
    """The unit indices of units that must all be of site ``name``: a ``(site, indices)`` pair, a
    ``(site, unit)`` table / index / Result; indices (ints) and None (all) are returned as given."""
    if units is None or isinstance(units, (int, np.integer)) or (
            isinstance(units, (list, tuple, np.ndarray)) and all(isinstance(i, (int, np.integer)) for i in units)):
        return units
    pairs = parse_units(units)
    other = [site for site in (spec.name if isinstance(spec, Site) else spec for spec, _ in pairs) if site != name]
    if other:
        raise SiteError(f"these units belong to {other}, not to {name}; pass units of {name} only.")
    return pairs[0][1]


def _one_site(recording: Recording, units: Any, indices: Any, analysis: str) -> tuple[str, np.ndarray]:
    """The one recorded site of ``units`` (a site with ``indices``, a ``(site, indices)`` pair, or a
    unit table of one site) and its unit indices, in the order given (None: all)."""
    if isinstance(units, (str, Site)):
        name = responses.check_site(recording, units.name if isinstance(units, Site) else units)
        given = _site_units(indices, name)
        units = (name, given) if given is indices else indices  # a unit table stays one: its model is checked
    elif indices is not None:
        raise SiteError.Type(f"indices follow a site name, as in {analysis}(rec, 'mlp.0', [3, 7]); got "
                             f"units={str(units)[:80]} and indices={indices!r}.")
    resolved = responses.resolve(recording, units)  # the sites, the indices and a unit table's model
    if len(resolved) != 1:
        raise SiteError(f"{analysis} reads the units of one site; these are of {[s.name for s, _ in resolved]}: "
                        "call it once per site.")
    s = resolved[0][0]
    return s.name, s.check_units(parse_units(units)[0][1])  # in the order given


def _kept_blocks(recording: Recording, site: str, units: np.ndarray, keep: np.ndarray,
                 bar: tqdm) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first analysed column, responses [n_kept_rows, n_units])`` block by block."""
    before = np.concatenate([[0], np.cumsum(keep)])
    for rows, block in responses.blocks(recording, site, units, block_bytes=responses.BLOCK_BYTES):
        bar.update(rows.stop - rows.start)
        yield int(before[rows.start]), block[keep[rows]]


def _check_threshold(method: Any, threshold: Any) -> float:
    choice(method, "spike method", METHODS)
    if method == "quantile":
        return fraction(threshold, "a quantile threshold (0.95 = the top 5% of tokens spike)")
    return fraction(threshold, "a z-score threshold (standard deviations above the mean)", 0, math.inf)


# ---------------------------------------------------------------- thresholds (pass 1)


def _zscore_thresholds(blocks: Iterator[tuple[int, np.ndarray]], n_units: int, z: float) -> np.ndarray:
    """mean + z * std per unit, merging block moments (Chan et al.) so memory stays one block."""
    n, mean, m2 = 0, np.zeros(n_units), np.zeros(n_units)
    for _, x in blocks:
        if len(x) == 0:
            continue
        b, bmean = len(x), x.mean(0, dtype=np.float64)
        bm2 = np.square(x - bmean.astype(np.float32)).sum(0, dtype=np.float64)
        delta = bmean - mean
        mean = mean + delta * b / (n + b)
        m2 = m2 + bm2 + np.square(delta) * n * b / (n + b)
        n += b
    return mean + z * np.sqrt(m2 / n)


def _quantile_thresholds(blocks: Iterator[tuple[int, np.ndarray]], n_units: int, n: int, q: float) -> np.ndarray:
    """The q-quantile per unit (as ``np.quantile``), keeping only the top ``n - floor((n-1)q)``
    values of each unit: about as many floats as the spikes it will find."""
    h = (n - 1) * q
    lo = math.floor(h)
    k = n - lo
    top = np.full((k, n_units), -np.inf, dtype=np.float32)
    for _, x in blocks:
        both = np.concatenate([top, x])
        top = np.partition(both, len(both) - k, axis=0)[len(both) - k:]
    low = np.partition(top, 1, axis=0)[:2].astype(np.float64)  # k >= 2 since q < 1
    return low[0] + (h - lo) * (low[1] - low[0])


# ---------------------------------------------------------------- Spikes


class Spikes(Result):
    """Spikes of a site's units over the analysed tokens: a unit table plus a sparse raster.

    ``.df``: one row per unit, indexed by ``(site, unit)`` in raster order: ``threshold`` (the
    response level a spike must exceed), ``n_spikes``, ``rate`` (spikes per analysed token; what
    :meth:`top` ranks by); with ``sort_by``, also ``preferred`` and ``auc`` from
    :func:`~llmscope.analysis.tuning.tuning`.

    ``.meta``: ``site``, ``method``, ``threshold`` (the argument), ``include_bos``, ``sort_by``,
    ``n_tokens``, ``n_spikes``, ``model``, ``fingerprint``, ``stimuli``, ``complete`` (False: an
    interrupted recording, analysed as far as it goes; a warning says so), ``recorded_seqs``,
    ``stimuli_seqs``.

    Attributes:
        matrix: scipy CSR ``[n_units, n_tokens]`` uint8, 1 where a unit spikes; row i is
            ``df.index[i]``, column j is ``tokens.iloc[j]`` (sparse: it stays an attribute).
        tokens: the analysed rows of the trial table, one per raster column; its index is
            the row number in the recording.

    ``.plot(units=slice, tokens=slice)`` draws the raster (or a window of it) with plotly.

    Example:
        >>> import llmscope
        >>> from llmscope import spikes
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> sp = spikes(rec, "attn.1", progress=False)
        >>> sp.window(slice(0, 2), slice(0, 5)).shape, sp.pairs().dtype
        ((2, 5), dtype('int32'))
    """

    kind = "spikes"
    rank_by = "rate"
    matrix: sparse.csr_matrix
    tokens: pd.DataFrame

    def pairs(self) -> np.ndarray:
        """All spikes as int32 ``[n_spikes, 2]`` ``(unit_row, token_col)`` pairs, row-major."""
        coo = self.matrix.tocoo()
        return np.stack([coo.row, coo.col], axis=1).astype(np.int32)

    def window(self, units: slice = slice(None), tokens: slice = slice(None)) -> np.ndarray:
        """The dense uint8 ``[n_units, n_tokens]`` raster of a window (rows and columns as slices)."""
        if not isinstance(units, slice) or not isinstance(tokens, slice):
            raise AnalysisError.Type(f"window() takes two slices (unit rows, token columns), got {units!r}, {tokens!r}.")
        return self.matrix[units, tokens].toarray().astype(np.uint8)

    def reorder(self, units: Any) -> "Spikes":
        """The same spikes with rows in the order of ``units`` (a ``(site, unit)`` index,
        a unit table such as a sorted tuning ``.df``, or a list of unit indices of this site)."""
        name = self.meta["site"]
        rows = _rows_of(self.df.index, _site_units(units, name), name)
        return _spikes(self.df.iloc[rows], self.meta, self.matrix[rows], self.tokens)

    def plot(self, units: slice = slice(None), tokens: slice = slice(None)) -> "go.Figure":
        """Scattergl raster of a window (unit rows, token columns as slices): one marker per spike,
        a categorical unit axis in raster order."""
        import plotly.graph_objects as go

        labels = np.array(unit_labels(self.df.index))[units]
        part = self.matrix[units, tokens].tocoo()
        first = range(len(self.tokens))[tokens]
        cols = np.asarray(first)[part.col]
        text = np.array([html.escape(str(t)) for t in self.tokens["text"].to_numpy()[cols]], dtype=object)
        fig = go.Figure(go.Scattergl(
            x=cols, y=labels[part.row], mode="markers", marker=dict(symbol="line-ns-open", size=8),
            customdata=text, hovertemplate="%{y} at token %{x}: %{customdata}<extra></extra>"))
        m = self.meta
        fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(labels), autorange="reversed",
                         title="unit")
        fig.update_xaxes(title="token (analysed rows)")
        return fig.update_layout(title=f"spikes of {m['site']} ({m['method']} > {m['threshold']:g})"
                                       + (f", sorted by {m['sort_by']}" if m["sort_by"] else ""))


def _spikes(df: pd.DataFrame, meta: dict[str, Any], matrix: sparse.csr_matrix, tokens: pd.DataFrame) -> Spikes:
    sp = Spikes(df, meta)
    sp.matrix, sp.tokens = matrix, tokens
    return sp


def _rows_of(index: pd.MultiIndex, units: Any, name: str) -> np.ndarray:
    """Positions in ``index`` of the given unit indices; a SiteError names the missing ones."""
    have = index.get_level_values("unit").to_numpy()
    want = np.atleast_1d(np.asarray(units))
    if isinstance(units, (str, bytes)) or want.size == 0 or not np.issubdtype(want.dtype, np.integer):
        raise SiteError.Type(f"units of {name} are integer indices among {have.tolist()[:10]}..., got {units!r}.")
    pos = pd.Index(have).get_indexer(want)
    if (pos < 0).any():
        raise SiteError.Range(f"units {want[pos < 0].tolist()} of {name} are not in these spikes "
                              f"(they hold {len(have)} units: {have.tolist()[:10]}...).")
    return pos


def _selectivity(recording: Recording, s: Site, index: pd.MultiIndex, label: str,
                 include_bos: bool) -> pd.DataFrame:
    """``preferred`` and ``auc`` of the units, in raster order: by preferred category, then
    AUC descending (the tuning module's one-vs-rest AUC)."""
    from llmscope.analysis.tuning import tuning

    table = tuning(recording, s.name, label, include_bos=include_bos, progress=False).df
    sel = table.loc[index, ["preferred", "auc"]]
    return sel.sort_values(["preferred", "auc"], ascending=[True, False], kind="mergesort")


@renamed(site="units", units="indices")
def spikes(recording: Recording, units: UnitsLike, indices: Any = None, *, threshold: float = 3.0,
           method: str = "zscore", include_bos: bool = False, sort_by: str | None = None,
           progress: bool = True) -> Spikes:
    """Where each unit spikes: its response strictly above a per-unit threshold.

    Streams the recording twice (thresholds, then crossings), one block at a time; memory is
    one block plus the spikes (and, for a quantile, about as many floats as spikes).

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: units of one recorded site: the site (``"attn.1"``, with ``indices``), a
            ``(site, indices)`` pair or a unit table of one site; raster rows keep their order.
        indices: unit indices of the site named by ``units`` (or a unit table of it); None for all.
        threshold: for ``"zscore"`` standard deviations above the mean (> 0); for
            ``"quantile"`` the quantile in (0, 1).
        method: ``"zscore"`` or ``"quantile"`` (see the module docstring).
        include_bos: analyse BOS rows too.
        sort_by: a label column (``"pos_tag"``): order raster rows by each unit's preferred
            category, then by its one-vs-rest AUC, descending (from ``tuning``).
        progress: show a progress bar.

    Returns:
        :class:`Spikes`.

    Raises:
        AnalysisError: an unknown method, a threshold outside its range, fewer than 2 tokens.
        SiteError: a site the recording lacks, a unit index out of range, units of several sites.
        ColumnError: a ``sort_by`` column the trial table lacks.

    Example:
        >>> import llmscope
        >>> from llmscope import spikes
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> sp = spikes(rec, "mlp.0", method="quantile", threshold=0.99, progress=False)
        >>> bool((sp.df.rate < 0.02).all())
        True
    """
    provenance = responses.check_recording(recording, "spikes")
    threshold = _check_threshold(method, threshold)
    name, idx = _one_site(recording, units, indices, "spikes")
    s = recording.site(name)
    keep = trials.rows(recording.tokens, include_bos)
    if sort_by is not None:
        trials.labels(recording.tokens, sort_by, keep)
    n = int(keep.sum())
    if n < 2:
        raise AnalysisError(f"spikes need at least 2 analysed tokens; this recording has {n}.")
    with progress_bar(total=2 * len(recording), unit="tok", desc=f"spikes {name}", show=progress) as bar:
        blocks = _kept_blocks(recording, name, idx, keep, bar)
        thr = (_zscore_thresholds(blocks, len(idx), threshold) if method == "zscore"
               else _quantile_thresholds(blocks, len(idx), n, threshold))
        cols, rows = [], []
        for c0, x in _kept_blocks(recording, name, idx, keep, bar):
            token, unit = np.nonzero(x > thr)
            cols.append((token + c0).astype(np.int32))
            rows.append(unit.astype(np.int32))
    cols, rows = np.concatenate(cols), np.concatenate(rows)
    matrix = sparse.csr_matrix((np.ones(len(cols), np.uint8), (rows, cols)), shape=(len(idx), n))
    n_spikes = np.asarray(matrix.sum(1)).ravel()
    df = pd.DataFrame({"threshold": thr, "n_spikes": n_spikes, "rate": n_spikes / n}, index=s.unit_index(idx))
    meta = {"site": name, "method": method, "threshold": threshold, "include_bos": include_bos,
            "sort_by": sort_by, "n_tokens": n, "n_spikes": int(n_spikes.sum()), **provenance}
    if sort_by is not None:
        sel = _selectivity(recording, s, df.index, sort_by, include_bos)
        order = df.index.get_indexer(sel.index)
        df, matrix = df.iloc[order].join(sel), matrix[order]
    return _spikes(df, meta, matrix, recording.tokens[keep])


# ---------------------------------------------------------------- PSTH


class PSTHResult(Result):
    """What :func:`psth` returns.

    ``.df``: long form, one row per unit and offset: ``site``, ``unit``, ``offset``, ``rate``,
    ``rate_control`` (mean over the shuffled events), ``rate_control_low`` and
    ``rate_control_high`` (its 2.5 and 97.5 percentiles; NaN without a control), ``n_events``
    (events counted at that offset).

    ``.meta``: ``site``, ``where``, ``window`` (``[before, after]``), ``measure`` (``"spike
    rate"`` or ``"mean response"``), ``spikes`` (the method and threshold of Spikes, else None),
    ``control``, ``n_controls``, ``seed``, ``n_events``, ``include_bos``, and the recording's
    provenance (``model``, ``fingerprint``, ``stimuli``, ``complete``...).

    ``.plot(n=8)``: the rate of the first ``n`` units against offset, each with its control.
    """

    kind = "psth"

    @renamed(max_units="n")
    def plot(self, n: int = 8) -> "go.Figure":
        """Lines of the rate of the first ``n`` units against offset, with the shuffled mean
        (dotted) and its 95% band."""
        import plotly.colors
        import plotly.graph_objects as go

        df = self.df
        units = list(dict.fromkeys(zip(df.site, df.unit)))[:count(n, "n")]
        palette = plotly.colors.qualitative.Plotly
        fig = go.Figure()
        for i, (s, u) in enumerate(units):
            d, color, label = df[(df.site == s) & (df.unit == u)], palette[i % len(palette)], f"{s}:{u}"
            if d.rate_control.notna().any():
                fig.add_scatter(x=np.concatenate([d.offset, d.offset[::-1]]),
                                y=np.concatenate([d.rate_control_high, d.rate_control_low[::-1]]), fill="toself",
                                fillcolor=color, opacity=0.2, line=dict(width=0), hoverinfo="skip",
                                legendgroup=label, showlegend=False)
                fig.add_scatter(x=d.offset, y=d.rate_control, mode="lines", line=dict(color=color, dash="dot"),
                                legendgroup=label, name=f"{label} shuffled")
            fig.add_scatter(x=d.offset, y=d.rate, mode="lines+markers", line=dict(color=color),
                            legendgroup=label, name=label)
        fig.add_vline(x=0, line=dict(color="grey", dash="dash"))
        m = self.meta
        return fig.update_layout(title=f"PSTH of {m['site']} on {html.escape(m['where'])} ({m['n_events']} events)",
                                 xaxis_title="offset from event (tokens)", yaxis_title=m["measure"])


def _psth_source(source: Any, units: Any, indices: Any, include_bos: bool | None,
                 progress: bool) -> tuple[str, pd.MultiIndex, pd.DataFrame, bool, dict[str, Any], Any]:
    """Check a PSTH's source; return its site, units, analysed rows, BOS choice, provenance and
    ``summed(w) -> [n_rows of w, n_units]``: the spikes or responses summed under weights ``w``."""
    if include_bos is not None:
        flag(include_bos, "include_bos")
    if isinstance(source, Spikes):
        name = source.meta["site"]
        if include_bos is not None:
            raise AnalysisError("include_bos applies to a Recording; Spikes keep the rows they were found on.")
        if isinstance(units, (str, Site)):
            given = units.name if isinstance(units, Site) else units
            if given != name:
                raise SiteError(f"these spikes are of {name}, not of {given!r}; leave units out, or pass units of {name}.")
            units = indices
        elif indices is not None:
            raise SiteError.Type(f"indices follow a site name; got units={str(units)[:80]} and indices={indices!r}.")
        rows = slice(None) if units is None else _rows_of(source.df.index, _site_units(units, name), name)
        provenance = {key: source.meta[key] for key in PROVENANCE if key in source.meta}
        return (name, source.df.index[rows], source.tokens, source.meta["include_bos"], provenance,
                lambda w: (source.matrix[rows] @ w.T).toarray().T)
    if not isinstance(source, Recording):
        raise AnalysisError.Type(f"psth takes Spikes or a Recording, got {type(source).__name__}.")
    if units is None:
        raise SiteError(f"psth of a Recording needs units= (a site such as {source.sites[0]!r}, with indices=, or "
                        f"a (site, indices) pair); it holds {source.sites}.")
    provenance = responses.check_recording(source, "psth")
    name, idx = _one_site(source, units, indices, "psth")
    include_bos = False if include_bos is None else include_bos
    keep = trials.rows(source.tokens, include_bos)

    def summed(w: sparse.csc_matrix) -> np.ndarray:
        out = np.zeros((w.shape[0], len(idx)))
        with progress_bar(total=len(source), unit="tok", desc=f"psth {name}", show=progress) as bar:
            for c0, x in _kept_blocks(source, name, idx, keep, bar):
                out += (w if len(x) == w.shape[1] else w[:, c0:c0 + len(x)]) @ x
        return out

    return name, source.site(name).unit_index(idx), source.tokens[keep], include_bos, provenance, summed


PROVENANCE = ("model", "fingerprint", "stimuli", "complete", "recorded_seqs", "stimuli_seqs")


def _psth_table(index: pd.MultiIndex, rate: np.ndarray, n_events: np.ndarray, before: int) -> pd.DataFrame:
    """The long-form PSTH table from ``rate [1 + n_controls, n_offsets, n_units]`` (set 0 = real events)."""
    real, shuf = rate[0].T, rate[1:].transpose(2, 1, 0)  # [unit, offset], [unit, offset, shuffle]
    k = real.shape[1]
    if len(shuf[0, 0]):
        with warnings.catch_warnings():  # an offset no shuffled event reaches is NaN, and says so
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, (low, high) = np.nanmean(shuf, axis=2), np.nanpercentile(shuf, [2.5, 97.5], axis=2)
    else:
        mean = low = high = np.full(real.shape, np.nan)
    return pd.DataFrame({
        "site": np.repeat(index.get_level_values("site"), k),
        "unit": np.repeat(index.get_level_values("unit"), k),
        "offset": np.tile(np.arange(-before, k - before), len(index)),
        "rate": real.ravel(), "rate_control": mean.ravel(),
        "rate_control_low": low.ravel(), "rate_control_high": high.ravel(),
        "n_events": np.tile(n_events.astype(np.int64), len(index)),
    })


@renamed(event="where", site="units", units="indices", n_shuffle="n_controls")
def psth(source: "Spikes | Recording", where: str, window: int | tuple[int, int] = 5, *,
         units: UnitsLike | None = None, indices: Any = None, include_bos: bool | None = None,
         control: str | None = "shuffle", n_controls: int = 100, seed: int = 0, progress: bool = True) -> PSTHResult:
    """Peri-stimulus time histogram: each unit's activity at offsets ``-before..+after`` tokens
    around the events, within the event's own sequence.

    From :class:`Spikes` the measure is the spike rate (the fraction of events whose token at
    that offset spikes); from a Recording it is the mean scalar response there. An offset that
    falls outside the sequence (or on a row not analysed, such as BOS) is not counted, so
    ``n_events`` can shrink near the edges. The control moves the events of each sequence to
    as many random distinct positions of that sequence, ``n_controls`` times, and measures them
    the same way. Memory: one block of responses, plus ``(1 + n_controls) x (before + after + 1)``
    event weights per event and as many sums per unit.

    Args:
        source: :class:`Spikes` (from :func:`spikes`) or a Recording.
        where: the events: a boolean trial-table column (``"is_onset"``) or a query (``"pos_tag == 'NOUN'"``).
        window: an int n for offsets ``-n..+n`` (>= 1), or ``(before, after)`` (each >= 0).
        units: for a Recording, units of one site (``"attn.1"`` with ``indices``, ``("attn.1", [0])``,
            a unit table of one site); for Spikes, some of their units (indices, or a unit table),
            None for all.
        indices: unit indices of the site named by ``units``.
        include_bos: for a Recording, analyse BOS rows too (default False); Spikes keep the
            rows they were found on.
        control: ``"shuffle"`` or None (no control).
        n_controls: shuffles of the control (>= 1).
        seed: seeds the shuffles.
        progress: show a progress bar (Recording only: it streams the responses once).

    Returns:
        :class:`PSTHResult` (columns and meta keys in its docstring).

    Example:
        >>> import llmscope
        >>> from llmscope import psth
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> p = psth(rec, "is_repeat", window=3, units="attn.1", n_controls=20, progress=False)
        >>> p.df.columns[:4].tolist()
        ['site', 'unit', 'offset', 'rate']
    """
    before, after = events.span(window)
    if control not in CONTROLS:
        raise AnalysisError(f"unknown control {control!r}; choose one of {list(CONTROLS)}.")
    n_controls = draws(n_controls, "n_controls", "resample") if control else 0
    seed = count(seed, "seed", minimum=0)
    name, index, tokens, include_bos, provenance, summed = _psth_source(source, units, indices, include_bos, progress)
    is_event = events.rows(tokens, where)
    w, counts = events.weights(tokens, is_event, (before, after), n_controls, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = summed(w).reshape(*counts.shape, len(index)) / counts[:, :, None]  # [set, offset, unit]
    df = _psth_table(index, rate, counts[0], before)
    from_spikes = isinstance(source, Spikes)
    meta = {"site": name, "where": where, "window": [before, after],
            "measure": "spike rate" if from_spikes else "mean response",
            "spikes": {key: source.meta[key] for key in ("method", "threshold")} if from_spikes else None,
            "control": control, "n_controls": n_controls, "seed": seed, "n_events": int(is_event.sum()),
            "include_bos": include_bos, **provenance}
    return PSTHResult(df, meta)


__all__ = ["spikes", "Spikes", "psth", "PSTHResult", "METHODS"]
