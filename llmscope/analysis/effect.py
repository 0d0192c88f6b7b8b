"""Intervention effects: run stimuli with and without an intervention and compare a metric.

Example:
    >>> import llmscope
    >>> from llmscope import effect, lesion
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> r = effect(model, stim, lesion("attn.1", [0]), metric="loss", by="is_repeat", n_boot=200)
    >>> r.df.columns[:3].tolist()
    ['is_repeat', 'intervention', 'baseline']
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from llmscope import checks, identity
from llmscope.checks import draws
from llmscope.analysis.stats import LEVEL, cluster_bootstrap, interval, p_value
from llmscope.behaviour import By, Metric, group_columns, groups, metric_fn, metric_name, scored_rows
from llmscope.errors import InterventionError
from llmscope.interventions import Intervention, intervene
from llmscope.result import Result
from llmscope.stimuli.core import Stimuli, as_stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge


def compare(rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """Baseline vs intervened means of paired rows (columns ``baseline``, ``intervened``, ``seq``).

    The difference's 95% interval and its p-value come from one cluster bootstrap over
    sequences (:func:`~llmscope.analysis.stats.cluster_bootstrap`): the percentile interval and
    the p-value that inverts it, so the interval excludes zero exactly when ``p < 0.05``. The
    ratio is kept only where the baseline is bounded away from zero (its interval, from the same
    draws, excludes zero); else NaN.

    Example:
        >>> import pandas as pd
        >>> from llmscope.analysis.effect import compare
        >>> rows = pd.DataFrame({"seq": [0, 0, 1, 1, 2], "baseline": [1.0, 2, 1, 1, 2],
        ...                      "intervened": [2.0, 3, 2, 1, 3]})
        >>> out = compare(rows, n_boot=200)
        >>> round(out["difference"], 3), bool(out["ci_low"] > 0) == bool(out["p"] < 0.05)
        (0.8, True)
    """
    per_seq = rows.groupby("seq").agg(b=("baseline", "sum"), i=("intervened", "sum"), n=("baseline", "size"))
    n = per_seq["n"].to_numpy()
    base, hit = float(per_seq["b"].sum() / n.sum()), float(per_seq["i"].sum() / n.sum())
    draws = cluster_bootstrap(np.stack([per_seq["b"].to_numpy(), (per_seq["i"] - per_seq["b"]).to_numpy()]), n,
                              n_boot, seed)
    (base_low, base_high), (low, high) = interval(draws)
    bounded = base_low > 0 or base_high < 0
    return dict(baseline=base, intervened=hit, difference=hit - base, ratio=hit / base if bounded else np.nan,
                ci_low=float(low), ci_high=float(high), p=float(p_value(draws[1])),
                n=int(n.sum()), n_seqs=len(per_seq))


def _label(row: pd.Series, by: list[str]) -> str:
    return " / ".join(str(row[c]) for c in by) if by else "all"


class EffectResult(Result):
    """What :func:`effect` returns: one row per group of ``by`` (see :func:`effect`)."""

    kind = "effect"

    def plot(self) -> "go.Figure":
        """The change in the metric per group, with its 95% interval."""
        import plotly.graph_objects as go

        df, by = self.df, self.meta["by"]
        fig = go.Figure(go.Bar(
            x=[html.escape(_label(r, by)) for _, r in df.iterrows()], y=df["difference"],
            error_y=dict(type="data", symmetric=False, array=df["ci_high"] - df["difference"],
                         arrayminus=df["difference"] - df["ci_low"]),
            customdata=df[["baseline", "intervened", "n"]].to_numpy(),
            hovertemplate=("baseline %{customdata[0]:.4g}<br>intervened %{customdata[1]:.4g}"
                           "<br>n %{customdata[2]}<extra></extra>"),
        ))
        fig.add_hline(y=0, line_color="grey")
        metric = html.escape(self.meta["metric"])
        return fig.update_layout(title=f"{html.escape(self.meta['intervention'])}: change in {metric} (95% CI)",
                                 xaxis_title=html.escape(" / ".join(by)) or None, yaxis_title=f"Δ {metric}",
                                 xaxis_type="category")


def _interventions(intervention: Intervention | Sequence[Intervention]) -> list[Intervention]:
    ivs = list(intervention) if isinstance(intervention, (list, tuple)) else [intervention]
    bad = [iv for iv in ivs if not isinstance(iv, Intervention)]
    if not ivs or bad:
        raise InterventionError.Type("effect() takes an intervention (lesion(...), gain(...), steer(...), patch(...)) "
                                f"or a list of them; got {intervention!r}.")
    return ivs


def effect(model: "TransformerBridge", stimuli: Stimuli, intervention: Intervention | Sequence[Intervention],
           metric: Metric = "loss", by: By = None, align: str = "target", include_bos: bool = False,
           batch_size: int = 8, n_boot: int = 2000, seed: int = 0) -> EffectResult:
    """Run the stimuli with and without ``intervention`` and compare a metric per group.

    ``df`` has one row per group of ``by``: the group's labels, ``intervention`` (what was
    measured), ``baseline`` and ``intervened`` means over rows, their ``difference``
    (intervened - baseline) and ``ratio`` (intervened / baseline; NaN unless the baseline's 95%
    interval excludes zero), a 95% interval of the difference (``ci_low``, ``ci_high``) and
    ``p``, two-sided against no change, both from one bootstrap resampling whole sequences
    (``n_boot`` draws; p inverts the percentile interval, so the interval excludes zero exactly
    when ``p < 0.05``, and p is never below ``1 / n_boot``), ``n`` rows and ``n_seqs``. A loss is grouped by the predicted
    token's labels unless ``align="context"``; BOS rows are left out unless ``include_bos``.
    ``meta``: ``metric``, ``intervention``, ``by``, ``align``, ``stimuli``, ``ci``, ``model``, ``fingerprint``.
    """
    ivs = _interventions(intervention)
    draws(n_boot, "n_boot", "resample")
    seed = checks.seed(seed)
    metric_fn(metric, align)
    stimuli = as_stimuli(model, stimuli)
    group_columns(stimuli.tokens, by)
    for iv in ivs:  # validate against the model before the first forward pass
        iv.fwd_hooks(model)
    base = scored_rows(model, stimuli, metric, align, include_bos, batch_size)
    with intervene(model, ivs):
        hit = scored_rows(model, stimuli, metric, align, include_bos, batch_size)
    rows = base.rename(columns={"value": "baseline"}).join(hit["value"].rename("intervened"), how="inner")
    cols = group_columns(rows, by)
    name = " + ".join(map(repr, ivs))
    df = pd.DataFrame([{**key, "intervention": name, **compare(g, n_boot, seed)} for key, g in groups(rows, cols)])
    meta = dict(metric=metric_name(metric), intervention=name, by=cols, align=align, include_bos=include_bos,
                stimuli=stimuli.name, model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(),
                ci=f"{LEVEL:.0%} percentile interval and the p-value that inverts it, "
                   f"from one bootstrap over sequences ({n_boot} draws)")
    return EffectResult(df, meta)


__all__ = ["effect", "compare", "EffectResult"]
