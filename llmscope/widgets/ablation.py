"""AblationPanel: lesion and stimulate units with sliders, and watch the model's behaviour change.

One slider per unit, head or named group of units, each a gain from 0 to 2 (0 lesions, 1
leaves the units intact, above 1 is microstimulation), and a zero / mean-ablation switch. In
``"zero"`` mode a slider at ``g`` multiplies its units by ``g``; in ``"mean"`` mode it scales
their deviation from their mean over the stimuli themselves, ``mean + g * (x - mean)``, so 0
is a mean ablation (exactly :class:`~llmscope.interventions.lesion` with ``mode="mean"``).

Each slider move in the page (debounced there; stale answers dropped by sequence number) asks
the kernel to run the model once with :func:`~llmscope.interventions.intervene`, and the
page redraws the next-token distribution (top ``k`` tokens, baseline beside intervened) and
a behaviour metric against its baseline: the mean next-token loss on the stimuli, or, for
minimal-pair stimuli (columns ``good_id``, ``bad_id``, ``is_target``), the mean logit
difference. Hooks live only inside one command: the model is pristine between moves, when no
slider is off 1 (no hook is attached at all), after an error and after the widget is closed.

Units can follow another widget live (``units=raster`` or ``panel.link(raster)``): the units
selected in a :class:`~llmscope.widgets.raster.Raster`, or the head focused in an
:class:`~llmscope.widgets.attention.AttentionMap`, become the sliders as the user picks them
(a unit that stays keeps its gain; a new one starts at 1).

Example:
    >>> import llmscope
    >>> from llmscope import AblationPanel
    >>> model = llmscope.load("grammar-2l")
    >>> panel = AblationPanel(model, "the dog runs . the dog", units=[("attn.1", 0), ("attn.0", 2)])
    >>> panel.gains
    {('attn.1', 0): 1.0, ('attn.0', 2): 1.0}
    >>> panel.value == panel.baseline   # every slider at 1: the intact model
    True
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping

import numpy as np
import pandas as pd
import torch
import traitlets

from llmscope.stimuli import trials
from llmscope.behaviour import check_logit_diff, logit_diff, loss
from llmscope.checks import choice, number
from llmscope.errors import AnalysisError, InterventionError, PromptError, WidgetError
from llmscope.interventions import Intervention, gain, intervene, steer
from llmscope.recording import record
from llmscope.sites import Site, UnitsLike, table_index, resolve_units, unit_index
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.english import from_texts
from llmscope.widgets import wire
from llmscope.widgets.attention import AttentionMap
from llmscope.widgets.base import LiveWidget, command, static
from llmscope.widgets.raster import Raster
from llmscope.stimuli.core import as_stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

MODES = ("zero", "mean")
GAIN_RANGE = (0.0, 2.0)
GAIN_STEP = 0.05  # the sliders' step (the page snaps to it)
PAIRED = ("good_id", "bad_id", "is_target")
METRICS = ("loss", "logit_diff")


@dataclass
class _Slider:
    """One slider: its key in ``gains``, its label, and its units resolved against the model."""

    key: Hashable
    label: str
    units: list[tuple[Site, np.ndarray]]
    mean: dict[str, torch.Tensor] | None = None  # hook -> a site-shaped vector, zero off the units


def _sliders(model: "TransformerBridge", units: Any) -> list[_Slider]:
    """A dict ``name -> units`` gives one slider per name; anything else, one per unit (a
    table's in its row order)."""
    if isinstance(units, Mapping):
        if not units:
            raise AnalysisError("units={} names no group: give {name: units, ...} or a unit table.")
        out = []
        for name, group in units.items():
            if not isinstance(name, str) or not name:
                raise AnalysisError(f"a group of units is named by a non-empty string, got {name!r}.")
            out.append(_Slider(name, name, resolve_units(model, group)))
        return out
    index = unit_index(model, units)  # checks every unit; sorted within each site
    table = table_index(units)
    if table is not None:  # a table's rows keep their order (an analysis's best unit first)
        index = table.drop_duplicates()
    return [_Slider((s, int(u)), f"{s}:{int(u)}", resolve_units(model, [(s, [int(u)])])) for s, u in index]


def _followed(source: Raster | AttentionMap) -> tuple[str, Callable[[], Any], Any]:
    """What a linked panel follows in ``source``: the trait that changes, the units it stands
    for now, and every unit it can ever stand for (checked against the model once, at link)."""
    if isinstance(source, Raster):
        return "selection", lambda: source.selected, source.units
    if isinstance(source, AttentionMap):
        cfg = source._model.cfg
        every = [(f"attn.{L}", list(range(cfg.n_heads))) for L in range(cfg.n_layers)]
        return "focus", lambda: [source.unit], every
    raise AnalysisError(f"an AblationPanel links to a Raster (its selected units) or an AttentionMap (its "
                        f"focused head); got {type(source).__name__}.")


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


class AblationPanel(LiveWidget):
    """Sliders that lesion (0), keep (1) or stimulate (up to 2) units of ``model``, live.

    Args:
        model: a TransformerBridge (``llmscope.load(...)``).
        source: a prompt (a string; the model's BOS is prepended) or Stimuli. The metric is
            computed on all of it; the distribution is the prediction after the last token of
            sequence ``seq`` (at its first ``is_target`` row, for minimal pairs). The mean of
            ``"mean"`` mode is taken over it.
        units: one slider per row of a unit table (``tuning(...).top(8)``,
            ``localize_heads(...).top(2, by="induction")``, a ``(site, unit)`` MultiIndex), per
            unit of ``("mlp.0", [3, 7])`` or a list of pairs; or a dict ``{name: units}``, one
            slider per named group; or a Raster or an AttentionMap, whose selected units or
            focused head the sliders then follow (:meth:`link`).
        mode: ``"zero"`` or ``"mean"`` (see the module docstring).
        metric: ``"loss"`` or ``"logit_diff"``; None picks ``"logit_diff"`` when the stimuli
            have ``good_id``, ``bad_id`` and ``is_target``, else ``"loss"``.
        k: how many top tokens of each distribution are shown (1..50).
        seq: the sequence of ``source`` whose next-token distribution is shown.

    Attributes:
        gains: ``{key: factor}``, a key per slider (``("attn.1", 0)`` for a unit, the name for a
            group); read-only, follows the page. ``.reset()`` sets every gain back to 1.
        units: the units of the sliders, a ``(site, unit)`` MultiIndex; setting it (any form
            ``units=`` takes, but a widget) gives new sliders, and the page follows.
        mode: ``"zero"`` or ``"mean"``; settable here (the page follows) or in the page.
        version: bumped when the kernel changed what the page shows (a reset or mode from Python).

    ``.figure()`` is the current view as a static plotly figure.

    Raises:
        AnalysisError: a bad model, source, metric, k or seq; InterventionError: a bad mode;
        SiteError: bad units; PromptError: an empty or too long prompt; ColumnError:
        ``metric="logit_diff"`` on stimuli without its columns.

    Example:
        >>> import llmscope
        >>> from llmscope import AblationPanel, localize_heads
        >>> from llmscope.stimuli import agreement, grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> heads = localize_heads(model, stim, progress=False).top(2, by="induction")
        >>> panel = AblationPanel(model, agreement(model, n=16), units=heads)
        >>> panel.metric_name, list(panel.gains)[0]
        ('logit_diff', ('attn.1', 0))
    """

    _esm = static("ablation_panel.js")
    _css = static("ablation_panel.css")
    gains = traitlets.Dict(read_only=True)
    mode = traitlets.Unicode("zero")
    # what the page's sliders take, written once here
    _meta = traitlets.Dict({"gain": {"min": GAIN_RANGE[0], "max": GAIN_RANGE[1], "step": GAIN_STEP}},
                           read_only=True).tag(sync=True)

    def __init__(self, model: "TransformerBridge", source: str | Stimuli, units: UnitsLike | Mapping[str, UnitsLike],
                 *, mode: str = "zero", metric: str | None = None, k: int = 10, seq: int = 0, **kwargs: Any):
        from transformer_lens.model_bridge import TransformerBridge

        if not isinstance(model, TransformerBridge):
            raise AnalysisError(f"AblationPanel drives a TransformerBridge (llmscope.load(name)); got {type(model).__name__}.")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 50:
            raise AnalysisError(f"k is how many top tokens to show, an int in 1..50; got {k!r}.")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise AnalysisError(f"seq is the index of a sequence of the stimuli, an int; got {seq!r}.")
        self._model, self._quiet = model, False
        self._stim = self._stimuli(source)
        if not 0 <= seq < self._stim.n_seqs:
            raise AnalysisError(f"seq={seq} is out of range: the stimuli have sequences 0..{self._stim.n_seqs - 1}.")
        self._metric = self._check_metric(metric)
        self._check_mode(mode)
        self._link: tuple[Any, str, Callable[..., None]] | None = None
        source = units if isinstance(units, (Raster, AttentionMap)) else None
        if source is not None:
            unit_index(model, _followed(source)[2])  # what it may ever select exists in this model
        self._sliders = _sliders(model, units) if source is None else []  # link() below fills them
        self._k, self._seq = k, seq
        self._pos = self._position()
        self._keep = trials.rows(self._stim.tokens, include_bos=False)
        self._base_logits = self._forward([])
        self._base = self._measure(self._base_logits)
        self._now = self._base
        self._quiet = True
        super().__init__(mode=mode, **kwargs)
        self.set_trait("gains", {s.key: 1.0 for s in self._sliders})
        self._quiet = False
        if source is not None:
            self.link(source)

    # ------------------------------------------------------------------ arguments

    def _stimuli(self, source: Any) -> Stimuli:
        if isinstance(source, str):
            if not source.strip():
                raise PromptError("empty prompt: type some text for the model to read.")
            n = self._model.to_tokens(source, truncate=False).shape[1]
            if n > self._model.cfg.n_ctx:
                raise PromptError(f"the prompt is {n} tokens but {self._model.cfg.model_name} reads at most "
                                  f"{self._model.cfg.n_ctx}: shorten it.")
            return from_texts(self._model, source, tag=False, name="prompt")
        if isinstance(source, Stimuli):
            return as_stimuli(self._model, source)
        raise AnalysisError(f"AblationPanel runs a prompt (str) or Stimuli; got {type(source).__name__}.")

    def _check_metric(self, metric: str | None) -> str:
        paired = all(c in self._stim.tokens.columns for c in PAIRED)
        if metric is None:
            return "logit_diff" if paired else "loss"
        if not isinstance(metric, str) or metric not in METRICS:
            raise AnalysisError(f"unknown metric {metric!r}; choose one of {list(METRICS)} (or None: automatic).")
        if metric == "logit_diff":
            check_logit_diff(self._stim, *PAIRED, self._model.cfg.d_vocab)
        return metric

    @staticmethod
    def _check_mode(mode: Any) -> str:
        if not isinstance(mode, str) or mode not in MODES:
            raise InterventionError(f"unknown ablation mode {mode!r}; choose one of {list(MODES)}.")
        return mode

    @traitlets.validate("mode")
    def _validate_mode(self, proposal: dict[str, Any]) -> str:
        return self._check_mode(proposal["value"])

    @traitlets.observe("mode")
    def _mode_changed(self, change: dict[str, Any]) -> None:
        """A mode set from Python: run the current gains in it, and the page follows."""
        if hasattr(self, "_now") and not self._quiet:
            self._now = self._run(self._factors(), self.mode)
            self._changed()

    def _check_factors(self, factors: Any) -> list[float]:
        """The page's gains: a list of finite numbers in ``GAIN_RANGE``, one per slider (checked
        before anything changes)."""
        n = len(self._sliders)
        if not isinstance(factors, (list, tuple)):
            raise WidgetError.Type(f"factors are one gain per slider: a list of {n} numbers, got {factors!r}.")
        if len(factors) != n:
            raise WidgetError(f"factors are one gain per slider: a list of {n} numbers, got {len(factors)}: {factors!r}.")
        return [number(f, f"the gain of {slider.label}", *GAIN_RANGE, error=WidgetError)
                for slider, f in zip(self._sliders, factors)]

    def _position(self) -> int:
        """Where the shown distribution is read: the first target row of ``seq``, else its last token."""
        rows = self._stim.tokens[self._stim.tokens["seq"] == self._seq]
        if "is_target" in rows and rows["is_target"].astype("boolean").fillna(False).any():
            return int(rows.loc[rows["is_target"].astype("boolean").fillna(False).to_numpy(), "pos"].iloc[0])
        return int(self._stim.lengths[self._seq]) - 1

    # ------------------------------------------------------------------ running the model

    def _factors(self) -> list[float]:
        return [self.gains[s.key] for s in self._sliders]

    def _means(self, slider: _Slider) -> dict[str, torch.Tensor]:
        """Each site's mean over the stimuli, zero off the slider's units (recorded once)."""
        if slider.mean is None:
            rec = record(self._model, self._stim, [s for s, _ in slider.units], dtype="float32", progress=False)
            slider.mean = {}
            for s, idx in slider.units:
                vector = torch.zeros(s.shape)
                vector[idx] = torch.from_numpy(rec.responses(s.name, indices=idx).mean(0))
                slider.mean[s.name] = vector
        return slider.mean

    def _interventions(self, factors: list[float], mode: str) -> list[Intervention]:
        """The interventions of the sliders off 1 (none at all when every slider is at 1)."""
        out: list[Intervention] = []
        for slider, f in zip(self._sliders, factors):
            if f == 1.0:
                continue
            out.append(gain(slider.units, factor=f))
            if mode == "mean":
                out += [steer(name, vector, alpha=1.0 - f) for name, vector in self._means(slider).items()]
        return out

    def _forward(self, interventions: list[Intervention]) -> torch.Tensor:
        """Logits ``[n_seqs, pos, vocab]`` float32 of all the stimuli under ``interventions``."""
        with torch.no_grad(), intervene(self._model, *interventions):
            return self._model(self._stim.ids, return_type="logits").float()

    def _measure(self, logits: torch.Tensor) -> dict[str, Any]:
        """The metric's mean over the stimuli and the shown next-token probabilities ``[vocab]``."""
        fn = loss if self._metric == "loss" else logit_diff
        values = np.asarray(fn(logits, self._stim))[self._keep]
        return {"metric": _mean(values), "probs": torch.softmax(logits[self._seq, self._pos], -1)}

    def _run(self, factors: list[float], mode: str) -> dict[str, Any]:
        """What the model does under ``factors`` in ``mode`` (no run when every gain is 1)."""
        if all(f == 1.0 for f in factors):
            return self._base
        return self._measure(self._forward(self._interventions(factors, mode)))

    @property
    def units(self) -> pd.MultiIndex:
        """Every slider's units, in slider order: a ``(site, unit)`` MultiIndex."""
        pairs = [(s.name, int(i)) for slider in self._sliders for s, idx in slider.units for i in idx]
        return pd.MultiIndex.from_tuples(pairs, names=["site", "unit"])

    @units.setter
    def units(self, units: UnitsLike | Mapping[str, UnitsLike]) -> None:
        sliders = _sliders(self._model, units)
        self.unlink()  # units set by hand replace the ones followed
        self._set_sliders(sliders)

    def _set_sliders(self, sliders: list[_Slider]) -> None:
        """New sliders (a unit that stays keeps its gain); the model runs if a gain is off 1."""
        gains = {s.key: self.gains.get(s.key, 1.0) for s in sliders}
        now = self._run(list(gains.values()), self.mode)
        self._sliders, self._now = sliders, now
        self.set_trait("gains", gains)
        self._changed()

    def link(self, source: Raster | AttentionMap) -> None:
        """Let the sliders follow ``source`` from now on: a Raster's selected units, or an
        AttentionMap's focused head (replacing any link there was). An empty selection leaves
        no slider. The units ``source`` may ever give are checked against the model first.

        Example:
            >>> import llmscope
            >>> from llmscope import AblationPanel, Raster
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
            ...                       dtype="float32", progress=False)
            >>> raster = Raster(rec, "mlp.1")
            >>> panel = AblationPanel(model, "the dog runs .", units=raster)
            >>> raster.selected = [3, 7]
            >>> panel.units.tolist()
            [('mlp.1', 3), ('mlp.1', 7)]
        """
        name, current, every = _followed(source)
        unit_index(self._model, every)
        self.unlink()

        def follow(change: dict[str, Any] | None = None) -> None:
            units = current()
            self._set_sliders(_sliders(self._model, units) if len(units) else [])

        source.observe(follow, names=[name])
        self._link = (source, name, follow)
        follow()

    def unlink(self) -> None:
        """Stop following the widget given to :meth:`link` (the sliders stay as they are)."""
        if self._link is not None:
            source, name, follow = self._link
            source.unobserve(follow, names=[name])
            self._link = None

    def reset(self) -> None:
        """Every gain back to 1 (the model intact); the page follows."""
        self.set_trait("gains", {s.key: 1.0 for s in self._sliders})
        self._now = self._base
        self._changed()

    @property
    def metric_name(self) -> str:
        """``"loss"`` (mean next-token loss, nats) or ``"logit_diff"`` (mean good - bad logit)."""
        return self._metric

    @property
    def baseline(self) -> float:
        """The metric with every unit intact."""
        return self._base["metric"]

    @property
    def value(self) -> float:
        """The metric under the current gains."""
        return self._now["metric"]

    # ------------------------------------------------------------------ what the page shows

    def _top(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids of the top ``k`` of the baseline and of the intervened distribution (each
        in order, the baseline's first), and both distributions' probabilities of them."""
        base, now = self._base["probs"], self._now["probs"]
        ids = torch.cat([base.topk(self._k).indices, now.topk(self._k).indices])
        first = {int(i): None for i in ids}
        ids = torch.tensor(list(first), dtype=torch.long)
        return ids, base[ids], now[ids]

    def _token_text(self, ids: list[int]) -> list[str]:
        return [self._model.tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in ids]

    def _payload(self) -> dict[str, Any]:
        ids, base, now = self._top()
        tokens = self._stim.tokens[self._stim.tokens["seq"] == self._seq]
        return {
            "version": self.version, "model": str(self._model.cfg.model_name), "mode": self.mode,
            "labels": [s.label for s in self._sliders], "factors": self._factors(),
            "context": tokens["text"].astype(str).tolist()[: self._pos + 1],
            "n_bos": int(tokens["is_bos"].sum()) if "is_bos" in tokens else 0,
            "metric": {"name": self._metric, "base": self._base["metric"], "now": self._now["metric"]},
            "ids": wire.array(ids.to(torch.int32)), "texts": self._token_text(ids.tolist()),
            "base": wire.array(base.float()), "now": wire.array(now.float()),
        }

    @command()
    def _view(self) -> dict[str, Any]:
        """Everything the page shows: sliders, context, metric and distributions (no model run)."""
        return self._payload()

    @command(factors=list, mode=str)
    def _move(self, factors: list, mode: str) -> dict[str, Any]:
        """Set every gain and the mode (all checked first), run the model once, and answer as ``_view``."""
        factors, mode = self._check_factors(factors), choice(mode, "ablation mode", MODES, error=WidgetError)
        self._now = self._run(factors, mode)  # nothing changes if this raises
        self._quiet = True  # the page asked for this: no version bump, no second run
        try:
            self.mode = mode
            self.set_trait("gains", {s.key: f for s, f in zip(self._sliders, factors)})
        finally:
            self._quiet = False
        return self._payload()

    # ------------------------------------------------------------------ static picture

    def figure(self) -> "go.Figure":
        """The current view as a plotly figure: the top tokens' probabilities, baseline beside
        intervened, titled with the gains off 1 and the metric against its baseline."""
        import plotly.graph_objects as go

        ids, base, now = self._top()
        labels = [f"{i}: {html.escape(repr(t))}" for i, t in zip(ids.tolist(), self._token_text(ids.tolist()))]
        fig = go.Figure([go.Bar(name="baseline", x=labels, y=base.tolist(), marker_color="#9e9e9e"),
                         go.Bar(name="intervened", x=labels, y=now.tolist(), marker_color="#2171b5")])
        off = ", ".join(f"{html.escape(s.label)} x{f:g}" for s, f in zip(self._sliders, self._factors()) if f != 1.0)
        title = (f"{html.escape(str(self._model.cfg.model_name))}, {self.mode} mode: {off or 'all units intact'}"
                 f"<br>{self._metric} {self.value:.3f} (baseline {self.baseline:.3f})")
        fig.update_xaxes(type="category", title_text="next token")
        return fig.update_layout(barmode="group", title=title, yaxis_title="probability")


__all__ = ["AblationPanel", "MODES", "GAIN_RANGE", "GAIN_STEP"]
