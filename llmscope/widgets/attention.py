"""AttentionMap: every attention head of a model on one prompt, live in the notebook.

The page shows an overview grid of every layer x head as a small thumbnail of its pattern,
labelled with the head's previous-token (P) and induction (I) scores from
:func:`llmscope.analysis.heads.localize_heads` on the prompt; a focused head as a query x key
heatmap; the prompt's tokens, shaded by where the hovered token attends (blue) and what
attends to it (orange); and a prompt box: editing it runs the model again in the kernel.

What crosses the wire (see :mod:`llmscope.widgets.wire`): the overview sends each head
max-pooled to at most ``THUMB`` x ``THUMB`` byte codes (zlib), and a focused head is sent
only when the page asks for it, as the lower triangle of its ``[query, key]`` pattern in byte
codes (``code / 255`` = attention, zlib). The kernel compresses every head once per prompt,
as it runs the model, and keeps only those compressed bytes (SmolLM2 at 512 tokens: about
4 MB for all 270 heads), so a focus change costs no model run.

The model is only read, once per prompt: patterns come from read-only hooks on
``blocks.L.attn.hook_pattern`` (``[batch, head, query, key]``; with grouped-query attention, as
in SmolLM2, one pattern per query head), attached around the head localizer's own forward pass
(so the thumbnails and the scores come from the same run) and always removed.

Example:
    >>> amap = AttentionMap(model, "the dog runs . the dog runs .")
    >>> amap.focus, amap.unit
    ((1, 0), ('attn.1', 0))
    >>> amap.focus = (0, 2)
    >>> amap.figure().layout.title.text
    'attn.0 head 2 on 9 tokens of grammar-2l'
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import traitlets

from llmscope.analysis.heads import localize_heads

from llmscope.errors import AnalysisError, PromptError, SiteError
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


def _codes(p: torch.Tensor) -> torch.Tensor:
    """Attention in 0..1 as byte codes 0..255 (``code / 255`` is the attention, to 1/510)."""
    return p.float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def _n_bos(stim: Stimuli) -> int:
    """How many tokens the model prepended to the first sequence of ``stim`` (its ``is_bos`` rows)."""
    first = stim.tokens[stim.tokens["seq"] == 0]
    return int(first["is_bos"].sum()) if "is_bos" in first else 0


@dataclass
class _View:
    """What the kernel holds for the prompt on show."""

    text: str
    ids: torch.Tensor                       # [1, n] the prompt's token ids
    tokens: list[str]                       # each token's text
    n_bos: int                              # leading tokens the model prepends
    thumbs: np.ndarray                      # [layers, heads, t, t] uint8 codes, max-pooled
    scores: np.ndarray                      # [layers, heads, len(SHOWN_SCORES)] float, NaN = no score
    heads: list[list[dict[str, Any]]]       # [layer][head] the pattern's wire payload (tril, zlib)


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

    ``.figure()`` is the current view as a static plotly figure.

    Raises:
        AnalysisError: ``model`` is not a TransformerBridge, ``source`` is neither a string nor
            Stimuli, or ``seq`` is out of range.
        PromptError: an empty prompt, or one longer than the model's context.

    Example:
        >>> amap = AttentionMap(model, llmscope.stimuli.grammar(model, n_docs=2, seed=0), seq=1)
        >>> amap.focus
        (1, 0)
    """

    _esm = static("attention_map.js")
    _css = static("attention_map.css")
    prompt = traitlets.Unicode("").tag(sync=True)
    focus = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(0, 0)).tag(sync=True)

    def __init__(self, model: "TransformerBridge", source: str | Stimuli, seq: int = 0, **kwargs: Any):
        from transformer_lens.model_bridge import TransformerBridge

        if not isinstance(model, TransformerBridge):
            raise AnalysisError(f"AttentionMap shows a TransformerBridge (llmscope.load(name)); got {type(model).__name__}.")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise AnalysisError(f"seq is the index of a sequence of the stimuli, an int; got {seq!r}.")
        self._model = model
        self._view: _View | None = None
        if isinstance(source, str):
            if seq != 0:
                raise AnalysisError(f"seq={seq} picks a sequence of Stimuli; a prompt has one sequence (seq=0).")
            self._view = self._measure(self._tokenize(source), source)
        elif isinstance(source, Stimuli):
            as_stimuli(model, source)
            if not 0 <= seq < source.n_seqs:
                raise AnalysisError(f"seq={seq} is out of range: these stimuli have sequences 0..{source.n_seqs - 1}.")
            one = source.select_seqs([seq])
            ids = one.ids[0, _n_bos(one): int(one.lengths[0])].tolist()
            self._view = self._measure(one, model.tokenizer.decode(ids, clean_up_tokenization_spaces=False))
        else:
            raise AnalysisError(f"AttentionMap shows a prompt (str) or Stimuli; got {type(source).__name__}.")
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

    def _measure(self, stim: Stimuli, text: str) -> _View:
        """Run the model once on ``stim``'s first sequence: thumbnails, head payloads, scores.

        The pattern hooks sit around :func:`localize_heads`, whose one pass over one sequence
        feeds them; a prompt too short to score (localize_heads refuses it before running)
        gets its pass here instead."""
        cfg = self._model.cfg
        ids = stim.ids[:1, : int(stim.lengths[0])]
        n = ids.shape[1]
        t = min(THUMB, n)
        thumbs = np.zeros((cfg.n_layers, cfg.n_heads, t, t), dtype=np.uint8)
        heads: list[list[dict[str, Any]]] = [[] for _ in range(cfg.n_layers)]

        def read(pattern: torch.Tensor, hook: Any) -> None:  # [1, head, query, key]; read only
            layer = int(hook.name.split(".")[1])
            p = pattern[0].detach().cpu()
            thumbs[layer] = _codes(F.adaptive_max_pool2d(p.float(), t)).numpy()
            heads[layer] = [wire.array(codes, tril=True, compress=True) for codes in _codes(p).numpy()]

        hooks = [(f"blocks.{L}.attn.hook_pattern", read) for L in range(cfg.n_layers)]
        with torch.no_grad(), self._model.hooks(fwd_hooks=hooks):
            scores = self._scores(stim)
            if not all(heads):
                self._model(ids.to(cfg.device), return_type=None)
        return _View(text=text, ids=ids, tokens=stim.tokens["text"].astype(str).tolist()[:n], n_bos=_n_bos(stim),
                     thumbs=thumbs, scores=scores, heads=heads)

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

    @traitlets.validate("prompt")
    def _run_prompt(self, proposal: dict[str, Any]) -> str:
        text = proposal["value"]
        if self._view is None or text != self._view.text:
            self._view = self._measure(self._tokenize(text), text)  # a PromptError leaves all as it was
        return text

    @traitlets.observe("prompt")
    def _prompt_changed(self, change: dict[str, Any]) -> None:
        self._changed()

    @traitlets.validate("focus")
    def _check_focus(self, proposal: dict[str, Any]) -> tuple[int, int]:
        layer, head = proposal["value"]
        cfg = self._model.cfg
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise SiteError(f"focus {(layer, head)} is not a head of this model: layers 0..{cfg.n_layers - 1}, "
                            f"heads 0..{cfg.n_heads - 1}.")
        return int(layer), int(head)

    @property
    def unit(self) -> tuple[str, int]:
        """The focused head as a unit, ``("attn.L", head)``: ``lesion(amap.unit)``."""
        return f"attn.{self.focus[0]}", self.focus[1]

    # ------------------------------------------------------------------ commands of the page

    @command()
    def _overview(self) -> dict[str, Any]:
        """The grid and the tokens: thumbnails ``[layers, heads, t, t]`` uint8, scores
        ``[layers, heads, scores]`` float16, token texts."""
        view = self._view
        return {"version": self.version, "model": str(self._model.cfg.model_name), "tokens": view.tokens,
                "n_bos": view.n_bos, "score_names": list(SHOWN_SCORES),
                "thumbs": wire.array(view.thumbs, compress=True),
                "scores": wire.array(view.scores.astype(np.float16))}

    @command(layer=int, head=int)
    def _head(self, layer: int, head: int) -> dict[str, Any]:
        """One head's ``[query, key]`` pattern: uint8 codes, lower triangle, zlib."""
        layer, head = self._check_focus({"value": (layer, head)})
        return {"version": self.version, "layer": layer, "head": head, "pattern": self._view.heads[layer][head]}

    @command(prompt=str)
    def _run(self, prompt: str) -> dict[str, Any]:
        """Run the model on a new prompt (the page then asks for the overview again)."""
        self.prompt = prompt
        return {"version": self.version, "n_tokens": len(self._view.tokens)}

    # ------------------------------------------------------------------ static picture

    def figure(self) -> "go.Figure":
        """The current view as a plotly figure: the focused head's pattern (query x key) beside
        the layers x heads grids of the previous-token and induction scores, focus marked."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        view, (layer, head) = self._view, self.focus
        codes = wire.decode(view.heads[layer][head])
        n = codes.shape[0]
        z = np.where(np.tril(np.ones((n, n), dtype=bool)), codes / 255, np.nan)
        labels = [f"{i} {html.escape(t)}" for i, t in enumerate(view.tokens)]
        ticks = list(range(0, n, max(1, n // 24)))
        names = [s.replace("_", "-") for s in SHOWN_SCORES]
        fig = make_subplots(rows=1, cols=1 + len(SHOWN_SCORES), column_widths=[0.5] + [0.25] * len(SHOWN_SCORES),
                            subplot_titles=["pattern (query x key)", *names], horizontal_spacing=0.1)
        fig.add_trace(go.Heatmap(z=z, colorscale="Blues", zmin=0, zmax=1, colorbar=dict(title="attention", x=0.46),
                                 hovertemplate="query %{y}, key %{x}: %{z:.3f}<extra></extra>"), row=1, col=1)
        fig.update_xaxes(title_text="key", tickvals=ticks, ticktext=[labels[i] for i in ticks], row=1, col=1)
        fig.update_yaxes(title_text="query", tickvals=ticks, ticktext=[labels[i] for i in ticks], autorange="reversed",
                         row=1, col=1)
        sites = [f"attn.{L}" for L in range(view.scores.shape[0])]
        heads = [str(h) for h in range(view.scores.shape[1])]
        for k, name in enumerate(names, start=2):
            fig.add_trace(go.Heatmap(z=view.scores[..., k - 2], x=heads, y=sites, colorscale="Viridis", zmin=0, zmax=1,
                                     showscale=False, hovertemplate=f"%{{y}} head %{{x}}<br>{name} %{{z:.3f}}<extra></extra>"),
                          row=1, col=k)
            fig.add_trace(go.Scatter(x=[str(head)], y=[sites[layer]], mode="markers", showlegend=False, hoverinfo="skip",
                                     marker=dict(symbol="square-open", size=14, color="red", line=dict(width=2))),
                          row=1, col=k)
            fig.update_xaxes(type="category", title_text="head", row=1, col=k)
            fig.update_yaxes(type="category", autorange="reversed", row=1, col=k)
        return fig.update_layout(title=f"attn.{layer} head {head} on {n} tokens of {self._model.cfg.model_name}")


__all__ = ["AttentionMap", "THUMB", "SHOWN_SCORES"]
