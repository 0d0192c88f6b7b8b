"""Top examples (the neuroscope view): the contexts where one unit fires most, its token marked.

:func:`top_examples` reads one unit's responses across the whole recording and returns the
``k`` tokens with the highest response, each with up to ``context`` recorded tokens of the same
sequence on either side and every trial-table label of the token. The HTML rendering escapes
all token text (token strings are untrusted: a vocabulary can hold ``<script>``).

Example:
    >>> import llmscope
    >>> from llmscope import top_examples
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> ex = top_examples(rec, "mlp.0", 12, k=5)
    >>> ex.df.columns[:4].tolist()
    ['rank', 'seq', 'pos', 'token']
    >>> "<mark>" in ex.html()
    True
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmscope.analysis.responses import check_recording, resolve, scalar
from llmscope.checks import count
from llmscope.stimuli.trials import rows
from llmscope.errors import AnalysisError, SiteError
from llmscope.recording import Recording
from llmscope.result import Result
from llmscope.sites import UnitsLike, parse_units
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go

_OWN = ["rank", "seq", "pos", "token", "activation", "text", "left", "right"]


def _one_unit(recording: Recording, units: Any, indices: Any) -> tuple[str, int]:
    """``(site name, unit index)`` from a site and an index, or from a one-row unit table."""
    pairs = parse_units(units, indices)
    if len(pairs) != 1 or pairs[0][1] is None or len(pairs[0][1]) != 1:
        raise SiteError.Type(f"top_examples shows one unit: a site and an index ('mlp.0', 12) or a one-row unit "
                             f"table such as tuning(...).top(1); got units={units!r}, indices={indices!r}.")
    (s, (index,)), = resolve(recording, units if indices is None else pairs)  # a unit table's model is checked
    return s.name, int(index)


class ExamplesResult(Result):
    """What :func:`top_examples` returns; ``.html()`` (and the notebook display) shows the contexts.

    ``.df``, one row per example, best first:

    ==========  ===============================================================================
    rank        1 = the strongest response
    seq, pos    where the token is (sequence, position)
    token       its id
    activation  the unit's response there
    text        the token's text
    left        the text of up to ``context`` recorded tokens before it in the same sequence
    right       ... and after it
    (labels)    every other trial-table column of the token (``pos_tag``, ``is_repeat``...),
                except those whose names clash with the columns above
    ==========  ===============================================================================

    ``.meta``: ``site``, ``unit``, ``k``, ``context``, ``include_bos``, ``n_tokens`` (rows searched),
    ``joiner`` (what joins token texts: ``""`` for subword vocabularies, ``" "`` for word-level
    ones), ``model``, ``fingerprint``, ``stimuli``, ``complete``, ``recorded_seqs``, ``stimuli_seqs``.

    ``.plot()``: the examples' activations as bars, the contexts in the hover.
    """

    kind = "top_examples"

    def html(self) -> str:
        """The examples as an HTML table, the max token highlighted; every text is escaped."""
        gap = self.meta["joiner"]
        lines = "".join(
            f"<tr><td>{r.rank}</td><td>{r.activation:.4g}</td><td>{r.seq}:{r.pos}</td>"
            f"<td style='white-space:pre;font-family:monospace'>{html.escape(r.left + gap)}"
            f"<mark><b>{html.escape(r.text)}</b></mark>{html.escape(gap + r.right)}</td></tr>"
            for r in self.df.itertuples())
        unit = html.escape(f"{self.meta['site']}:{self.meta['unit']}")
        return (f"<p><b>top {len(self.df)} examples of {unit}</b> ({html.escape(str(self.meta['stimuli']))}, "
                f"{self.meta['n_tokens']} tokens)</p><table><tr><th>rank</th><th>activation</th><th>seq:pos</th>"
                f"<th>context</th></tr>{lines}</table>")

    def _repr_html_(self) -> str:
        return self.html()

    def plot(self) -> "go.Figure":
        """The activations as horizontal bars, best first; each example's context in its hover."""
        import plotly.graph_objects as go

        df = self.df
        names = [f"{r}. {html.escape(t)}" for r, t in zip(df["rank"], df["text"])]
        gap = self.meta["joiner"]
        hover = [html.escape(f"{a}{gap}[{t}]{gap}{b}") for a, t, b in zip(df["left"], df["text"], df["right"])]
        fig = go.Figure(go.Bar(x=df["activation"], y=names, orientation="h", hovertext=hover,
                               hovertemplate="%{hovertext}<br>%{x:.4g}<extra></extra>"))
        fig.update_yaxes(type="category", autorange="reversed")
        unit = html.escape(f"{self.meta['site']}:{self.meta['unit']}")
        return fig.update_layout(title=f"top {len(df)} examples of {unit}", xaxis_title="activation")


def text_joiner(text: pd.Series) -> str:
    """How token texts join into running text: subword vocabularies carry their spaces
    (``" Paris"``); word-level ones (the organisms') need one between words."""
    return "" if text.str.match(r"\s").any() else " "


def context_around(text: np.ndarray, seq: np.ndarray, row: int, context: int, joiner: str) -> tuple[str, str]:
    """The texts of up to ``context`` rows of the same sequence on each side of ``row``."""
    lo = max(row - context, int(np.searchsorted(seq, seq[row], side="left")))
    hi = min(row + 1 + context, int(np.searchsorted(seq, seq[row], side="right")))
    return joiner.join(text[lo:row]), joiner.join(text[row + 1: hi])


@renamed(site="units", unit="indices")
def top_examples(recording: Recording, units: UnitsLike, indices: Any = None, k: int = 10, context: int = 8, *,
                 include_bos: bool = False) -> ExamplesResult:
    """The ``k`` tokens where one unit responds most, in context.

    Args:
        recording: a :class:`~llmscope.Recording` (or a selection of one).
        units: one unit: a recorded site (``"mlp.0"``) with ``indices`` its index; or a
            ``(site, index)`` pair or a one-row unit table (``tuning(...).top(1)``), ``indices`` omitted.
        indices: the unit's index (``0..n_units-1``) in the site named by ``units``.
        k: how many examples (fewer if the recording has fewer tokens).
        context: recorded tokens shown on each side, within the token's sequence (a selection
            shows only the rows it kept).
        include_bos: let BOS tokens be examples (they still appear in the context).

    Returns:
        An :class:`ExamplesResult` (columns in its docstring); ``.plot()`` is a bar chart.

    Raises:
        SiteError: a site the recording lacks, a unit out of range, more than one unit.
        AnalysisError: ``k < 1``, ``context < 0``, no rows to search, not a Recording.

    Example:
        >>> import llmscope
        >>> from llmscope import top_examples, tuning
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> top_examples(rec, tuning(rec, "mlp.0", "pos_tag", progress=False).top(1), k=3).df["rank"].tolist()
        [1, 2, 3]
    """
    meta = check_recording(recording, "top_examples")
    name, index = _one_unit(recording, units, indices)
    k, context = count(k, "k"), count(context, "context", minimum=0)
    keep = rows(recording.tokens, include_bos)
    if not keep.any():
        raise AnalysisError(f"the recording {recording.name!r} has no rows to search ({len(recording)} rows); "
                            "select some tokens.")
    x = scalar(recording, name, [index])[:, 0]
    candidates = np.flatnonzero(keep & ~np.isnan(x))
    best = candidates[np.argsort(-x[candidates], kind="stable")[:k]]
    t = recording.tokens
    text, seq, joiner = t["text"].astype(str).to_numpy(), t["seq"].to_numpy(), text_joiner(t["text"].astype(str))
    left, right = zip(*(context_around(text, seq, int(r), context, joiner) for r in best)) if len(best) else ((), ())
    labels = [c for c in t.columns if c not in _OWN]
    df = pd.DataFrame({"rank": np.arange(1, len(best) + 1), "seq": seq[best], "pos": t["pos"].to_numpy()[best],
                       "token": t["token"].to_numpy()[best], "activation": x[best], "text": text[best],
                       "left": list(left), "right": list(right)})
    df = pd.concat([df, t.iloc[best][labels].reset_index(drop=True)], axis=1)
    meta = dict(meta, site=name, unit=index, k=k, context=context, include_bos=include_bos,
                n_tokens=int(keep.sum()), joiner=joiner)
    return ExamplesResult(df, meta)


__all__ = ["top_examples", "ExamplesResult"]
