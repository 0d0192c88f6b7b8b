"""AttentionMap: every attention head of a model on one prompt, live in the notebook.

The page shows an overview grid of every layer x head as a small thumbnail of its pattern,
labelled with the head's previous-token (P) and induction (I) scores from
:func:`llmscope.analysis.heads.localize_heads` on the prompt; a focused head as a query x key
heatmap; the prompt's tokens, shaded by where the hovered token attends (blue) and what
attends to it (orange); and a prompt box: editing it runs the model again in the kernel.

A prompt runs layer by layer, and what the page needs is taken from each layer as the forward
pass reaches it (read-only hooks on ``blocks.L.attn.hook_pattern``, ``[batch, head, query,
key]``; with grouped-query attention, as in SmolLM2, one pattern per query head): each head's
pattern as byte codes (``code / 255`` = attention) of its lower triangle, zlib-compressed, and
its thumbnail, max-pooled to at most ``THUMB`` x ``THUMB`` (a cell shows the strongest
attention of its block, so a thin diagonal survives). A layer's float patterns are never kept
past that; only the compressed codes are (SmolLM2, all 270 heads: about 37 MB at 2,048
tokens, 91 MB at 4,096), so a focus change costs no model run. The hooks sit around the head
localizer's own forward pass, so thumbnails and scores come from one run; they are always
removed.

A prompt typed in the page runs in a background thread of the kernel: the command returns at
once, ``_progress`` reports each layer, and the page shows the layers done so far with a
cancel button; a cancelled run stops at its next layer and leaves everything as it was. A
prompt set from Python (``amap.prompt = ...``) runs in the calling thread, and the page follows
it the same way. While a run goes, the model is busy: a pass started from a cell at the same
time would share its hooks and interventions.

What crosses the wire (see :mod:`llmscope.widgets.wire`): the overview sends the thumbnails
(zlib) and scores; a focused head is sent only when the page asks for it, and the page
max-pools it to its canvas's pixels when it has more cells than that.

Example:
    >>> import llmscope
    >>> from llmscope import AttentionMap
    >>> model = llmscope.load("grammar-2l")
    >>> amap = AttentionMap(model, "the dog runs . the dog runs .")
    >>> amap.focus, amap.unit
    ((1, 0), ('attn.1', 0))
    >>> amap.focus = (0, 2)
    >>> amap.figure().layout.title.text
    'attn.0 head 2 on 9 tokens of grammar-2l'
"""

from __future__ import annotations

import html
import itertools
import threading
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import traitlets
from numba import njit

from llmscope.analysis.heads import localize_heads
from llmscope import identity
from llmscope.checks import choice
from llmscope.errors import AnalysisError, PromptError, SiteError, WidgetError
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.english import from_texts
from llmscope.widgets import wire
from llmscope.widgets.base import LiveWidget, command, static
from llmscope.stimuli.core import as_stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

THUMB = 24
SHOWN_SCORES = ("previous_token", "induction")
METHOD_NAMES = {"atp": "AtP", "atp*": "AtP*"}  # as the paper writes them, for the page's legend


@njit(cache=True, nogil=True)
def _encode(pattern: np.ndarray, tril: np.ndarray, thumbs: np.ndarray) -> None:  # pragma: no cover (compiled)
    """One layer's ``[head, n, n]`` float32 attention as byte codes, ``floor(p * 255 + 0.5)``
    clamped to 0..255: each head's lower triangle row by row into ``tril`` ``[head, n(n+1)/2]``,
    and its max over the cells of each thumbnail pixel (cell ``i`` of ``n`` in pixel
    ``i * t // n`` of ``t``) into ``thumbs`` ``[head, t, t]`` (zeros on entry). One pass over
    the triangle, the GIL released."""
    n_heads, n = pattern.shape[0], pattern.shape[1]
    t = thumbs.shape[1]
    block = np.empty(n, np.int64)
    for i in range(n):
        block[i] = i * t // n
    scale, half = np.float32(255.0), np.float32(0.5)
    for h in range(n_heads):
        k = 0
        for i in range(n):
            bi = block[i]
            for j in range(i + 1):
                v = pattern[h, i, j] * scale + half
                c = 0 if not v >= 1 else (255 if v >= 255 else int(v))
                tril[h, k] = c
                k += 1
                if c > thumbs[h, bi, block[j]]:
                    thumbs[h, bi, block[j]] = c


def _n_bos(stim: Stimuli) -> int:
    """How many tokens the model prepended to the first sequence of ``stim`` (its ``is_bos`` rows)."""
    first = stim.tokens[stim.tokens["seq"] == 0]
    return int(first["is_bos"].sum()) if "is_bos" in first else 0


class _Stopped(Exception):
    """Raised in a pattern hook to stop a cancelled run's forward pass at that layer."""


class _Pass:
    """One prompt through the model, filled layer by layer as the forward pass reaches each
    (thumbnails, each head's compressed codes), scored when the pass ends."""

    def __init__(self, run: int, stim: Stimuli, text: str, n_layers: int, n_heads: int):
        self.run, self.stim, self.text = run, stim, text
        self.ids = stim.ids[:1, : int(stim.lengths[0])]               # [1, n] the prompt's token ids
        n = self.ids.shape[1]
        self.tokens: list[str] = stim.tokens["text"].astype(str).tolist()[:n]
        self.n_bos = _n_bos(stim)
        t = min(THUMB, n)
        self.thumbs = np.zeros((n_layers, n_heads, t, t), dtype=np.uint8)  # max-pooled codes
        self.heads: list[list[dict[str, Any]]] = [[] for _ in range(n_layers)]  # payloads (tril, zlib)
        self.scores = np.full((n_layers, n_heads, len(SHOWN_SCORES)), np.nan)  # NaN = no score
        self.done = 0                        # layers read so far
        self.complete = False                # every layer read and scored
        self.stop = threading.Event()        # set to cancel: the next layer raises _Stopped
        self.thread: threading.Thread | None = None
        self.owner = threading.get_ident()  # the thread whose forward pass feeds this one
        self.on_layer: Any = None            # called after each layer (the widget reports progress)

    def read(self, pattern: torch.Tensor, hook: Any) -> None:  # [1, head, query, key]; read only
        if threading.get_ident() != self.owner:
            return  # another thread's pass (a cell run while this one goes): not ours
        if self.stop.is_set():
            raise _Stopped
        layer = int(hook.name.split(".")[1])
        p = pattern[0].detach().to("cpu", torch.float32).numpy()
        n = p.shape[-1]
        tril = np.empty((p.shape[0], n * (n + 1) // 2), dtype=np.uint8)
        _encode(p, tril, self.thumbs[layer])
        self.heads[layer] = [wire.packed(rows, (n, n), tril=True, compress=True) for rows in tril]
        self.done = layer + 1
        if self.on_layer is not None:
            self.on_layer(self)


class AttentionMap(LiveWidget):
    """A live view of every attention head of ``model`` on one prompt.

    Args:
        model: a TransformerBridge (``llmscope.load(...)``).
        source: a prompt (a string; the model's BOS is prepended as ``model.to_tokens``
            does), or Stimuli, of which sequence ``seq`` is shown.
        seq: which sequence of ``source`` when it is Stimuli (0 for a prompt).

    Attributes (traits, synced with the page):
        prompt: the text on show. Setting it (here or in the page's prompt box) runs the model
            on it; an empty prompt or one longer than the context raises PromptError here and
            shows the error in the page, and the widget keeps the prompt it had.
        focus: ``(layer, head)`` of the focused head; a click or the arrow keys in the page set
            it, and setting it here moves the page's focus. ``.unit`` gives it as
            ``("attn.L", head)``, ready for ``lesion`` or an AblationPanel.
        version: bumped each time a new prompt has been run.
        _progress: the run of a prompt, for the page: ``{run, state, done, total, n_tokens}``
            (``state`` running, done, cancelled or failed; ``error`` when failed).
        _attribution: what :meth:`colour_by` set, for the page: ``{behaviour, label, signed,
            values}`` (``values`` ``[layers][heads]``, None where a head has no number; ``signed``
            for an estimate, whose sign the bars' colour shows), or ``{}``.

    ``.figure()`` is the current view as a static plotly figure. ``.colour_by(screen, behaviour)``
    marks each head by its attribution to a behaviour (:func:`llmscope.analysis.attribution.screen`).

    Raises:
        AnalysisError: ``model`` is not a TransformerBridge, ``source`` is neither a string nor
            Stimuli, or ``seq`` is out of range.
        PromptError: an empty prompt, or one longer than the model's context.

    Example:
        >>> import llmscope
        >>> from llmscope import AttentionMap
        >>> model = llmscope.load("grammar-2l")
        >>> amap = AttentionMap(model, llmscope.stimuli.grammar(model, n_docs=2, seed=0), seq=1)
        >>> amap.focus
        (1, 0)
    """

    _esm = static("attention_map.js")
    _css = static("attention_map.css")
    prompt = traitlets.Unicode("").tag(sync=True)
    focus = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(0, 0)).tag(sync=True)
    _progress = traitlets.Dict().tag(sync=True)
    _attribution = traitlets.Dict().tag(sync=True)

    def __init__(self, model: "TransformerBridge", source: str | Stimuli, seq: int = 0, **kwargs: Any):
        from transformer_lens.model_bridge import TransformerBridge

        if not isinstance(model, TransformerBridge):
            raise AnalysisError(f"AttentionMap shows a TransformerBridge (llmscope.load(name)); got {type(model).__name__}.")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise AnalysisError(f"seq is the index of a sequence of the stimuli, an int; got {seq!r}.")
        self._model = model
        self._runs = itertools.count()
        self._lock = threading.Lock()  # guards _pending: the page's commands and the runs' threads
        self._pending: _Pass | None = None  # a prompt on its way, shown as it fills
        self._view: _Pass | None = None  # the prompt on show, complete
        if isinstance(source, str):
            if seq != 0:
                raise AnalysisError(f"seq={seq} picks a sequence of Stimuli; a prompt has one sequence (seq=0).")
            stim, text = self._tokenize(source), source
        elif isinstance(source, Stimuli):
            as_stimuli(model, source)
            if not 0 <= seq < source.n_seqs:
                raise AnalysisError(f"seq={seq} is out of range: these stimuli have sequences 0..{source.n_seqs - 1}.")
            stim = source.select_seqs([seq])
            ids = stim.ids[0, _n_bos(stim): int(stim.lengths[0])].tolist()
            text = model.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        else:
            raise AnalysisError.Type(f"AttentionMap shows a prompt (str) or Stimuli; got {type(source).__name__}.")
        self._view = self._measure(self._new_pass(stim, text))
        super().__init__(prompt=self._view.text, focus=self._best_head(), **kwargs)

    # ------------------------------------------------------------------ kernel-side state

    def _tokenize(self, text: str) -> Stimuli:
        if not text.strip():
            raise PromptError("empty prompt: type some text for the model to read.")
        cfg = self._model.cfg
        n = self._model.to_tokens(text, truncate=False).shape[1]
        if n > cfg.n_ctx:
            raise PromptError(f"the prompt is {n} tokens but {cfg.model_name} reads at most {cfg.n_ctx}: shorten it.")
        return from_texts(self._model, text, tag=False, name="prompt")

    def _new_pass(self, stim: Stimuli, text: str) -> _Pass:
        return _Pass(next(self._runs), stim, text, self._model.cfg.n_layers, self._model.cfg.n_heads)

    def _measure(self, run: _Pass) -> _Pass:
        """Run the model once on ``run``'s prompt, in this thread, filling it layer by layer.

        The pattern hooks sit around :func:`localize_heads`, whose one pass over one sequence
        feeds them; a prompt too short to score (localize_heads refuses it before running)
        gets its pass here instead. A cancelled run raises _Stopped out of the pass."""
        cfg = self._model.cfg
        run.owner = threading.get_ident()
        hooks = [(f"blocks.{L}.attn.hook_pattern", run.read) for L in range(cfg.n_layers)]
        with torch.no_grad(), self._model.hooks(fwd_hooks=hooks):
            scores = self._scores(run.stim)
            if run.done < cfg.n_layers:
                self._model(run.ids.to(cfg.device), return_type=None)
        run.scores, run.complete = scores, True
        return run

    def _scores(self, stim: Stimuli) -> np.ndarray:
        """``[layers, heads, len(SHOWN_SCORES)]`` head scores on ``stim``; NaN where a prompt has
        no target for a score (no repeated token: no induction score)."""
        cfg = self._model.cfg
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no repeats: NaN" is shown as a dash
                df = localize_heads(self._model, stim, progress=False).df
        except AnalysisError:  # a prompt too short to score anything
            return np.full((cfg.n_layers, cfg.n_heads, len(SHOWN_SCORES)), np.nan)
        return df[list(SHOWN_SCORES)].to_numpy(dtype=np.float64).reshape(cfg.n_layers, cfg.n_heads, -1)

    def _best_head(self) -> tuple[int, int]:
        """The head to focus first: the best induction head, else the best previous-token head."""
        for name in ("induction", "previous_token"):
            score = self._view.scores[..., SHOWN_SCORES.index(name)]
            if np.isfinite(score).any():
                layer, head = np.unravel_index(np.nanargmax(score), score.shape)
                return int(layer), int(head)
        return 0, 0

    def _report(self, run: _Pass, state: str, error: BaseException | None = None) -> None:
        """Tell the page how ``run`` goes (``_progress``)."""
        progress = {"run": run.run, "state": state, "done": run.done, "total": self._model.cfg.n_layers,
                    "n_tokens": len(run.tokens)}
        if error is not None:
            progress["error"] = {"type": type(error).__name__, "message": str(error)}
        self.set_trait("_progress", progress)

    def _stop_pending(self) -> None:
        """Cancel the prompt running in the background, if any, and wait for it to stop (at its next layer)."""
        with self._lock:
            run, self._pending = self._pending, None
        if run is not None:
            run.stop.set()
            if run.thread is not None:
                run.thread.join()
            self._report(run, "cancelled")

    def _start(self, run: _Pass) -> None:
        """Run ``run`` in a background thread (after the run it replaces has stopped); the page
        follows it through ``_progress``, and it becomes the view when it completes."""
        with self._lock:
            previous, self._pending = self._pending, run
        if previous is not None:
            previous.stop.set()
        run.on_layer = lambda r: self._report(r, "running")

        def work() -> None:
            if previous is not None and previous.thread is not None:
                previous.thread.join()
            try:
                self._measure(run)
            except BaseException as exc:  # noqa: BLE001 (a run's failure goes to the page, not to a thread's stderr)
                with self._lock:
                    ours = self._pending is run
                    if ours:
                        self._pending = None
                if ours:  # a run replaced by a newer one says nothing: the newer one reports
                    if not isinstance(exc, _Stopped):
                        self.set_trait("last_error", f"{type(exc).__name__}: {exc}")
                    stopped = isinstance(exc, _Stopped)
                    self._report(run, "cancelled" if stopped else "failed", None if stopped else exc)
                return
            self._commit(run)

        run.thread = threading.Thread(target=work, name=f"llmscope AttentionMap run {run.run}", daemon=True)
        self._report(run, "running")
        run.thread.start()

    def _commit(self, run: _Pass) -> None:
        """A background run completed: it becomes the view, unless a newer one replaced it."""
        with self._lock:
            if self._pending is not run:
                return
            self._view, self._pending = run, None
        self.prompt = run.text  # the validator finds it measured; the version follows
        self._report(run, "done")

    @traitlets.validate("prompt")
    def _run_prompt(self, proposal: dict[str, Any]) -> str:
        text = proposal["value"]
        if self._view is None or text != self._view.text:
            run = self._new_pass(self._tokenize(text), text)  # a PromptError leaves all as it was
            self._stop_pending()
            run.on_layer = lambda r: self._report(r, "running")
            try:
                self._view = self._measure(run)
            except BaseException as exc:  # an interrupted cell, or a failed pass: the old prompt stays
                interrupted = isinstance(exc, KeyboardInterrupt)
                self._report(run, "cancelled" if interrupted else "failed", None if interrupted else exc)
                raise
            self._report(run, "done")
        return text

    @traitlets.observe("prompt")
    def _prompt_changed(self, change: dict[str, Any]) -> None:
        self._changed()

    @traitlets.validate("focus")
    def _check_focus(self, proposal: dict[str, Any]) -> tuple[int, int]:
        layer, head = proposal["value"]
        cfg = self._model.cfg
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise SiteError.Range(f"focus {(layer, head)} is not a head of this model: layers 0..{cfg.n_layers - 1}, "
                                  f"heads 0..{cfg.n_heads - 1}.")
        return int(layer), int(head)

    @property
    def unit(self) -> tuple[str, int]:
        """The focused head as a unit, ``("attn.L", head)``: ``lesion(amap.unit)``."""
        return f"attn.{self.focus[0]}", self.focus[1]

    def colour_by(self, source: Any, behaviour: str | None = None, measure: str = "score") -> "AttentionMap":
        """Mark each head's thumbnail by its attribution to ``behaviour``: a bar under it, as
        long and as dark as the head's share of the grid's largest absolute value (orange where
        lesioning the head harms the behaviour, blue where it helps, none where the head has no
        number), and the share in the cell's accessible label. A score (``|estimate|`` for AtP,
        GradDrop's for AtP*) has no sign: its bars are all orange.

        ``source`` is a :class:`~llmscope.analysis.attribution.ScreenResult` made with this
        model (its fingerprint is checked; ``measure`` picks its ``"score"`` or its signed
        ``"estimate"``, ``behaviour`` one of its behaviours), or a ``[layers x heads]`` grid of
        numbers with NaN where a head was not screened (``screen.heads(behaviour)``, an array;
        ``measure`` then says which of the two it holds, and no model check is possible);
        ``None`` takes the marks off. A screen ran on its battery, not on the prompt on show:
        the marks stay when the prompt changes. Returns the widget.

        Raises:
            WidgetError: a screen made with another model, or with no attention heads; a grid
                that is not ``[layers x heads]`` of this model, or holds an infinite value or no
                number at all (``.Type`` when it is not numbers).
            AnalysisError: ``behaviour`` is not one of the screen's (``.Unknown``).

        Example:
            >>> import llmscope
            >>> from llmscope import AttentionMap, battery
            >>> model = llmscope.load("grammar-2l")
            >>> from llmscope.analysis.attribution import screen
            >>> s = screen(model, battery(model, n_docs=2, n_pairs=8), ["attn.0", "attn.1"], progress=False)
            >>> amap = AttentionMap(model, "the dog runs . the dog runs .").colour_by(s, "copying")
            >>> amap.figure().layout.annotations[-1].text
            'AtP score copying / largest'
        """
        from llmscope.analysis.attribution import ScreenResult

        measure = choice(measure, "measure", ("score", "estimate"), error=WidgetError)
        cfg = self._model.cfg
        if source is None:
            self._attribution = {}
            return self
        if isinstance(source, ScreenResult):
            identity.check(identity.Fingerprint.from_dict(source.meta.get("fingerprint")), self._model, "the screen",
                           "weights", WidgetError, "Screen this model, or show the model the screen was made with.")
            behaviour = source._behaviour(behaviour)
            grid = source.heads(behaviour, measure).to_numpy(dtype=np.float64)
            label = f"{METHOD_NAMES.get(source.meta.get('method'), 'attribution')} {measure}"
            if np.isnan(grid).all():
                raise WidgetError(f"the screen has no attention heads (it screened {source.meta.get('sites')}): "
                                  f"screen attn.L sites to colour the heads.")
        else:
            try:
                grid = np.asarray(source, dtype=np.float64)
            except (TypeError, ValueError):
                raise WidgetError.Type(f"colour_by takes a ScreenResult or a [layers x heads] grid of numbers; got "
                                       f"{type(source).__name__}.") from None
            if grid.shape != (cfg.n_layers, cfg.n_heads):
                raise WidgetError(f"the grid is {list(grid.shape)} but {cfg.model_name} has {cfg.n_layers} layers x "
                                  f"{cfg.n_heads} heads: pass one number per head (NaN where there is none).")
            if np.isinf(grid).any() or np.isnan(grid).all():
                raise WidgetError("the grid holds an infinite value or no number at all: pass finite numbers, NaN "
                                  "only where a head has none.")
            label = measure
        if behaviour is not None and not isinstance(behaviour, str):
            raise WidgetError.Type(f"behaviour is a behaviour's name (str); got {type(behaviour).__name__}.")
        values = [[None if np.isnan(v) else float(v) for v in row] for row in grid]
        self._attribution = {"behaviour": behaviour or "", "label": label, "signed": measure == "estimate",
                             "values": values}
        return self

    # ------------------------------------------------------------------ commands of the page

    def _shown(self) -> _Pass:
        """What the page shows: the prompt running in the background (its layers so far), else the view."""
        return self._pending or self._view

    @command()
    def _overview(self) -> dict[str, Any]:
        """The grid and the tokens of what is shown: thumbnails ``[layers, heads, t, t]`` uint8
        (layers past ``done`` are still to come), scores ``[layers, heads, scores]`` float16 (NaN
        until ``complete``), token texts."""
        shown = self._shown()
        done = shown.done  # read first: the layers before it are written and stay so
        thumbs = shown.thumbs.copy()
        thumbs[done:] = 0
        return {"run": shown.run, "version": self.version, "complete": shown.complete, "done": done,
                "total": self._model.cfg.n_layers, "model": str(self._model.cfg.model_name), "tokens": shown.tokens,
                "n_bos": shown.n_bos, "score_names": list(SHOWN_SCORES), "thumbs": wire.array(thumbs, compress=True),
                "scores": wire.array(shown.scores.astype(np.float16))}

    @command(layer=int, head=int)
    def _head(self, layer: int, head: int) -> dict[str, Any]:
        """One head's ``[query, key]`` pattern (uint8 codes, lower triangle, zlib) of what is
        shown; ``None`` while its layer is still to come."""
        cfg = self._model.cfg
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise WidgetError.Range(f"head ({layer}, {head}) is not a head of this model: layers 0..{cfg.n_layers - 1}, "
                                    f"heads 0..{cfg.n_heads - 1}.")
        shown = self._shown()
        pattern = shown.heads[layer][head] if layer < shown.done else None
        return {"run": shown.run, "version": self.version, "layer": layer, "head": head, "pattern": pattern}

    @command(prompt=str)
    def _run(self, prompt: str) -> dict[str, Any]:
        """Start the model on a new prompt in the background (``_progress`` follows it) and
        answer at once; the same prompt as the one shown starts nothing (and cancels a run)."""
        with self._lock:
            pending = self._pending
        if pending is not None and prompt == pending.text:
            return {"run": pending.run, "n_tokens": len(pending.tokens), "started": True}
        stim = self._tokenize(prompt)  # a PromptError leaves all as it was
        if prompt == self._view.text:
            self._stop_pending()
            return {"run": self._view.run, "n_tokens": len(self._view.tokens), "started": False}
        run = self._new_pass(stim, prompt)
        self._start(run)
        return {"run": run.run, "n_tokens": len(run.tokens), "started": True}

    @command(run=int)
    def _cancel(self, run: int) -> dict[str, Any]:
        """Stop the background run ``run`` at its next layer (the prompt shown before stays)."""
        with self._lock:
            pending = self._pending
        cancelling = pending is not None and pending.run == run
        if cancelling:
            pending.stop.set()
        return {"run": run, "cancelling": cancelling}

    # ------------------------------------------------------------------ static picture

    def figure(self) -> "go.Figure":
        """The current view as a plotly figure: the focused head's pattern (query x key) beside
        the layers x heads grids of the previous-token and induction scores, and of the
        attribution set by :meth:`colour_by` (each head's share of the largest), focus marked."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        view, (layer, head) = self._view, self.focus
        codes = wire.unpack(view.heads[layer][head])
        n = codes.shape[0]
        z = np.where(np.tril(np.ones((n, n), dtype=bool)), codes / 255, np.nan)
        labels = [f"{i} {html.escape(t)}" for i, t in enumerate(view.tokens)]
        ticks = list(range(0, n, max(1, n // 24)))
        grids = [(name.replace("_", "-"), view.scores[..., k], "Viridis", 0.0)
                 for k, name in enumerate(SHOWN_SCORES)]
        if self._attribution:
            values = np.array(self._attribution["values"], dtype=np.float64)  # None -> NaN
            largest = np.nanmax(np.abs(values))
            name = " ".join(filter(None, [self._attribution["label"], html.escape(self._attribution["behaviour"])]))
            grids.append((f"{name} / largest", values / largest if largest > 0 else values * 0, "RdBu_r", -1.0))
        fig = make_subplots(rows=1, cols=1 + len(grids), column_widths=[0.5] + [0.5 / len(grids)] * len(grids),
                            subplot_titles=["pattern (query x key)", *[g[0] for g in grids]], horizontal_spacing=0.1)
        fig.add_trace(go.Heatmap(z=z, colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="attention", x=0.46),
                                 hovertemplate="query %{y}, key %{x}: %{z:.3f}<extra></extra>"), row=1, col=1)
        fig.update_xaxes(title_text="key", tickvals=ticks, ticktext=[labels[i] for i in ticks], row=1, col=1)
        fig.update_yaxes(title_text="query", tickvals=ticks, ticktext=[labels[i] for i in ticks], autorange="reversed",
                         row=1, col=1)
        sites = [f"attn.{L}" for L in range(view.scores.shape[0])]
        heads = [str(h) for h in range(view.scores.shape[1])]
        for k, (name, grid, colours, low) in enumerate(grids, start=2):
            fig.add_trace(go.Heatmap(z=grid, x=heads, y=sites, colorscale=colours, zmin=low, zmax=1, showscale=False,
                                     hovertemplate=f"%{{y}} head %{{x}}<br>{name} %{{z:.3f}}<extra></extra>"),
                          row=1, col=k)
            fig.add_trace(go.Scatter(x=[str(head)], y=[sites[layer]], mode="markers", showlegend=False, hoverinfo="skip",
                                     marker=dict(symbol="square-open", size=14, color="red", line=dict(width=2))),
                          row=1, col=k)
            fig.update_xaxes(type="category", title_text="head", row=1, col=k)
            fig.update_yaxes(type="category", autorange="reversed", row=1, col=k)
        return fig.update_layout(title=f"attn.{layer} head {head} on {n} tokens of {self._model.cfg.model_name}")


__all__ = ["AttentionMap", "THUMB", "SHOWN_SCORES"]
