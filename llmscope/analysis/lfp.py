"""Field potentials: one population signal per site over token time, its spectrum, event-related
averages and Granger causality between sites, each beside a control.

An electrode's local field potential sums the currents of many cells near it. The model's
analogue here is one number per recorded site and token, the *field potential* (FP):

* ``mlp.L`` (and a raw hook): the mean response of the site's units (a neuron's activation);
* ``attn.L``: the mean over heads of each head's ``hook_z`` norm (how strongly it writes);
* ``resid.L``: the RMS of the residual stream, ``sqrt(mean_d x_d**2)`` (its norm over
  ``sqrt(d_model)``): the mean over dimensions of a residual vector carries little, its size does.

Time is the token position inside a sequence, so a frequency is in cycles per token and its
period in tokens. BOS rows stay out unless asked; the rows of each sequence must be contiguous
positions (a time series has no gaps), so a recording narrowed by ``select`` is refused.

The population is every unit of a site, or the units asked for (``units=("mlp.0", [3, 7])``:
the mean of those two neurons). The analyses take a :class:`FieldPotential` or a Recording
(then they compute it):

* :func:`lfp_spectrum`: Welch's power spectrum (scipy) per sequence, averaged, against the
  same signal with its tokens shuffled within each sequence (a permutation test per frequency,
  FDR, and a distance over all frequencies);
* :func:`event_average`: the event-related average of each site around trial-table events
  (``"sent_pos == 0"``, ``"repeat_onset"``), against as many events shuffled within their
  sequences;
* :func:`granger`: Granger causality between every ordered pair of sites (statsmodels, per
  sequence), against sequences mismatched between the two sites, and with a column saying
  whether the architecture has that connection at all (Jonas & Kording's test: the method finds
  "connections"; the wiring diagram says which exist).

Example:
    >>> import llmscope
    >>> from llmscope import field_potential, lfp_spectrum
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> fp = field_potential(rec, progress=False)
    >>> fp.df.columns.tolist(), fp.sites
    (['seq', 'pos', 'site', 'value'], ['mlp.0', 'mlp.1', 'attn.0', 'attn.1'])
    >>> spec = lfp_spectrum(fp, nperseg=16, n_controls=20)
    >>> sorted(spec.df.site.unique()) == sorted(fp.sites)
    True
"""

from __future__ import annotations

import functools
import html
import math
import warnings
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd

from llmscope.analysis import events, responses
from llmscope.analysis.stats import fdr
from llmscope.checks import count, draws, flag, fraction
from llmscope.errors import AnalysisError, SiteError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.result import Result
from llmscope.sites import Site, UnitsLike, parse_units
from llmscope.stimuli import trials
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go

VERDICTS = ("true positive", "false positive", "false negative", "true negative", "untestable")


# ---------------------------------------------------------------- the signal


class FieldPotential(Result):
    """The field potential of some sites over the analysed tokens (see the module docstring).

    ``.df``: long form, one row per site and token: ``seq``, ``pos``, ``site``, ``value``.

    ``.data``: ``signal [token, site]`` (float64), the same values as an array (``token`` is the
    row in the recording, with coordinates ``seq`` and ``pos``); :attr:`signal` is its numpy array.

    ``.meta``: ``sites``, ``units`` (site -> the unit indices averaged, None for all of them),
    ``definition`` (site -> ``"mean"`` or ``"rms"``), ``include_bos``, ``n_tokens``, ``n_seqs``
    and the recording's provenance (``model``, ``fingerprint``, ``stimuli``, ``complete``,
    ``recorded_seqs``, ``stimuli_seqs``).

    Attributes:
        tokens: the analysed rows of the trial table, one per row of ``signal``.
        site_info: the :class:`~llmscope.sites.Site` of each column.

    ``.plot(seq=None)`` draws one sequence (the first by default), a panel per site.
    The controls belong to the analyses of the signal (:func:`lfp_spectrum`,
    :func:`event_average`, :func:`granger`).
    """

    kind = "field_potential"
    tokens: pd.DataFrame
    site_info: list[Site]

    @property
    def signal(self) -> np.ndarray:
        """float64 ``[n_tokens, n_sites]``: column j is ``sites[j]`` (``.data["signal"]``)."""
        return self.data["signal"].to_numpy()

    @property
    def sites(self) -> list[str]:
        """The sites' names, in column order."""
        return [s.name for s in self.site_info]

    @renamed(sites="units")
    def subset(self, units: str | Sequence[str] | None = None) -> "FieldPotential":
        """The same signal for some of its sites, named (None: all); a SiteError names unknown
        ones. A field potential holds one signal per site: for some units of a site, compute
        ``field_potential(recording, units)``."""
        if units is None:
            return self
        cols = []
        for spec, idx in parse_units(units):
            name = spec.name if isinstance(spec, Site) else spec
            match = [j for j, s in enumerate(self.site_info) if name in (s.name, s.hook)]
            if not match:
                raise SiteError.Unknown(f"site {name!r} is not in this field potential; it holds {self.sites}.")
            if idx is not None:
                raise SiteError(f"a field potential holds one signal per site ({self.sites}); pick sites by name, "
                                f"or compute field_potential(recording, units) of the units {idx!r} of {name}.")
            cols.append(match[0])
        cols = list(dict.fromkeys(cols))
        if not cols:
            raise SiteError(f"no sites given; this field potential holds {self.sites}.")
        info = [self.site_info[j] for j in cols]
        meta = {**self.meta, "sites": [s.name for s in info],
                **{key: {s.name: self.meta[key][s.name] for s in info} for key in ("units", "definition")
                   if key in self.meta}}
        return _field_potential(self.signal[:, cols], self.tokens, info, meta)

    def plot(self, seq: int | None = None) -> "go.Figure":
        """One sequence's field potential (the first by default), a panel per site, tokens in the hover."""
        from plotly.subplots import make_subplots

        seqs = self.tokens["seq"].to_numpy()
        seq = int(seqs[0]) if seq is None else seq
        rows = seqs == seq
        if not rows.any():
            raise AnalysisError.Unknown(f"sequence {seq!r} is not in this field potential; it holds sequences "
                                        f"{np.unique(seqs)[:10].tolist()}...")
        pos = self.tokens["pos"].to_numpy()[rows]
        text = [html.escape(str(t)) for t in self.tokens["text"].to_numpy()[rows]] if "text" in self.tokens else None
        fig = make_subplots(rows=len(self.sites), cols=1, shared_xaxes=True, subplot_titles=self.sites)
        for j, name in enumerate(self.sites):
            fig.add_scatter(x=pos, y=self.signal[rows, j], mode="lines+markers", name=name, customdata=text,
                            hovertemplate="pos %{x}: %{customdata}<br>%{y:.4g}<extra>" + name + "</extra>",
                            row=j + 1, col=1)
        fig.update_xaxes(title="token position", row=len(self.sites), col=1)
        return fig.update_layout(title=f"field potential, sequence {seq}", showlegend=False,
                                 height=max(300, 160 * len(self.sites)))


def _definition(s: Site) -> str:
    return "rms" if s.kind == "resid" else "mean"


def _population(block: np.ndarray, definition: str) -> np.ndarray:
    """One number per row of ``block [n_rows, n_units]`` (float64)."""
    if definition == "rms":
        return np.sqrt(np.square(block, dtype=np.float64).mean(axis=1))
    return block.mean(axis=1, dtype=np.float64)


def _field_potential(signal: np.ndarray, tokens: pd.DataFrame, info: list[Site],
                     meta: dict[str, Any]) -> FieldPotential:
    import xarray as xr

    n, names = len(tokens), [s.name for s in info]
    seq, pos = tokens["seq"].to_numpy(), tokens["pos"].to_numpy()
    df = pd.DataFrame({"seq": np.tile(seq, len(info)), "pos": np.tile(pos, len(info)),
                       "site": np.repeat(names, n), "value": signal.T.ravel()})
    data = xr.Dataset({"signal": (("token", "site"), signal)},
                      coords={"token": tokens.index.to_numpy(), "site": names, "seq": ("token", seq),
                              "pos": ("token", pos)})
    fp = FieldPotential(df, meta, data)
    fp.tokens, fp.site_info = tokens, info
    return fp


def _populations(recording: Recording, units: UnitsLike | None) -> list[tuple[Site, np.ndarray | None]]:
    """Each site of ``units`` (None: every recorded site) with the indices of its units, None
    when they are all of them."""
    resolved = responses.resolve(recording, recording.sites if units is None else units)
    return [(s, None if len(idx) == s.n_units else idx) for s, idx in resolved]


@renamed(sites="units")
def field_potential(recording: Recording, units: UnitsLike | None = None, *, include_bos: bool = False,
                    progress: bool = True) -> FieldPotential:
    """The field potential of each site: one population number per analysed token.

    Streams each site's responses once, a block at a time (memory: one block plus the signal).

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: recorded sites (``"mlp.0"``, a list), or some of their units (``("mlp.0", [3, 7])``,
            a unit table): one signal per site, over the units given; None for every recorded site.
        include_bos: analyse BOS rows too.
        progress: show a progress bar.

    Returns:
        :class:`FieldPotential` (``.df``: ``seq``, ``pos``, ``site``, ``value``).

    Raises:
        SiteError: a site the recording lacks, a unit out of range.
        AnalysisError: not a Recording, or no tokens to analyse.

    Example:
        >>> import llmscope
        >>> from llmscope import field_potential
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> fp = field_potential(rec, ["attn.1", "mlp.0"], progress=False)
        >>> fp.signal.shape == (int((~rec.tokens.is_bos).sum()), 2), fp.meta["definition"]
        (True, {'attn.1': 'mean', 'mlp.0': 'mean'})
    """
    provenance = responses.check_recording(recording, "field_potential")
    populations = _populations(recording, units)
    keep = trials.rows(recording.tokens, include_bos)
    if not keep.any():
        why = ("an empty selection" if len(recording) == 0 else
               f"all {len(recording)} are BOS rows; pass include_bos=True" if not include_bos else "")
        raise AnalysisError(f"field_potential: no tokens to analyse ({why}); select some tokens.")
    signal = np.empty((int(keep.sum()), len(populations)))
    before = np.concatenate([[0], np.cumsum(keep)])
    with progress_bar(total=len(recording) * len(populations), unit="tok", desc="field potential",
                      show=progress) as bar:
        for j, (s, idx) in enumerate(populations):
            for rows, block in responses.blocks(recording, s.name, idx):
                kept = keep[rows]
                signal[before[rows.start]:before[rows.stop], j] = _population(block[kept], _definition(s))
                bar.update(rows.stop - rows.start)
    tokens = recording.tokens[keep]
    info = [s for s, _ in populations]
    meta = {"sites": [s.name for s in info],
            "units": {s.name: None if idx is None else idx.tolist() for s, idx in populations},
            "definition": {s.name: _definition(s) for s in info}, "include_bos": include_bos,
            "n_tokens": len(tokens), "n_seqs": int(tokens["seq"].nunique()), **provenance}
    return _field_potential(signal, tokens, info, meta)


class _Source(NamedTuple):
    """What an analysis of the field potential checks before any work, and how to get it."""

    tokens: pd.DataFrame  # the analysed rows
    site_info: list[Site]
    segments: list[slice]  # each sequence's rows
    load: Callable[[bool], FieldPotential]  # progress -> the field potential


def _source(source: Any, units: Any, include_bos: bool | None, analysis: str) -> _Source:
    """Check a FieldPotential (its sites subset) or a Recording (computed by ``load``)."""
    if include_bos is not None:
        flag(include_bos, "include_bos")
    if isinstance(source, FieldPotential):
        if include_bos is not None:
            raise AnalysisError(f"{analysis}: include_bos applies to a Recording; a FieldPotential keeps "
                                "the rows it was computed on.")
        fp = source.subset(units)
        return _Source(fp.tokens, fp.site_info, _segments(fp.tokens, analysis), lambda progress: fp)
    if isinstance(source, Recording):
        include_bos = bool(include_bos)
        info = [s for s, _ in _populations(source, units)]
        tokens = source.tokens[trials.rows(source.tokens, include_bos)]
        return _Source(tokens, info, _segments(tokens, analysis),
                       lambda progress: field_potential(source, units, include_bos=include_bos, progress=progress))
    raise AnalysisError.Type(f"{analysis}() takes a FieldPotential (field_potential(...)) or a Recording; "
                             f"got {type(source).__name__}.")


def _segments(tokens: pd.DataFrame, analysis: str) -> list[slice]:
    """Each sequence's rows as a slice; an AnalysisError unless each sequence is one run of
    consecutive positions (a time series with no gaps), sequences one after another."""
    if tokens.empty:
        raise AnalysisError(f"{analysis}: no tokens to analyse (only BOS rows? pass include_bos=True).")
    seq, pos = tokens["seq"].to_numpy(), tokens["pos"].to_numpy()
    new = np.r_[True, seq[1:] != seq[:-1]]
    starts = np.flatnonzero(new)
    if len(np.unique(seq)) != len(starts) or np.any(np.diff(pos)[~new[1:]] != 1):
        raise AnalysisError(f"{analysis} needs each sequence's tokens as one run of consecutive positions "
                            "(a time series without gaps), as a recording stores them; this one has gaps "
                            "(a recording narrowed by select?). Compute it on the whole recording.")
    stops = np.r_[starts[1:], len(seq)]
    return [slice(int(a), int(b)) for a, b in zip(starts, stops)]


# ---------------------------------------------------------------- permutation statistics


def _perm_p(real: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided permutation p of ``real [...]`` against ``null [n_controls, ...]`` (distance from the
    null's mean), ``(1 + #as far) / (1 + n_controls)``, and that mean; NaN where the null is all NaN."""
    with warnings.catch_warnings():  # a cell no shuffle reaches is NaN and stays so
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmean(null, axis=0)
        far = (np.abs(null - center) >= np.abs(real - center)).sum(0)
        p = (1 + far) / (1 + np.isfinite(null).sum(0))
    return np.where(np.isfinite(real) & np.isfinite(center), p, np.nan), center


def _band(null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return tuple(np.nanpercentile(null, [2.5, 97.5], axis=0))  # type: ignore[return-value]


# ---------------------------------------------------------------- spectrum


SHUFFLE_VALUES = 4_000_000  # signal values shuffled at once: shuffles are batched to this bound


def _welch_mean(groups: dict[int, np.ndarray], nperseg: int, rng: np.random.Generator | None = None,
                n: int = 1) -> np.ndarray:
    """Welch PSD per sequence averaged over sequences, ``[n, n_sites, n_freqs]``: of the signal
    itself (``rng`` None), or of ``n`` copies with each sequence's tokens shuffled (each copy,
    site and sequence on its own)."""
    from scipy.signal import welch

    total, n_seqs = 0.0, 0
    for x in groups.values():  # x: [n_sites, n_seqs of that length, length]
        if rng is not None:
            x = rng.permuted(np.broadcast_to(x, (n, *x.shape)), axis=-1)
        _, psd = welch(x, fs=1.0, nperseg=nperseg, axis=-1)
        total = total + psd.sum(axis=-2)
        n_seqs += x.shape[-2]
    return np.broadcast_to(total / n_seqs, (n, *np.shape(total)[-2:]))


class SpectrumResult(Result):
    """What :func:`lfp_spectrum` returns.

    ``.df``: one row per site and frequency: ``site``, ``frequency`` (cycles per token),
    ``period`` (tokens), ``power``, ``power_control`` (mean over the token shuffles),
    ``power_control_low`` and ``power_control_high`` (their 2.5 and 97.5 percentiles),
    ``log_ratio`` (``ln(power / power_control)``), ``p``, ``p_fdr``.

    ``.meta``: ``sites``, ``nperseg``, ``n_controls``, ``seed``, ``control``, ``n_seqs`` (used),
    ``n_seqs_short`` (left out), ``distance``, ``distance_control`` (mean over shuffles) and
    ``distance_p`` (dicts by site), ``units``, ``definition`` and the recording's provenance.

    ``.plot()``: power against frequency per site, the control's mean dotted inside its 95% band.
    """

    kind = "lfp_spectrum"

    def plot(self) -> "go.Figure":
        """Log power against frequency per site, the shuffled mean dotted inside its 95% band."""
        import plotly.colors
        import plotly.graph_objects as go

        df, m = self.df, self.meta
        palette = plotly.colors.qualitative.Plotly
        fig = go.Figure()
        for i, name in enumerate(m["sites"]):
            d, color = df[df.site == name], palette[i % len(palette)]
            label = f"{name} (d={m['distance'][name]:.2f}, p={m['distance_p'][name]:.3g})"
            fig.add_scatter(x=np.r_[d.frequency, d.frequency[::-1]],
                            y=np.r_[d.power_control_high, d.power_control_low[::-1]], fill="toself",
                            fillcolor=color, opacity=0.2, line=dict(width=0), hoverinfo="skip", legendgroup=name,
                            showlegend=False)
            fig.add_scatter(x=d.frequency, y=d.power_control, mode="lines", line=dict(color=color, dash="dot"),
                            legendgroup=name, name=f"{name} shuffled")
            fig.add_scatter(x=d.frequency, y=d.power, mode="lines+markers", line=dict(color=color), legendgroup=name,
                            name=label, customdata=d.period,
                            hovertemplate="f=%{x:.3f} (period %{customdata:.1f} tokens)<br>power %{y:.3g}<extra></extra>")
        fig.update_yaxes(type="log", title="power (per cycle/token)")
        return fig.update_layout(title=f"field-potential spectrum (Welch, {m['nperseg']}-token segments) "
                                       f"vs {m['n_controls']} token shuffles",
                                 xaxis_title="frequency (cycles per token)")


@renamed(sites="units", n_shuffle="n_controls")
def lfp_spectrum(source: "FieldPotential | Recording", units: UnitsLike | None = None, *, nperseg: int = 32,
                 n_controls: int = 200, seed: int = 0, include_bos: bool | None = None,
                 progress: bool = True) -> SpectrumResult:
    """Power spectrum of each site's field potential (Welch) against a shuffled-token control.

    Each sequence's spectrum is Welch's estimate (``scipy.signal.welch``, Hann windows of
    ``nperseg`` tokens overlapping by half, each segment's mean removed), in power per cycle per
    token; a site's spectrum is the mean over sequences. The control shuffles the tokens of each
    sequence (same values, no order), ``n_controls`` times: whatever differs from it is temporal
    structure. Sequences shorter than ``nperseg`` are left out (``meta["n_seqs_short"]``).
    Frequency 0, the segment mean that Welch removes, is left out.

    Statistics, from the shuffles (a permutation test): at each frequency, ``p`` is the share of
    shuffles whose log power is at least as far from the shuffles' mean as the real one, BH-FDR
    over all rows in ``p_fdr``; over all frequencies, the *distance* is the mean absolute log
    ratio to the shuffles' mean, with its own permutation p.

    Args:
        source: a :class:`FieldPotential` or a Recording.
        units: some of its sites (None: all); for a Recording, any units (see :func:`field_potential`).
        nperseg: Welch segment length in tokens (>= 4); frequencies are ``k / nperseg``.
        n_controls: shuffles of the control (>= 1).
        seed: seeds the shuffles.
        include_bos: for a Recording, analyse BOS rows too (default False).
        progress: show a progress bar.

    Returns:
        :class:`SpectrumResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: ``nperseg`` below 4 or longer than every sequence, bad ``n_controls``,
            a signal with gaps.
        SiteError: an unknown site.

    Example:
        >>> import llmscope
        >>> from llmscope import lfp_spectrum
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> spec = lfp_spectrum(rec, "attn.1", nperseg=16, n_controls=20, progress=False)
        >>> spec.df.frequency.tolist()[:2], spec.meta["n_seqs"]
        ([0.0625, 0.125], 4)
    """
    nperseg = count(nperseg, "nperseg", minimum=4)
    n_controls = draws(n_controls, "n_controls", "resample")
    seed = count(seed, "seed", minimum=0)
    src = _source(source, units, include_bos, "lfp_spectrum")
    segments = src.segments
    lengths = np.array([s.stop - s.start for s in segments])
    if lengths.max() < nperseg:
        raise AnalysisError.Range(f"lfp_spectrum: Welch needs sequences of at least nperseg={nperseg} tokens; the "
                                  f"longest here has {lengths.max()}. Lower nperseg or use longer stimuli.")
    fp = src.load(progress)
    signal = fp.signal
    groups = {int(n): np.stack([signal[s] for s, k in zip(segments, lengths) if k == n], axis=1).transpose(2, 1, 0)
              for n in np.unique(lengths[lengths >= nperseg])}  # length -> [n_sites, n_seqs, length]
    real = _welch_mean(groups, nperseg)[0, :, 1:]
    rng = np.random.default_rng(seed)
    batch = max(1, SHUFFLE_VALUES // signal.size)
    null = []  # [n_controls, n_sites, n_freqs] in batches
    with progress_bar(total=n_controls, desc="spectrum shuffles", show=progress) as bar:
        for start in range(0, n_controls, batch):
            null.append(_welch_mean(groups, nperseg, rng, min(batch, n_controls - start))[:, :, 1:])
            bar.update(null[-1].shape[0])
    null = np.concatenate(null)
    log_real, log_null = np.log(real), np.log(null)
    p, center = _perm_p(log_real, log_null)
    low, high = _band(null)
    dist = np.abs(log_real - center).mean(-1)
    dist_null = np.abs(log_null - center).mean(-1)  # [n_controls, n_sites]
    dist_p = (1 + (dist_null >= dist).sum(0)) / (1 + n_controls)
    freq = np.arange(1, real.shape[1] + 1) / nperseg
    k = len(freq)
    df = pd.DataFrame({"site": np.repeat(fp.sites, k), "frequency": np.tile(freq, len(fp.sites)),
                       "period": np.tile(1 / freq, len(fp.sites)), "power": real.ravel(),
                       "power_control": np.exp(center).ravel(), "power_control_low": low.ravel(),
                       "power_control_high": high.ravel(), "log_ratio": (log_real - center).ravel(), "p": p.ravel()})
    df["p_fdr"] = fdr(df["p"].to_numpy())
    meta = {**_provenance(fp), "nperseg": nperseg, "n_controls": n_controls, "seed": seed,
            "control": "each sequence's tokens shuffled", "n_seqs": int((lengths >= nperseg).sum()),
            "n_seqs_short": int((lengths < nperseg).sum()), "distance": dict(zip(fp.sites, dist.tolist())),
            "distance_control": dict(zip(fp.sites, dist_null.mean(0).tolist())),
            "distance_p": dict(zip(fp.sites, dist_p.tolist()))}
    return SpectrumResult(df, meta)


def _provenance(fp: FieldPotential) -> dict[str, Any]:
    keys = ("sites", "units", "definition", "include_bos", "model", "fingerprint", "stimuli", "complete",
            "recorded_seqs", "stimuli_seqs")
    return {key: fp.meta[key] for key in keys if key in fp.meta}


# ---------------------------------------------------------------- event-related averages


class EventAverageResult(Result):
    """What :func:`event_average` returns.

    ``.df``: one row per site and offset: ``site``, ``offset``, ``value`` (mean field potential
    over events), ``value_control`` (mean over the shuffled events), ``value_control_low``,
    ``value_control_high`` (its 2.5 and 97.5 percentiles), ``p``, ``p_fdr``, ``n_events``
    (events counted at that offset).

    ``.meta``: ``where``, ``window`` (``[before, after]``), ``n_events``, ``n_controls``, ``seed``,
    ``control``, ``change``, ``change_control`` and ``change_p`` (dicts by site), ``sites``,
    ``units``, ``definition`` and provenance.

    ``.plot()``: a panel per site, the average against offset, the control's mean dotted in its band.
    """

    kind = "event_average"

    def plot(self) -> "go.Figure":
        """A panel per site: the event average against offset, the shuffled mean dotted in its band."""
        from plotly.subplots import make_subplots

        df, m = self.df, self.meta
        titles = [f"{s}: change {m['change'][s]:.3g} (p={m['change_p'][s]:.3g})" for s in m["sites"]]
        fig = make_subplots(rows=len(m["sites"]), cols=1, shared_xaxes=True, subplot_titles=titles)
        for j, name in enumerate(m["sites"]):
            d = df[df.site == name]
            fig.add_scatter(x=np.r_[d.offset, d.offset[::-1]], y=np.r_[d.value_control_high, d.value_control_low[::-1]],
                            fill="toself", fillcolor="grey", opacity=0.25, line=dict(width=0), hoverinfo="skip",
                            showlegend=False, row=j + 1, col=1)
            fig.add_scatter(x=d.offset, y=d.value_control, mode="lines", line=dict(color="grey", dash="dot"),
                            name="shuffled events", showlegend=j == 0, row=j + 1, col=1)
            fig.add_scatter(x=d.offset, y=d.value, mode="lines+markers", line=dict(color="black"), name="events",
                            showlegend=j == 0, row=j + 1, col=1)
            fig.add_vline(x=0, line=dict(color="grey", dash="dash"), row=j + 1, col=1)
        fig.update_xaxes(title="offset from event (tokens)", row=len(m["sites"]), col=1)
        return fig.update_layout(title=f"field potential around {html.escape(m['where'])} ({m['n_events']} events)",
                                 height=max(300, 180 * len(m["sites"])))


def _before_after(fn: Callable) -> Callable:
    """Accept event_average's old ``before=``/``after=`` for one release: they make ``window=(before, after)``."""
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        old = {key: kwargs.pop(key) for key in ("before", "after") if key in kwargs}
        if old:
            if "window" in kwargs or len(args) > 2:
                raise AnalysisError.Type(f"event_average() got window= and {' and '.join(k + '=' for k in old)}; these are "
                                         "the old form of window=(before, after): pass window only.")
            warnings.warn("event_average(before=..., after=...) is now event_average(window=(before, after)); before "
                          "and after will be removed in the next release.", FutureWarning, stacklevel=3)
            kwargs["window"] = (old.get("before", 5), old.get("after", 10))
        return fn(*args, **kwargs)

    return inner


@renamed(event="where", sites="units", n_shuffle="n_controls")
@_before_after
def event_average(source: "FieldPotential | Recording", where: str, window: int | tuple[int, int] = (5, 10), *,
                  units: UnitsLike | None = None, n_controls: int = 200, seed: int = 0,
                  include_bos: bool | None = None, progress: bool = True) -> EventAverageResult:
    """Event-related average of each site's field potential at offsets ``-before..+after`` tokens
    around trial-table events, within each event's sequence, against shuffled events.

    An offset that leaves the sequence is not counted, so ``n_events`` shrinks near the edges.
    The control moves each sequence's events to as many random distinct positions of the same
    sequence, ``n_controls`` times (as :func:`~llmscope.analysis.spikes.psth` does). ``p`` at an
    offset is the share of shuffles at least as far from the shuffles' mean as the real average
    (BH-FDR over all rows in ``p_fdr``). The *change* of a site is the classic baseline-corrected
    amplitude: the mean over offsets ``0..after`` minus the mean over ``-before..-1``, tested
    against the same change of the shuffled events.

    Args:
        source: a :class:`FieldPotential` or a Recording.
        where: the events: a boolean trial-table column (``"repeat_onset"``) or a query (``"sent_pos == 0"``).
        window: ``(before, after)`` tokens around the event (before >= 1: the baseline; after >= 0),
            or an int n for ``(n, n)``.
        units: some of the sites (None: all); for a Recording, any units (see :func:`field_potential`).
        n_controls: shuffles of the control (>= 1).
        seed: seeds the shuffles.
        include_bos: for a Recording, analyse BOS rows too (default False).
        progress: show a progress bar (Recording only: computing the field potential).

    Returns:
        :class:`EventAverageResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: a window longer than every sequence, a bad ``window`` or ``n_controls``,
            events that are not a boolean selection or match nothing.
        ColumnError: events naming a column the trial table lacks.
        SiteError: an unknown site.

    Example:
        >>> import llmscope
        >>> from llmscope import event_average
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> ea = event_average(rec, "sent_pos == 0", window=(2, 3), units="attn.1", n_controls=20)
        >>> ea.df.offset.tolist()
        [-2, -1, 0, 1, 2, 3]
    """
    before, after = events.span(window, baseline=True)
    n_controls = draws(n_controls, "n_controls", "resample")
    seed = count(seed, "seed", minimum=0)
    src = _source(source, units, include_bos, "event_average")
    longest = max(s.stop - s.start for s in src.segments)
    if before + after + 1 > longest:
        raise AnalysisError.Range(f"event_average: the window of {before} + 1 + {after} tokens is longer than every "
                                  f"sequence (the longest has {longest} tokens); shorten the window.")
    is_event = events.rows(src.tokens, where)
    fp = src.load(progress)
    w, counts = events.weights(fp.tokens, is_event, (before, after), n_controls, seed)
    with np.errstate(invalid="ignore", divide="ignore"):  # an offset no event reaches is NaN
        avg = (w @ fp.signal).reshape(*counts.shape, -1) / counts[:, :, None]
    real, null = avg[0], avg[1:]  # [offset, site], [shuffle, offset, site]
    p, center = _perm_p(real, null)
    low, high = _band(null)
    with warnings.catch_warnings():  # a shuffle whose events reach no offset before (or after) is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        change = np.nanmean(avg[:, before:], axis=1) - np.nanmean(avg[:, :before], axis=1)  # [set, site]
    change_p, change_center = _perm_p(change[0], change[1:])
    offsets = np.arange(-before, after + 1)
    n_sites = len(fp.sites)
    df = pd.DataFrame({"site": np.repeat(fp.sites, len(offsets)), "offset": np.tile(offsets, n_sites),
                       "value": real.T.ravel(), "value_control": center.T.ravel(),
                       "value_control_low": low.T.ravel(), "value_control_high": high.T.ravel(), "p": p.T.ravel(),
                       "n_events": np.tile(counts[0].astype(np.int64), n_sites)})
    df.insert(len(df.columns) - 1, "p_fdr", fdr(df["p"].to_numpy()))
    meta = {**_provenance(fp), "where": where, "window": [before, after], "n_events": int(is_event.sum()),
            "n_controls": n_controls, "seed": seed, "control": "each sequence's events moved to random positions of it",
            "change": dict(zip(fp.sites, change[0].tolist())),
            "change_control": dict(zip(fp.sites, change_center.tolist())),
            "change_p": dict(zip(fp.sites, change_p.tolist()))}
    return EventAverageResult(df, meta)


# ---------------------------------------------------------------- Granger causality


def _stage(s: Site) -> int:
    """Where a site sits in the forward pass: resid.L = 3L, attn.L = 3L + 1, mlp.L = 3L + 2."""
    offset = {"resid": 0, "attn": 1, "mlp": 2}.get(s.kind)
    if offset is None:
        raise SiteError(f"the wiring is known for mlp.L, attn.L and resid.L sites, not for {s.name!r}.")
    return 3 * s.layer + offset


def wired(source: Site, target: Site) -> bool:
    """Whether the architecture lets ``source`` at earlier tokens influence ``target`` at later
    ones: only attention moves information between positions, and only backwards, so some
    attention layer M must read a residual stream ``source`` writes into (resid.M with
    ``stage(source) <= 3M``) and feed ``target`` (``3M < stage(target)``). Nothing flows from
    a later layer to an earlier one, nor from attn.L or mlp.L to the same block's mlp.L.

    Example:
        >>> import llmscope
        >>> from llmscope.analysis.lfp import wired
        >>> model = llmscope.load("grammar-2l")
        >>> from llmscope.sites import site
        >>> wired(site(model, "mlp.0"), site(model, "attn.1")), wired(site(model, "mlp.1"), site(model, "mlp.0"))
        (True, False)
    """
    first_read = 3 * math.ceil(_stage(source) / 3)  # the first resid.M that holds what source wrote
    return first_read < _stage(target)


def _granger_seq(target: np.ndarray, source: np.ndarray, maxlag: int) -> tuple[float, float]:
    """statsmodels' ssr F-test (F, p) that ``source``'s last ``maxlag`` values help predict ``target``
    beyond its own; NaN when the test cannot be computed (a constant signal)."""
    from statsmodels.tools.sm_exceptions import InfeasibleTestError
    from statsmodels.tsa.stattools import grangercausalitytests

    try:
        res = grangercausalitytests(np.column_stack([target, source]), [maxlag])
    except InfeasibleTestError:
        return math.nan, math.nan
    F, p = res[maxlag][0]["ssr_ftest"][:2]
    return float(F), float(p)


def _halves(usable: list[slice], n_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Split the sequences at random into two halves: each row's half (-1 for rows of sequences
    left out), and the control's ``(target, source)`` sequence pairs, one from each half, both ways."""
    order = rng.permutation(len(usable))
    first = (len(usable) + 1) // 2
    half = np.full(n_rows, -1)
    for rank, i in enumerate(order):
        half[usable[i]] = rank >= first
    pairs = [(int(i), int(k)) for i, k in zip(order[:first], order[first:])]
    return half, pairs + [(k, i) for i, k in pairs]


def _combine(tests: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Mean F, Fisher's combined p and the share of tests with p < alpha, from ``tests [n, (F, p)]``
    (tests that could not be computed left out)."""
    from scipy.stats import combine_pvalues

    F, p = tests[:, 0], tests[:, 1]
    ok = np.isfinite(p)
    if not ok.any():
        return math.nan, math.nan, math.nan
    return float(np.mean(F[ok])), float(combine_pvalues(p[ok], method="fisher").pvalue), float((p[ok] < alpha).mean())


class GrangerResult(Result):
    """What :func:`granger` returns.

    ``.df``: one row per ordered pair of sites: ``source``, ``target``, ``wired`` (the
    architecture has the connection), ``F`` (mean over sequences), ``p`` (Fisher's combination),
    ``p_fdr``, ``significant`` (``p_fdr < alpha``), ``frac_significant`` (share of sequences with
    p < alpha), the same for the mismatched-sequence control (``F_control``, ``p_control``,
    ``frac_significant_control``, ``p_fdr_control``, ``significant_control``) and ``verdict``
    (one of :data:`VERDICTS`).

    ``.meta``: ``maxlag``, ``alpha``, ``seed``, ``control``, ``n_seqs`` (used), ``n_seqs_short``
    (left out), ``sites``, ``units``, ``definition``, provenance.

    ``.plot()``: source x target heatmaps of -log10 ``p_fdr``, real beside control.
    """

    kind = "granger"

    def plot(self) -> "go.Figure":
        """Source x target heatmaps of -log10 p_fdr, real beside control; an x marks a pair the
        architecture does not wire."""
        from plotly.subplots import make_subplots

        df, m = self.df, self.meta
        names = m["sites"]
        fig = make_subplots(rows=1, cols=2, subplot_titles=["Granger (field potentials)",
                                                            "control (mismatched sequences)"])
        for col, (p, F) in enumerate((("p_fdr", "F"), ("p_fdr_control", "F_control")), start=1):
            grid = df.pivot(index="target", columns="source", values=p).reindex(index=names, columns=names)
            Fs = df.pivot(index="target", columns="source", values=F).reindex(index=names, columns=names)
            wire = df.pivot(index="target", columns="source", values="wired").reindex(index=names, columns=names)
            text = [[("" if pd.isna(f) else f"F={f:.2f}" + ("" if w else " ✗")) for f, w in zip(fr, wr)]
                    for fr, wr in zip(Fs.to_numpy(), wire.to_numpy())]
            z = -np.log10(np.clip(grid.to_numpy(dtype=float), 1e-300, 1))
            fig.add_heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", coloraxis="coloraxis",
                            hovertemplate="%{x} → %{y}: -log10 p_fdr %{z:.2f}<br>%{text}<extra></extra>",
                            row=1, col=col)
        fig.update_xaxes(title="source")
        fig.update_yaxes(title="target", autorange="reversed")
        return fig.update_layout(title=f"Granger causality, maxlag {m['maxlag']} (✗: no such connection in the model)",
                                 coloraxis=dict(colorscale="Viridis", colorbar=dict(title="-log10 p_fdr")))


@renamed(sites="units")
def granger(source: "FieldPotential | Recording", units: UnitsLike | None = None, *, maxlag: int = 2,
            alpha: float = 0.05, seed: int = 0, include_bos: bool | None = None,
            progress: bool = True) -> GrangerResult:
    """Granger causality between the field potentials of every ordered pair of sites, reported
    against the architecture's real wiring and a mismatched-sequence control.

    Each site's mean over sequences at each position (the ensemble mean) is removed first, as
    multi-trial Granger analyses do (Ding et al. 2000): a response locked to position is shared
    by every sequence and would otherwise look like a connection, even between mismatched ones.
    The sequences are split at random into two halves and each half's mean is removed from its
    own sequences, so that the control can pair a target from one half with a source from the
    other and no sequence enters both sides of a control test (one mean over all sequences
    would leak ``1 / n_seqs`` of each real coupling into the control).
    Then, for each sequence, statsmodels' ``grangercausalitytests`` fits the target's field potential
    on its own last ``maxlag`` values, then adds the source's, and gives the F-test of the gain
    (``ssr_ftest``); a pair's ``F`` is the mean over sequences and ``p`` Fisher's combination of
    the sequences' p-values (BH-FDR over pairs in ``p_fdr``). The control runs the same test with
    the source taken from a sequence of the other half (paired at random, both ways, cut to the
    shorter): no influence is possible there, so its mean F should be near 1, its p uniform and
    about ``alpha`` of its tests significant.

    ``wired`` says whether the architecture can carry an influence from the source's past to the
    target (:func:`wired`: attention looks only back; layer L feeds layer L+1 and later, resid.L
    feeds later sites; nothing flows back). Granger does not know that: the token sequence drives
    every site, so a significant pair may be a shared input rather than a connection.
    ``verdict`` sets the test against the wiring: ``"true positive"`` (significant and wired),
    ``"false positive"`` (significant, but the architecture has no such connection),
    ``"false negative"``, ``"true negative"``, and ``"untestable"`` when no sequence could be
    tested (a constant signal: statsmodels' ``InfeasibleTestError``; its F and p are NaN).

    Sequences of ``3 * maxlag + 1`` tokens or fewer (too short for the test) are left out.

    Args:
        source: a :class:`FieldPotential` or a Recording.
        units: two or more ``mlp.L``, ``attn.L`` or ``resid.L`` sites (None: all of them); for a
            Recording, any units of such sites (see :func:`field_potential`).
        maxlag: tokens of the past in both models (>= 1).
        alpha: significance level for ``significant`` and ``frac_significant``.
        seed: seeds the split into halves and the control's pairing.
        include_bos: for a Recording, analyse BOS rows too (default False).
        progress: show a progress bar.

    Returns:
        :class:`GrangerResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: fewer than two sites, a raw hook site (its place in the wiring is
            unknown), a ``maxlag`` too big for every sequence or leaving fewer than 2 sequences,
            a bad ``alpha``, a signal with gaps.
        SiteError: an unknown site.

    Example:
        >>> import llmscope
        >>> from llmscope import granger
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> g = granger(rec, ["mlp.0", "mlp.1"], progress=False)
        >>> g.df[["source", "target", "wired"]].values.tolist()
        [['mlp.0', 'mlp.1', True], ['mlp.1', 'mlp.0', False]]
    """
    maxlag = count(maxlag, "maxlag")
    alpha = fraction(alpha, "alpha")
    seed = count(seed, "seed", minimum=0)
    src = _source(source, units, include_bos, "granger")
    if len(src.site_info) < 2:
        raise AnalysisError(f"granger needs at least two sites; got {[s.name for s in src.site_info]}.")
    raw = [s.name for s in src.site_info if s.kind not in ("mlp", "attn", "resid")]
    if raw:
        raise AnalysisError(f"granger reports each pair against the model's wiring, known for mlp.L, attn.L and "
                            f"resid.L sites only; leave out {raw}.")
    segments = src.segments
    lengths = np.array([s.stop - s.start for s in segments])
    usable = [s for s, n in zip(segments, lengths) if n > 3 * maxlag + 1]
    if len(segments) < 2:
        raise AnalysisError(f"granger needs at least two sequences (its control pairs one sequence's source with "
                            f"another's target); these stimuli have {len(segments)}. Record more sequences.")
    if len(usable) < 2:
        raise AnalysisError.Range(
            f"granger: maxlag={maxlag} needs sequences of more than {3 * maxlag + 1} tokens, and at least two of "
            f"them (one for the control to mismatch); {len(usable)} of {len(segments)} are that long (the longest "
            f"has {lengths.max()}). Lower maxlag, or record longer sequences.")
    fp = src.load(progress)
    half, mismatched = _halves(usable, len(fp.tokens), np.random.default_rng(seed))
    ensemble = pd.DataFrame(fp.signal).groupby([half, fp.tokens["pos"].to_numpy()]).transform("mean")
    signal = fp.signal - ensemble.to_numpy()
    pairs = [(a, b) for a in range(len(fp.sites)) for b in range(len(fp.sites)) if a != b]
    rows = []
    with progress_bar(total=len(pairs) * (len(usable) + len(mismatched)), desc="granger", show=progress) as bar:
        for a, b in pairs:
            real = np.array([_granger_seq(signal[seg, b], signal[seg, a], maxlag) for seg in usable])
            bar.update(len(usable))
            control = []
            for i, k in mismatched:
                n = min(usable[i].stop - usable[i].start, usable[k].stop - usable[k].start)
                control.append(_granger_seq(signal[usable[i], b][:n], signal[usable[k], a][:n], maxlag))
            bar.update(len(mismatched))
            (F, p, frac), (Fc, pc, frac_c) = _combine(real, alpha), _combine(np.array(control), alpha)
            rows.append({"source": fp.sites[a], "target": fp.sites[b],
                         "wired": wired(fp.site_info[a], fp.site_info[b]), "F": F, "p": p,
                         "frac_significant": frac, "F_control": Fc, "p_control": pc,
                         "frac_significant_control": frac_c})
    df = pd.DataFrame(rows)
    df.insert(5, "p_fdr", fdr(df["p"].to_numpy()))
    df.insert(6, "significant", df["p_fdr"] < alpha)
    df["p_fdr_control"] = fdr(df["p_control"].to_numpy())
    df["significant_control"] = df["p_fdr_control"] < alpha
    df["verdict"] = np.select([df.p.isna(), df.significant & df.wired, df.significant & ~df.wired, df.wired],
                              [VERDICTS[4], *VERDICTS[:3]], VERDICTS[3])
    meta = {**_provenance(fp), "maxlag": maxlag, "alpha": alpha, "seed": seed, "n_seqs": len(usable),
            "n_seqs_short": len(segments) - len(usable),
            "control": "each target's sequence paired with a source's sequence from the other half"}
    return GrangerResult(df, meta)


__all__ = ["FieldPotential", "field_potential", "SpectrumResult", "lfp_spectrum", "EventAverageResult",
           "event_average", "GrangerResult", "granger", "wired", "VERDICTS"]
