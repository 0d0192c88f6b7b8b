"""Intervention effects: run stimuli with and without an intervention and compare a metric.

Example:
    >>> r = effect(model, stim, lesion("attn.1", [0]), metric="loss", by="is_repeat", n_boot=200)
    >>> r.df.columns[:3].tolist()
    ['is_repeat', 'intervention', 'baseline']
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from llmscope.checks import count
from llmscope.analysis.stats import ratio_ci
from llmscope.behaviour import By, Metric, group_columns, groups, metric_fn, metric_name, scored_rows
from llmscope.errors import InterventionError
from llmscope.interventions import Intervention, intervene
from llmscope.result import Result
from llmscope.stimuli.core import Stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge


def compare(rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict:
    """Baseline vs intervened means of paired rows (columns ``baseline``, ``intervened``, ``seq``),
    with a 95% cluster-bootstrap CI over sequences and a t-test of per-sequence differences."""
    per_seq = rows.groupby("seq").agg(b=("baseline", "sum"), i=("intervened", "sum"), n=("baseline", "size"))
    base, hit = per_seq["b"].sum() / per_seq["n"].sum(), per_seq["i"].sum() / per_seq["n"].sum()
    delta, n = (per_seq["i"] - per_seq["b"]).to_numpy(), per_seq["n"].to_numpy()
    low, high = ratio_ci(delta, n, n_boot, seed)
    p = np.nan
    if len(per_seq) >= 2:
        from scipy import stats

        with warnings.catch_warnings():  # identical differences: p is NaN, which is the answer
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_1samp(delta / n, 0.0).pvalue)
    return dict(baseline=base, intervened=hit, difference=hit - base,
                ratio=hit / base if base != 0 else np.nan, ci_low=low, ci_high=high, p=p,
                n=int(n.sum()), n_seqs=len(per_seq))


def _label(row: pd.Series, by: list[str]) -> str:
    return " / ".join(str(row[c]) for c in by) if by else "all"


def _plot_effect(result: Result) -> "go.Figure":
    import plotly.graph_objects as go

    df, by = result.df, result.meta["by"]
    fig = go.Figure(go.Bar(
        x=[_label(r, by) for _, r in df.iterrows()], y=df["difference"],
        error_y=dict(type="data", symmetric=False, array=df["ci_high"] - df["difference"],
                     arrayminus=df["difference"] - df["ci_low"]),
        customdata=df[["baseline", "intervened", "n"]].to_numpy(),
        hovertemplate=("baseline %{customdata[0]:.4g}<br>intervened %{customdata[1]:.4g}"
                       "<br>n %{customdata[2]}<extra></extra>"),
    ))
    fig.add_hline(y=0, line_color="grey")
    return fig.update_layout(title=f"{result.meta['intervention']}: change in {result.meta['metric']} (95% CI)",
                             xaxis_title=" / ".join(by) or None, yaxis_title=f"Δ {result.meta['metric']}",
                             xaxis_type="category")


def _interventions(intervention: Intervention | Sequence[Intervention]) -> list[Intervention]:
    ivs = list(intervention) if isinstance(intervention, (list, tuple)) else [intervention]
    bad = [iv for iv in ivs if not isinstance(iv, Intervention)]
    if not ivs or bad:
        raise InterventionError("effect() takes an intervention (lesion(...), gain(...), steer(...), patch(...)) "
                                f"or a list of them; got {intervention!r}.")
    return ivs


def effect(model: "TransformerBridge", stimuli: Stimuli, intervention: Intervention | Sequence[Intervention],
           metric: Metric = "loss", by: By = None, align: str = "target", include_bos: bool = False,
           batch_size: int = 8, n_boot: int = 2000, seed: int = 0) -> Result:
    """Run the stimuli with and without ``intervention`` and compare a metric per group.

    ``df`` has one row per group of ``by``: the group's labels, ``intervention`` (what was
    measured), ``baseline`` and ``intervened`` means over rows, their ``difference``
    (intervened - baseline) and ``ratio``, a 95% CI of the difference (``ci_low``, ``ci_high``:
    percentile bootstrap resampling whole sequences), ``p`` (t-test of per-sequence mean
    differences against 0), ``n`` rows and ``n_seqs``. A loss is grouped by the predicted
    token's labels unless ``align="context"``; BOS rows are left out unless ``include_bos``.
    ``meta``: ``metric``, ``intervention``, ``by``, ``align``, ``stimuli``, ``ci``.
    """
    ivs = _interventions(intervention)
    count(n_boot, "n_boot")
    metric_fn(metric, align)
    group_columns(stimuli.tokens if isinstance(stimuli, Stimuli) else pd.DataFrame(), by)
    for iv in ivs:  # validate against the model before the first forward pass
        iv.fwd_hooks(model)
    base = scored_rows(model, stimuli, metric, align, include_bos, batch_size)
    with intervene(model, ivs):
        hit = scored_rows(model, stimuli, metric, align, include_bos, batch_size)
    rows = base.rename(columns={"value": "baseline"}).join(hit["value"].rename("intervened"), how="inner")
    cols = group_columns(rows, by)
    name = " + ".join(map(repr, ivs))
    df = pd.DataFrame([{**key, "intervention": name, **compare(g, n_boot, seed)} for key, g in groups(rows, cols)])
    meta = dict(metric=metric_name(metric), intervention=name, by=cols, align=align,
                stimuli=stimuli.name, ci="95% percentile bootstrap over sequences")
    return Result(df, kind="effect", meta=meta, plotter=_plot_effect)


__all__ = ["effect", "compare"]
