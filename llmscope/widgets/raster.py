"""Raster: a site's units x tokens spikes, live in the notebook, thresholded in the page.

Rows are units in the order of :func:`llmscope.analysis.spikes.spikes` (with ``sort_by``, by
preferred category then selectivity), columns the analysed tokens. A unit spikes where its
response is strictly above its threshold (the spikes module's definition, ``method`` and
``threshold`` as there).

How the page thresholds without asking the kernel: the kernel builds a *ladder* of
``RUNGS`` threshold values around the one asked for (z-scores ``threshold * 2**s``, ``s`` evenly
over ``[-2, 2]``, or quantiles ``sigmoid(logit(threshold) + s)``, ``s`` over ``[-3, 3]``; the
middle rung is ``threshold`` itself, with the per-unit levels :func:`spikes` computed). Each
response is sent as one byte, its *code*: how many of its unit's rung levels it exceeds. A
unit spikes at rung ``k`` exactly where ``code > k``, so moving the slider rebuilds a 256-entry
colour table and repaints, with no kernel round trip and the same spikes as
``spikes(..., threshold=ladder[k])`` — one byte a cell, as a dense uint8 raster would cost.

What crosses the wire (:mod:`llmscope.widgets.wire`): the page holds only the visible window,
``codes[units, tokens]`` uint8 (a byte a cell, uncompressed), with its unit indices and token
texts. The first window and what never changes (sizes, the ladder) ride in the widget's own
state, its arrays as binary buffers, so they reach the page with the model, before it renders:
the first paint waits for no request. The page asks for another window when the user scrolls
or zooms (the kernel then drops the first one, so neither side keeps a stale copy); a click on
a unit fetches its tuning curve (float32 means and s.e.m.) and top examples, a click on a token
its context.

Memory: building reads the units' responses once (float32, up to 8 bytes a cell while it
works) and keeps the codes, 1 byte a cell (512 units x 20,000 tokens: 10 MB).

Example:
    >>> import llmscope
    >>> from llmscope import Raster
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> r = Raster(rec, "mlp.0", sort_by="pos_tag")
    >>> r.selected = [12]
    >>> r.selected.tolist()
    [('mlp.0', 12)]
    >>> with llmscope.intervene(model, llmscope.lesion(r.selected)):
    ...     logits = model("the dog runs .")
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import traitlets

from llmscope.analysis.examples import context_around, text_joiner, top_examples
from llmscope.analysis.responses import scalar
from llmscope.analysis.spikes import Spikes, spikes
from llmscope.stimuli.trials import rows
from llmscope.analysis.tuning import TuningResult, tuning
from llmscope.errors import SiteError, WidgetError
from llmscope.recording import Recording
from llmscope.vocabulary import renamed
from llmscope.sites import UnitsLike, parse_units, unit_labels
from llmscope.widgets import wire
from llmscope.widgets.base import LiveWidget, command, static

if TYPE_CHECKING:
    import plotly.graph_objects as go

RUNGS = 255  # threshold values on the slider: codes 0..255 fit a byte
MIDDLE = RUNGS // 2  # the rung of the threshold asked for
Z_OCTAVES = 2.0  # z-score rungs from threshold / 4 to threshold * 4
Q_LOGITS = 3.0  # quantile rungs from logit(threshold) - 3 to logit(threshold) + 3
MAX_CELLS = 4_000_000  # one window: 4 MB of codes at most
EXAMPLES = 8  # top examples shown for a clicked unit
CONTEXT = 6  # tokens either side of an example or a clicked token


def _ladder(method: str, threshold: float) -> np.ndarray:
    """``RUNGS`` increasing threshold arguments, ``threshold`` exactly at ``MIDDLE``."""
    s = np.linspace(-1.0, 1.0, RUNGS)
    if method == "zscore":
        ladder = threshold * 2.0 ** (Z_OCTAVES * s)
    else:
        logit = math.log(threshold / (1 - threshold))
        ladder = 1 / (1 + np.exp(-(logit + Q_LOGITS * s)))
    ladder[MIDDLE] = threshold
    return ladder


def _levels(x: np.ndarray, method: str, ladder: np.ndarray) -> np.ndarray:
    """Per-unit response levels of each rung, ``[units, RUNGS]`` (float64), as spikes() defines them."""
    if method == "zscore":
        mean, std = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
        return mean[:, None] + ladder[None, :] * std[:, None]
    return np.quantile(x, ladder, axis=0).T


def _codes(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``[units, tokens]`` uint8: how many rung levels of its unit each response exceeds."""
    codes = np.empty((x.shape[1], x.shape[0]), dtype=np.uint8)
    for u in range(x.shape[1]):
        codes[u] = np.searchsorted(levels[u], x[:, u], side="left")  # levels[k] < x for k < code
    codes[np.isnan(x).T] = 0  # a missing response never spikes
    return codes


def _check_range(name: str, lo: int, hi: int, n: int) -> None:
    if not 0 <= lo < hi <= n:
        raise WidgetError.Range(f"{name} range [{lo}, {hi}) is not inside 0..{n} (and not empty).")


class Raster(LiveWidget):
    """A live raster of ``site``'s units over the analysed tokens of ``recording``.

    Args:
        recording: a :class:`~llmscope.Recording`.
        site: a recorded site (``"mlp.0"``).
        units: unit indices of ``site`` or a ``(site, unit)`` table; None for all.
        sort_by: a label column (``"pos_tag"``): rows by preferred category, then AUC.
        threshold, method: as :func:`~llmscope.analysis.spikes.spikes` (the slider starts there).
        include_bos: analyse BOS rows too.

    Attributes (traits synced with the page):
        rung: the slider's position, ``0..RUNGS-1``; ``.threshold`` is ``ladder[rung]``.
        selection: selected unit indices of ``site`` (a click selects, shift-click adds, the
            arrow keys move it); ``.selected`` gives them as a ``(site, unit)`` MultiIndex, ready
            for ``lesion`` or a decoder, and takes a unit table, a MultiIndex or indices.
        view: ``(first row, end row, first token, end token)`` of the window on show.
        token: the clicked token column (-1 for none).
        _meta: sizes, site, method, the number of rungs and the ladder (float32), for the page; set once.
        _first_window: the window of the first view, as ``_window`` answers it, for the first
            paint; ``{}`` once the view moved.

    Also: ``.spikes`` (the :class:`~llmscope.analysis.spikes.Spikes` at the current
    threshold), ``.units`` (every unit, in row order), ``.ladder``, ``.figure()`` (the view as
    a static plotly figure). ``AblationPanel(model, stim, units=raster)`` follows the selection.

    Raises:
        AnalysisError, SiteError, ColumnError: as :func:`spikes` for bad arguments; WidgetError.Range
            for a rung or view out of range.

    Example:
        >>> import llmscope
        >>> from llmscope import Raster
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> Raster(rec, "attn.1", method="quantile", threshold=0.9).threshold
        0.9
    """

    _esm = static("raster.js")
    _css = static("raster.css")
    rung = traitlets.Int(MIDDLE).tag(sync=True)
    selection = traitlets.List(traitlets.Int()).tag(sync=True)
    view = traitlets.Tuple(traitlets.Int(), traitlets.Int(), traitlets.Int(), traitlets.Int(),
                           default_value=(0, 0, 0, 0)).tag(sync=True)
    token = traitlets.Int(-1).tag(sync=True)
    _meta = traitlets.Dict().tag(sync=True)
    _first_window = traitlets.Dict().tag(sync=True)

    @renamed(site="units", units="indices")
    def __init__(self, recording: Recording, units: UnitsLike, indices: Any = None, *, sort_by: str | None = None,
                 threshold: float = 3.0, method: str = "zscore", include_bos: bool = False, **kwargs: Any):
        sp = spikes(recording, units, indices, threshold=threshold, method=method, include_bos=include_bos,
                    sort_by=sort_by, progress=False)
        self._recording, self._spikes, self._sort_by = recording, sp, sort_by
        self._site = sp.meta["site"]
        self._units = sp.df.index.get_level_values("unit").to_numpy()
        self._labels = unit_labels(sp.df.index)
        self._preferred = sp.df["preferred"].astype(str).tolist() if sort_by else []
        self._keep = rows(recording.tokens, include_bos)
        self._rows = np.flatnonzero(self._keep)  # recording row of each raster column
        self.ladder = _ladder(method, sp.meta["threshold"])
        x = scalar(recording, self._site, self._units)[self._keep]
        levels = _levels(x, method, self.ladder)
        levels[:, MIDDLE] = sp.df["threshold"].to_numpy()  # the middle rung is spikes()' own
        levels = np.maximum.accumulate(levels, axis=1)  # rounding must not unsort a unit's rungs
        self._codes = _codes(x, levels)
        self._tuning: TuningResult | None = None
        text = recording.tokens["text"].astype(str)
        self._text, self._joiner = text.to_numpy(), text_joiner(text)
        n_units, n_tokens = self._codes.shape
        self._first_view = (0, min(n_units, 1000), 0, min(n_tokens, 1000))
        # in the constructor's state, so the comm's opening message carries them (not an update after)
        super().__init__(view=self._first_view, _meta=self._meta_data(),
                         _first_window=self._window_data(*self._first_view), **kwargs)

    # ------------------------------------------------------------------ traits and their checks

    @traitlets.validate("rung")
    def _check_rung(self, proposal: dict[str, Any]) -> int:
        k = proposal["value"]
        if not 0 <= k < RUNGS:
            raise WidgetError.Range(f"rung {k} is not a slider position: 0..{RUNGS - 1}.")
        return k

    @traitlets.validate("selection")
    def _check_selection(self, proposal: dict[str, Any]) -> list[int]:
        missing = sorted(set(proposal["value"]) - set(self._units.tolist()))
        if missing:
            raise SiteError(f"units {missing} of {self._site} are not in this raster "
                            f"({len(self._units)} units: {self._units[:10].tolist()}...).")
        return list(dict.fromkeys(proposal["value"]))

    @traitlets.validate("view")
    def _check_view(self, proposal: dict[str, Any]) -> tuple[int, int, int, int]:
        u0, u1, t0, t1 = proposal["value"]
        n_units, n_tokens = self._codes.shape
        _check_range("unit row", u0, u1, n_units)
        _check_range("token", t0, t1, n_tokens)
        if (u1 - u0) * (t1 - t0) > MAX_CELLS:
            raise WidgetError.Range(f"a window of {u1 - u0} x {t1 - t0} cells is more than {MAX_CELLS:,}: zoom in.")
        return u0, u1, t0, t1

    @traitlets.observe("view")
    def _drop_first_window(self, change: dict[str, Any]) -> None:
        """Once the view left the first one, the page asks for windows: no stale copy is kept."""
        if change["new"] != self._first_view:
            self._first_window = {}

    @property
    def threshold(self) -> float:
        """The threshold argument at the slider's position (``method`` as given)."""
        return float(self.ladder[self.rung])

    @property
    def spikes(self) -> Spikes:
        """The spikes at the slider's threshold (recomputed by :func:`spikes`, sorted as shown)."""
        if self.rung == MIDDLE:
            return self._spikes
        m = self._spikes.meta
        sp = spikes(self._recording, self._site, self._units.tolist(), threshold=self.threshold,
                    method=m["method"], include_bos=m["include_bos"], progress=False)
        return sp.reorder(self._units)

    @property
    def units(self) -> pd.MultiIndex:
        """Every unit of the raster, in row order: a ``(site, unit)`` MultiIndex."""
        return self._spikes.df.index

    @property
    def selected(self) -> pd.MultiIndex:
        """The selected units, a ``(site, unit)`` MultiIndex: ``lesion(raster.selected)``."""
        return pd.MultiIndex.from_tuples([(self._site, int(u)) for u in self.selection], names=["site", "unit"])

    @selected.setter
    def selected(self, units: Any) -> None:
        if isinstance(units, (pd.Index, pd.DataFrame, pd.Series)):
            pairs = parse_units(units)
            other = [spec for spec, _ in pairs if spec != self._site]
            if other:
                raise SiteError(f"these units belong to {other}, not to this raster's site {self._site}.")
            units = [int(i) for _, idx in pairs for i in np.atleast_1d(idx)]
        elif isinstance(units, (int, np.integer)) and not isinstance(units, bool):
            units = [int(units)]
        elif not (isinstance(units, (list, tuple)) and all(isinstance(u, (int, np.integer))
                                                            and not isinstance(u, bool) for u in units)):
            raise SiteError(f"selected takes unit indices of {self._site} or a (site, unit) table; got {units!r}.")
        self.selection = [int(u) for u in units]

    def codes(self) -> np.ndarray:
        """Every cell's code, ``[units (raster order), tokens]`` uint8 (``code > rung`` = spike)."""
        return self._codes

    # ------------------------------------------------------------------ commands of the page

    def _meta_data(self) -> dict[str, Any]:
        """What does not change with the window: sizes, the ladder, the method, the site."""
        n_units, n_tokens = self._codes.shape
        m = self._spikes.meta
        return {"site": self._site, "method": m["method"], "sort_by": self._sort_by,
                "n_units": n_units, "n_tokens": n_tokens, "rungs": RUNGS, "middle": MIDDLE,
                "ladder": wire.array(self.ladder.astype(np.float32))}

    def _window_data(self, u0: int, u1: int, t0: int, t1: int) -> dict[str, Any]:
        """Codes ``[u1 - u0, t1 - t0]`` uint8 of a window, how many of its cells hold each code
        (``counts``, int32 ``[256]``), its unit indices (int32, of the site in ``_meta``),
        preferred categories (with ``sort_by``) and token texts. The codes go uncompressed: zlib
        would cost the kernel ~20 ms and the page an inflate per 1e6 cells, more than a megabyte
        costs a local websocket. The counts give the spikes in view at every rung; numpy counts
        1e6 cells in ~1 ms, a pass the page would make in the interpreter before its first paint."""
        codes = np.ascontiguousarray(self._codes[u0:u1, t0:t1])
        return {"version": self.version, "u0": u0, "t0": t0, "units": wire.array(self._units[u0:u1].astype(np.int32)),
                "preferred": self._preferred[u0:u1] if self._sort_by else None,
                "tokens": self._text[self._rows[t0:t1]].tolist(), "codes": wire.array(codes),
                "counts": wire.array(np.bincount(codes.ravel(), minlength=256).astype(np.int32))}

    @command(u0=int, u1=int, t0=int, t1=int)
    def _window(self, u0: int, u1: int, t0: int, t1: int) -> dict[str, Any]:
        """The window ``[u0, u1) x [t0, t1)`` (see :meth:`_window_data`); the view trait follows."""
        self.view = (u0, u1, t0, t1)
        return self._window_data(u0, u1, t0, t1)

    @command(unit=int)
    def _unit(self, unit: int) -> dict[str, Any]:
        """One unit's tuning curve (for ``sort_by``, float32 means and s.e.m.) and top examples."""
        if unit not in set(self._units.tolist()):
            raise WidgetError.Unknown(f"unit {unit} of {self._site} is not in this raster: its units are "
                                      f"{self._units[:10].tolist()}... (click one).")
        out: dict[str, Any] = {"unit": unit, "label": f"{self._site}:{unit}", "curve": None}
        if self._sort_by:
            if self._tuning is None:
                self._tuning = tuning(self._recording, self._site, self._sort_by,
                                      include_bos=self._spikes.meta["include_bos"], progress=False)
            curve = self._tuning.curve(unit)
            out["curve"] = {"label": self._sort_by, "categories": curve["category"].astype(str).tolist(),
                            "mean": wire.array(curve["mean"].to_numpy(np.float32)),
                            "sem": wire.array(curve["sem"].to_numpy(np.float32))}
        ex = top_examples(self._recording, self._site, unit, k=EXAMPLES, context=CONTEXT,
                          include_bos=self._spikes.meta["include_bos"]).df
        out["examples"] = {key: ex[key].astype(str).tolist() for key in ("text", "left", "right")}
        out["examples"]["activation"] = wire.array(ex["activation"].to_numpy(np.float32))
        out["joiner"] = self._joiner
        return out

    @command(column=int)
    def _token(self, column: int) -> dict[str, Any]:
        """The context of one raster column: its text, the tokens around it, its labels."""
        _check_range("token", column, column + 1, len(self._rows))
        self.token = column
        row = int(self._rows[column])
        t = self._recording.tokens
        left, right = context_around(self._text, t["seq"].to_numpy(), row, CONTEXT, self._joiner)
        labels = {c: str(t[c].iloc[row]) for c in t.columns if c not in ("text", "token")}
        return {"column": column, "text": str(self._text[row]), "left": left, "right": right, "labels": labels,
                "joiner": self._joiner}

    # ------------------------------------------------------------------ static picture

    def figure(self) -> "go.Figure":
        """The view at the current threshold as a plotly heatmap (1 = spike), categorical units."""
        import plotly.graph_objects as go

        u0, u1, t0, t1 = self.view
        spikes_ = (self._codes[u0:u1, t0:t1] > self.rung).astype(np.uint8)
        text = [html.escape(str(s)) for s in self._text[self._rows[t0:t1]]]
        labels = self._labels[u0:u1]
        fig = go.Figure(go.Heatmap(z=spikes_, x=list(range(t0, t1)), y=labels, colorscale=[[0, "white"], [1, "black"]],
                                   showscale=False, customdata=np.tile(text, (len(labels), 1)),
                                   hovertemplate="%{y} at token %{x}: %{customdata}<extra></extra>"))
        selected = [lab for lab in labels if int(lab.rsplit(":", 1)[1]) in self.selection]
        if selected:
            fig.add_trace(go.Scatter(x=[t0] * len(selected), y=selected, mode="markers", showlegend=False,
                                     marker=dict(symbol="triangle-right", color="red", size=9), hoverinfo="skip"))
        fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels, autorange="reversed",
                         title="unit")
        fig.update_xaxes(title="token (analysed rows)")
        m = self._spikes.meta
        return fig.update_layout(title=f"spikes of {self._site} ({m['method']} > {self.threshold:.3g})"
                                       + (f", sorted by {self._sort_by}" if self._sort_by else ""))


__all__ = ["Raster", "RUNGS", "MIDDLE"]
