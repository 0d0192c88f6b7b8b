"""Behaviour: what the model does on stimuli, as metrics of its logits and the trial table.

A *metric* is a function of one batch's logits and the stimuli of that batch, returning one
value per trial-table row (NaN where it is undefined), as in TransformerLens's patching
metrics. Metrics never run the model; :func:`evaluate` runs it once per batch and applies them.

* :func:`loss`, :func:`correct` — next-token cross-entropy (nats) and argmax hit;
* :func:`confidence`, :func:`entropy` — the top guess's probability and the entropy (nats) of the
  next-token distribution;
* :func:`logit_diff` — ``logit[good] - logit[bad]`` at the target rows of a minimal-pair paradigm;
* :func:`evaluate` — the trial table plus one column per metric (runs the model), as a Result;
* :func:`token_loss` — the trial table plus ``loss`` and ``correct``, as a Result;
* :func:`metric` — a metric's mean per group of any trial-table column.

**A loss belongs to the token being predicted** (``align="target"``, the default, as in
TransformerLens): row ``(seq, pos)`` holds the loss of predicting the token at ``pos`` from the
tokens before it, so grouping by ``pos_tag`` gives "loss on nouns". The first token of a
sequence predicts from nothing, so its loss is NaN. ``align="context"`` is the other reading:
row ``pos`` holds the loss of predicting ``pos + 1`` ("loss after nouns"; the last row is NaN).
BOS rows (``is_bos``) are left out of grouped metrics unless ``include_bos=True``.

A metric is ``"loss"``, ``"correct"``, ``"logit_diff"`` (columns ``good_id``, ``bad_id``,
``is_target``) or a callable ``fn(logits, stimuli) -> array`` with one value per row of
``stimuli.tokens``, e.g. ``functools.partial(logit_diff, good="io_id", bad="s_id")``.

Example:
    >>> import llmscope
    >>> from llmscope import metric
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> metric(model, stim, "loss", by="pos_tag").df.columns.tolist()
    ['pos_tag', 'mean', 'sem', 'n']
"""

from __future__ import annotations

import html
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from llmscope import identity
from llmscope.checks import choice, count
from llmscope.errors import AnalysisError, ColumnError
from llmscope.result import Result
from llmscope.stimuli import trials
from llmscope.stimuli.core import Stimuli, as_stimuli
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

Metric = Union[str, Callable[[torch.Tensor, Stimuli], np.ndarray]]
By = Union[str, Sequence[str], None]
ALIGNS = ("target", "context")


# ---------------------------------------------------------------- per-token loss, the one definition


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token loss ``[batch, pos]`` aligned to the predicted token: entry ``t`` is the
    cross-entropy of ``ids[:, t]`` under ``logits[:, t - 1]``; entry 0 is NaN.

    Example:
        >>> import torch
        >>> from llmscope.behaviour import next_token_loss
        >>> next_token_loss(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]])).tolist()[0][1:]
        [1.3862943649291992, 1.3862943649291992]
    """
    out = torch.full(ids.shape, float("nan"), dtype=torch.float32, device=ids.device)
    out[:, 1:] = cross_entropy(logits[:, :-1], ids[:, 1:])
    return out


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of each target id under its own row of logits: ``logits [..., vocab]``,
    ``targets [...]`` -> ``[...]``. Runs ``F.cross_entropy`` on the rows flattened to
    ``[n, vocab]``, whose class axis is then the contiguous last one: one fused log-softmax,
    1.4x faster on a CPU than a ``logsumexp`` (several passes), and 2-3x faster than
    ``F.cross_entropy`` over the class axis 1 of a 3-d tensor.

    Example:
        >>> import torch
        >>> from llmscope.behaviour import cross_entropy
        >>> cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])).tolist()
        [1.3862943649291992, 1.3862943649291992]
    """
    logits = logits.float()
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return flat.view(targets.shape)


def _check_align(align: str) -> str:
    return choice(align, "align (the predicted token, or the last context token)", ALIGNS)


def _per_row(values: torch.Tensor, stimuli: Stimuli, align: str) -> np.ndarray:
    """``[batch, pos]`` target-aligned values -> one per trial row, re-aligned as asked."""
    lengths = torch.as_tensor(stimuli.lengths)
    b, n = values.shape
    if align == "context":
        shifted = torch.full_like(values, float("nan"))
        shifted[:, :-1] = values[:, 1:]
        shifted[torch.arange(b), lengths - 1] = float("nan")  # the last token predicts nothing here
        values = shifted
    real = torch.arange(n) < lengths[:, None]
    return values[real].cpu().numpy().astype(np.float64)


def loss(logits: torch.Tensor, stimuli: Stimuli, align: str = "target") -> np.ndarray:
    """Next-token cross-entropy (nats) per trial row; see the module docstring for ``align``."""
    return _per_row(next_token_loss(logits, stimuli.ids[:, : logits.shape[1]]), stimuli, _check_align(align))


def correct(logits: torch.Tensor, stimuli: Stimuli, align: str = "target") -> np.ndarray:
    """1.0 where the argmax of the prediction is the actual token, 0.0 where not, NaN where undefined."""
    ids = stimuli.ids[:, : logits.shape[1]]
    hit = torch.full(ids.shape, float("nan"))
    hit[:, 1:] = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float()
    return _per_row(hit, stimuli, _check_align(align))


def _of_prediction(fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, stimuli: Stimuli,
                   align: str) -> np.ndarray:
    """A statistic of each next-token distribution, placed on trial rows as :func:`loss` is."""
    values = torch.full(logits.shape[:2], float("nan"))
    values[:, 1:] = fn(logits[:, :-1].float().log_softmax(-1))  # target-aligned: row t scores the prediction of t
    return _per_row(values, stimuli, _check_align(align))


def confidence(logits: torch.Tensor, stimuli: Stimuli, align: str = "target") -> np.ndarray:
    """The probability of the model's top next-token guess, per trial row (aligned as :func:`loss`)."""
    return _of_prediction(lambda logp: logp.max(-1).values.exp(), logits, stimuli, align)


def entropy(logits: torch.Tensor, stimuli: Stimuli, align: str = "target") -> np.ndarray:
    """The entropy (nats) of the next-token distribution, per trial row (aligned as :func:`loss`)."""
    return _of_prediction(lambda logp: -(logp.exp() * logp).sum(-1), logits, stimuli, align)


def check_logit_diff(stimuli: Stimuli, good: str, bad: str, where: str, d_vocab: int | None = None) -> None:
    """The columns :func:`logit_diff` reads exist and hold token ids at some ``where`` row, or a clear error."""
    table = stimuli.tokens
    missing = [c for c in (good, bad, where) if c not in table.columns]
    if missing:
        raise ColumnError.Unknown(
            f"the stimuli have no column {missing}; logit_diff reads token ids from good={good!r} and "
            f"bad={bad!r} at rows where {where!r} is true (columns: {list(table.columns)}).")
    flag = _flag(table[where])
    if not flag.any():
        raise AnalysisError(f"no row of the stimuli has {where}=True; nothing to score.")
    ids = table.loc[flag, [good, bad]].to_numpy()
    if not np.issubdtype(ids.dtype, np.integer) or (d_vocab is not None and (ids.min() < 0 or ids.max() >= d_vocab)):
        top = "" if d_vocab is None else f" in 0..{d_vocab - 1}"
        raise AnalysisError.Range(f"{good!r} and {bad!r} must hold token ids{top} at the {where!r} rows.")


@renamed(at="where")
def logit_diff(logits: torch.Tensor, stimuli: Stimuli, good: str = "good_id", bad: str = "bad_id",
               where: str = "is_target") -> np.ndarray:
    """``logit[good] - logit[bad]`` of the prediction made after each row where ``where`` is true
    (NaN on the other rows); ``good``/``bad`` name trial-table columns of token ids."""
    check_logit_diff(stimuli, good, bad, where, logits.shape[-1])
    table = stimuli.tokens
    out = np.full(len(table), np.nan)
    flag = _flag(table[where])
    seq, pos = (torch.tensor(table.loc[flag, c].to_numpy()) for c in ("seq", "pos"))
    g, w = (torch.tensor(table.loc[flag, c].to_numpy(dtype=np.int64)) for c in (good, bad))
    out[flag] = (logits[seq, pos, g] - logits[seq, pos, w]).float().cpu().numpy()
    return out


def _flag(column: pd.Series) -> np.ndarray:
    return column.astype("boolean").fillna(False).to_numpy(dtype=bool)


METRICS: dict[str, Callable[..., np.ndarray]] = {"loss": loss, "correct": correct, "confidence": confidence,
                                                 "entropy": entropy, "logit_diff": logit_diff}


# ---------------------------------------------------------------- running the model


def metric_name(metric: Metric) -> str:
    """A metric's name for tables and titles."""
    if isinstance(metric, str):
        return metric
    return getattr(metric, "__name__", None) or getattr(getattr(metric, "func", None), "__name__", "custom")


def metric_fn(metric: Metric, align: str = "target") -> Callable[[torch.Tensor, Stimuli], np.ndarray]:
    """A metric name or callable -> ``fn(logits, stimuli)``; an AnalysisError names the choices."""
    _check_align(align)
    if isinstance(metric, str):
        if metric not in METRICS:
            raise AnalysisError.Unknown(f"unknown metric {metric!r}; choose one of {list(METRICS)} or pass a callable "
                                "fn(logits, stimuli) -> one value per trial row.")
        fn = METRICS[metric]
        return fn if fn is logit_diff else partial(fn, align=align)
    if callable(metric):
        return metric
    raise AnalysisError.Type(f"a metric is a name ({list(METRICS)}) or a callable fn(logits, stimuli); "
                        f"got {type(metric).__name__}.")


def batches(model: "TransformerBridge", stimuli: Stimuli,
            batch_size: int = 8) -> Iterator[tuple[Stimuli, torch.Tensor]]:
    """Yield ``(batch stimuli, logits [b, pos, vocab] float32)``, one forward pass per batch."""
    stimuli = as_stimuli(model, stimuli)
    batch_size = count(batch_size, "batch_size")
    for lo in range(0, stimuli.n_seqs, batch_size):
        part = stimuli.select_seqs(np.arange(lo, min(lo + batch_size, stimuli.n_seqs)))
        with torch.no_grad():  # not held across the yield: grad mode is global state
            logits = model(part.ids, return_type="logits").float()
        yield part, logits


def _values(fn: Callable, logits: torch.Tensor, part: Stimuli, name: str) -> np.ndarray:
    raw = fn(logits, part)
    try:
        values = np.asarray(raw.detach().cpu() if isinstance(raw, torch.Tensor) else raw, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (len(part),):
        shape = "" if values is None else f" of shape {values.shape}"
        raise AnalysisError.Type(
            f"the metric {name!r} must return one number per trial row of the stimuli it is given "
            f"({len(part)} rows), as an array; it returned {type(raw).__name__}{shape}.")
    return values


class EvaluationResult(Result):
    """What :func:`evaluate` returns: ``.df`` is the trial table plus one float column per metric
    (NaN where a metric is undefined); ``.meta``: ``metrics`` (column -> metric name), ``align``,
    ``model``, ``fingerprint``, ``stimuli``. ``.plot()`` draws each metric's mean by position."""

    kind = "evaluate"

    def plot(self) -> "go.Figure":
        """Each metric's mean over sequences at every position (BOS rows left out)."""
        import plotly.graph_objects as go

        rows = self.df[trials.rows(self.df)]
        fig = go.Figure()
        for col in self.meta["metrics"]:
            by_pos = rows.groupby("pos")[col].agg(["mean", "sem"]).dropna(subset=["mean"])
            fig.add_trace(go.Scatter(x=by_pos.index, y=by_pos["mean"], name=html.escape(col), mode="lines+markers",
                                     error_y=dict(type="data", array=by_pos["sem"].fillna(0).to_numpy())))
        title = ", ".join(map(html.escape, self.meta["metrics"]))
        return fig.update_layout(title=f"{title} by position ({html.escape(self.meta['stimuli'])})",
                                 xaxis_title="position", yaxis_title="mean (± s.e.m.)")


class TokenLossResult(EvaluationResult):
    """What :func:`token_loss` returns: the trial table plus ``loss`` (nats) and ``correct``."""

    kind = "token_loss"


@renamed(metrics="metric")
def evaluate(model: "TransformerBridge", stimuli: Stimuli, metric: Metric | Mapping[str, Metric] = "loss",
             align: str = "target", batch_size: int = 8) -> EvaluationResult:
    """The trial table plus one float column per metric (runs the model once per batch).

    Args:
        model: the model to run.
        stimuli: Stimuli, or text.
        metric: a metric (its name is the column), or a mapping ``{column: metric}`` for several.
        align: ``"target"`` (a value belongs to the predicted token) or ``"context"``.
        batch_size: sequences per forward pass.

    Example:
        >>> import llmscope
        >>> from llmscope import evaluate
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> evaluate(model, stim, {"loss": "loss", "hit": "correct"}).df.columns[-2:].tolist()
        ['loss', 'hit']
    """
    named = dict(metric) if isinstance(metric, Mapping) else {metric_name(metric): metric}
    fns = {col: metric_fn(m, align) for col, m in named.items()}
    stimuli = as_stimuli(model, stimuli)
    for col, m in named.items():
        if m == "logit_diff":
            check_logit_diff(stimuli, "good_id", "bad_id", "is_target", model.cfg.d_vocab)
    out: dict[str, list[np.ndarray]] = {col: [] for col in fns}
    for part, logits in batches(model, stimuli, batch_size):
        for col, fn in fns.items():
            out[col].append(_values(fn, logits, part, metric_name(named[col])))
    table = stimuli.tokens.copy()
    for col, parts in out.items():
        table[col] = np.concatenate(parts)
    meta = dict(metrics={col: metric_name(m) for col, m in named.items()}, align=align,
                model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(), stimuli=stimuli.name)
    return EvaluationResult(table, meta)


def token_loss(model: "TransformerBridge", stimuli: Stimuli, batch_size: int = 8,
               align: str = "target") -> TokenLossResult:
    """The trial table plus ``loss`` (nats) and ``correct`` (boolean, NA where undefined).

    Row ``(seq, pos)`` scores the prediction *of* the token at ``pos`` (``align="target"``).

    Example:
        >>> import llmscope
        >>> from llmscope import token_loss
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> t = token_loss(model, stim).df
        >>> bool(t.loc[t.pos == 0, "loss"].isna().all())
        True
    """
    result = evaluate(model, stimuli, {"loss": "loss", "correct": "correct"}, align, batch_size)
    table = result.df
    hits = table["correct"].to_numpy()
    table["correct"] = pd.arrays.BooleanArray(hits == 1, np.isnan(hits))
    return TokenLossResult(table, result.meta)


def group_columns(rows: pd.DataFrame, by: By) -> list[str]:
    """``by`` as a list of trial-table columns, or a ColumnError naming the columns there are."""
    cols = [] if by is None else [by] if isinstance(by, str) else list(by)
    for c in cols:
        trials.column(rows, c, "column to group by")
    return cols


def groups(rows: pd.DataFrame, by: list[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    """``(labels, rows)`` per group of ``by`` (one group of everything when ``by`` is empty)."""
    if not by:
        yield {}, rows
        return
    for key, group in rows.groupby(by, sort=True, observed=True):
        yield dict(zip(by, key if isinstance(key, tuple) else (key,))), group


def scored_rows(model: "TransformerBridge", stimuli: Stimuli, metric: Metric, align: str = "target",
                include_bos: bool = False, batch_size: int = 8) -> pd.DataFrame:
    """Trial rows that have a value of ``metric`` (column ``value``), BOS rows out unless asked."""
    stimuli = as_stimuli(model, stimuli)
    keep = trials.rows(stimuli.tokens, include_bos)
    rows = evaluate(model, stimuli, {"value": metric}, align, batch_size).df[keep]
    rows = rows.dropna(subset=["value"])
    if rows.empty:
        raise AnalysisError(f"no row has a value of {metric_name(metric)} (a one-token sequence has no "
                            "next-token loss; BOS rows are left out unless include_bos=True).")
    return rows


class MetricResult(Result):
    """What :func:`metric` returns: ``.df`` has one row per group of ``by`` (its columns first),
    then ``mean``, ``sem`` (standard error across rows) and ``n`` (rows); ``.meta``: ``metric``,
    ``by``, ``align``, ``include_bos``, ``model``, ``fingerprint``, ``stimuli``."""

    kind = "metric"

    def plot(self) -> "go.Figure":
        """The mean per group, with ± s.e.m. bars."""
        import plotly.graph_objects as go

        by, df = self.meta["by"], self.df
        x = [" · ".join(html.escape(str(v)) for v in row) for row in df[by].itertuples(index=False)] if by else ["all"]
        fig = go.Figure(go.Bar(x=x, y=df["mean"], error_y=dict(type="data", array=df["sem"].fillna(0).to_numpy()),
                               hovertext=[f"n = {n}" for n in df["n"]]))
        name = html.escape(self.meta["metric"])
        return fig.update_layout(title=f"{name} by {html.escape(', '.join(by)) or 'all rows'}",
                                 xaxis=dict(type="category", title=html.escape(", ".join(by))),
                                 yaxis_title=f"mean {name} (± s.e.m.)")


def metric(model: "TransformerBridge", stimuli: Stimuli, metric: Metric = "loss", by: By = None,
           align: str = "target", include_bos: bool = False, batch_size: int = 8) -> MetricResult:
    """A metric's mean, standard error (across rows) and row count, per group of ``by``.

    Example:
        >>> import llmscope
        >>> from llmscope import metric
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> metric(model, stim, "correct").df.n.item() > 0
        True
    """
    stimuli = as_stimuli(model, stimuli)
    group_columns(stimuli.tokens, by)
    rows = scored_rows(model, stimuli, metric, align, include_bos, batch_size)
    cols = group_columns(rows, by)
    df = pd.DataFrame([{**key, "mean": g["value"].mean(), "sem": g["value"].sem(), "n": len(g)}
                       for key, g in groups(rows, cols)])
    meta = dict(metric=metric_name(metric), by=cols, align=align, include_bos=include_bos,
                model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(), stimuli=stimuli.name)
    return MetricResult(df, meta)


__all__ = ["next_token_loss", "cross_entropy", "loss", "correct", "confidence", "entropy", "logit_diff", "evaluate",
           "token_loss", "metric", "METRICS", "EvaluationResult", "TokenLossResult", "MetricResult"]
