"""Behaviour: what the model does on stimuli, and how an intervention changes it.

* :func:`token_loss` — the trial table plus next-token ``loss`` and ``correct`` per token;
* :func:`logit_diff` — ``logit[good] - logit[bad]`` at the target rows of a minimal-pair paradigm;
* :func:`metric` — either of them averaged per group of any trial-table column;
* :func:`effect` — baseline vs intervened per group, with a bootstrap CI across sequences;
* :func:`patching` — an activation-patching map over sites x positions (runs the model).

A *metric* is ``"loss"``, ``"correct"``, ``"logit_diff"`` (default columns ``good_id``,
``bad_id``, ``is_target``) or a callable ``fn(model, stimuli) -> DataFrame`` of trial rows with
one added column (or a ``value`` column), e.g.
``lambda m, s: logit_diff(m, s, good="io_id", bad="s_id")``.

Example:
    >>> r = effect(model, stim, lesion(("mlp.1", [3, 7])), metric="loss", by="pos_tag")  # doctest: +SKIP
    >>> r.df[["pos_tag", "baseline", "intervened", "ci_low", "ci_high"]]               # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from llmscope.interventions import Intervention, InterventionError, intervene, patch
from llmscope.result import Result
from llmscope.sites import Site, sites as resolve_sites
from llmscope.stimuli.core import Stimuli
from llmscope.tokens import PromptError, check_tokens

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

Metric = Union[str, Callable[["TransformerBridge", Stimuli], pd.DataFrame]]
By = Union[str, Sequence[str], None]
_PATCH_TOKENS = 1024  # tokens per patching pass: the logits of 1024 SmolLM2 tokens are 200 MB


def _logit_batches(model: "TransformerBridge", stimuli: Stimuli,
                   batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(first_seq, ids [b, pos], logits [b, pos, vocab])`` over the stimuli."""
    if not isinstance(stimuli, Stimuli):
        raise TypeError(f"expected Stimuli, got {type(stimuli).__name__}; "
                        "build them with a paradigm or Stimuli.from_ids.")
    if len(stimuli) == 0:
        raise PromptError("empty stimuli: give at least one sequence of at least one token.")
    for lo, ids in stimuli.batches(batch_size):
        with torch.no_grad():  # not held across the yield: grad mode is global state
            logits = model(check_tokens(model, ids), return_type="logits").float()
        yield lo, ids, logits


def token_loss(model: "TransformerBridge", stimuli: Stimuli, batch_size: int = 8) -> pd.DataFrame:
    """The trial table plus ``loss`` (next-token cross-entropy, nats) and ``correct`` (argmax hit).

    Row ``(seq, pos)`` scores the prediction of token ``pos + 1``; each sequence's last token
    predicts nothing, so there ``loss`` is NaN and ``correct`` is NA.

    Example:
        >>> token_loss(model, stim).groupby("pos_tag")["loss"].mean()   # doctest: +SKIP
    """
    loss, hit = [], []
    for lo, ids, logits in _logit_batches(model, stimuli, batch_size):
        b, n = ids.shape
        batch_loss = torch.full((b, n), float("nan"))
        batch_hit = torch.full((b, n), float("nan"))
        batch_loss[:, :-1] = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        batch_hit[:, :-1] = (logits[:, :-1].argmax(-1) == ids[:, 1:]).float()
        lengths = torch.as_tensor(stimuli.lengths[lo : lo + b])
        batch_loss[torch.arange(b), lengths - 1] = batch_hit[torch.arange(b), lengths - 1] = float("nan")
        real = torch.arange(n) < lengths[:, None]
        loss.append(batch_loss[real])
        hit.append(batch_hit[real])
    hits = torch.cat(hit).numpy()
    table = stimuli.tokens.copy()
    table["loss"] = torch.cat(loss).numpy().astype(np.float64)
    table["correct"] = pd.arrays.BooleanArray(hits == 1, np.isnan(hits))
    return table


def _flag(column: pd.Series) -> np.ndarray:
    return column.astype("boolean").fillna(False).to_numpy(dtype=bool)


def logit_diff(model: "TransformerBridge", stimuli: Stimuli, good: str = "good_id", bad: str = "bad_id",
               at: str = "is_target", batch_size: int = 8) -> pd.DataFrame:
    """``logit[good] - logit[bad]`` read at each row where ``at`` is true (the model's next-token
    prediction after that row's token), as the target rows of the trial table plus ``logit_diff``.

    Example:
        >>> logit_diff(model, agreement_stim)["logit_diff"].mean()      # doctest: +SKIP
    """
    table = stimuli.tokens
    missing = [c for c in (good, bad, at) if c not in table.columns]
    if missing:
        raise KeyError(
            f"the stimuli have no column {missing}; logit_diff reads token ids from good={good!r} and "
            f"bad={bad!r} at rows where at={at!r} is true (columns: {list(table.columns)})."
        )
    rows = table[_flag(table[at])].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no row of the stimuli has {at}=True; nothing to score.")
    seq, pos = rows["seq"].to_numpy(), rows["pos"].to_numpy()
    ids = rows[[good, bad]].to_numpy(dtype=np.int64)
    if ids.min() < 0 or ids.max() >= model.cfg.d_vocab:
        raise ValueError(f"token ids in {good!r}/{bad!r} must lie in 0..{model.cfg.d_vocab - 1}.")
    values = np.empty(len(rows))
    for lo, batch, logits in _logit_batches(model, stimuli, batch_size):
        sel = (seq >= lo) & (seq < lo + len(batch))
        b, p = torch.as_tensor(seq[sel] - lo), torch.as_tensor(pos[sel])
        g, w = torch.as_tensor(ids[sel, 0]), torch.as_tensor(ids[sel, 1])
        values[sel] = (logits[b, p, g] - logits[b, p, w]).numpy()
    rows["logit_diff"] = values
    return rows


_METRICS: dict[str, tuple[Callable[..., pd.DataFrame], str]] = {
    "loss": (token_loss, "loss"),
    "correct": (token_loss, "correct"),
    "logit_diff": (logit_diff, "logit_diff"),
}


def _per_row(model: "TransformerBridge", stimuli: Stimuli, metric: Metric, batch_size: int) -> pd.DataFrame:
    """Trial rows that have a value of the metric, in a float column ``value``."""
    if isinstance(metric, str):
        if metric not in _METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {list(_METRICS)} or pass a callable.")
        fn, column = _METRICS[metric]
        rows = fn(model, stimuli, batch_size=batch_size)
    elif callable(metric):
        rows = metric(model, stimuli)
        added = [c for c in rows.columns if c not in stimuli.tokens.columns]
        if "value" not in rows.columns and len(added) != 1:
            raise ValueError(
                f"a metric callable must add one column to the trial rows (or a 'value' column); it added {added}."
            )
        column = "value" if "value" in rows.columns else added[0]
    else:
        raise TypeError(f"a metric is a name ({list(_METRICS)}) or a callable, got {type(metric).__name__}.")
    rows = rows.rename(columns={column: "value"}).astype({"value": float}).dropna(subset=["value"])
    if rows.empty:
        raise ValueError(f"no row has a value of {_metric_name(metric)} (a one-token sequence has no next-token loss).")
    return rows


def _by_list(rows: pd.DataFrame, by: By) -> list[str]:
    cols = [] if by is None else [by] if isinstance(by, str) else list(by)
    missing = [c for c in cols if c not in rows.columns]
    if missing:
        raise KeyError(f"cannot group by {missing}: the trial table has columns {list(rows.columns)}.")
    return cols


def _groups(rows: pd.DataFrame, by: list[str]) -> Iterator[tuple[dict, pd.DataFrame]]:
    if not by:
        yield {}, rows
        return
    for key, group in rows.groupby(by, sort=True, observed=True):
        yield dict(zip(by, key)), group


def metric(model: "TransformerBridge", stimuli: Stimuli, metric: Metric = "loss", by: By = None,
           batch_size: int = 8) -> pd.DataFrame:
    """A metric's mean, standard error (across rows) and row count, per group of ``by``.

    Example:
        >>> metric(model, pos_stim, "loss", by="pos_tag")               # doctest: +SKIP
    """
    rows = _per_row(model, stimuli, metric, batch_size)
    cols = _by_list(rows, by)
    out = [{**key, "mean": g["value"].mean(), "sem": g["value"].sem(), "n": len(g)} for key, g in _groups(rows, cols)]
    return pd.DataFrame(out)


def _compare(rows: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Baseline vs intervened means of paired rows, with a cluster bootstrap CI over sequences."""
    per_seq = rows.groupby("seq").agg(b=("baseline", "sum"), i=("intervened", "sum"), n=("baseline", "size"))
    base, hit = per_seq["b"].sum() / per_seq["n"].sum(), per_seq["i"].sum() / per_seq["n"].sum()
    out = dict(baseline=base, intervened=hit, difference=hit - base,
               ratio=hit / base if base != 0 else np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan,
               n=int(per_seq["n"].sum()), n_seqs=len(per_seq))
    if len(per_seq) >= 2:
        from scipy import stats  # imported here: it costs a second at `import llmscope`

        delta, count = (per_seq["i"] - per_seq["b"]).to_numpy(), per_seq["n"].to_numpy()
        ci = stats.bootstrap((delta, count), lambda d, c, axis=-1: d.sum(axis) / c.sum(axis), paired=True,
                             vectorized=True, n_resamples=n_boot, method="percentile",
                             random_state=np.random.default_rng(seed)).confidence_interval
        with warnings.catch_warnings():  # identical differences: p is NaN, which is the answer
            warnings.simplefilter("ignore", RuntimeWarning)
            out.update(ci_low=ci.low, ci_high=ci.high, p=stats.ttest_1samp(delta / count, 0.0).pvalue)
    return out


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
                             xaxis_title=" / ".join(by) or None, yaxis_title=f"Δ {result.meta['metric']}")


def _metric_name(metric: Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def effect(model: "TransformerBridge", stimuli: Stimuli, intervention: Intervention | Sequence[Intervention],
           metric: Metric = "loss", by: By = None, batch_size: int = 8, n_boot: int = 2000,
           seed: int = 0) -> Result:
    """Run the stimuli with and without ``intervention`` and compare a metric per group.

    ``df`` has one row per group: ``baseline`` and ``intervened`` means over rows, their
    ``difference`` (intervened - baseline) and ``ratio``, a 95% CI of the difference
    (``ci_low``, ``ci_high``: percentile bootstrap resampling whole sequences), ``p`` (t-test of
    per-sequence mean differences against 0), ``n`` rows and ``n_seqs``.

    Example:
        >>> r = effect(model, stim, lesion(("mlp.1", [3])), metric="loss", by="pos_tag")  # doctest: +SKIP
        >>> r.plot()                                                                       # doctest: +SKIP
    """
    base = _per_row(model, stimuli, metric, batch_size)
    with intervene(model, intervention):
        hit = _per_row(model, stimuli, metric, batch_size)
    rows = base.rename(columns={"value": "baseline"}).join(hit["value"].rename("intervened"), how="inner")
    cols = _by_list(rows, by)
    df = pd.DataFrame([{**key, **_compare(g, n_boot, seed)} for key, g in _groups(rows, cols)])
    ivs = intervention if isinstance(intervention, (list, tuple)) else [intervention]
    meta = dict(metric=_metric_name(metric), intervention=" + ".join(map(repr, ivs)), by=cols,
                stimuli=stimuli.name, ci="95% percentile bootstrap over sequences")
    return Result(df, kind="effect", meta=meta, plotter=_plot_effect)


# ---------------------------------------------------------------- activation patching


def _corrupt_run(clean: Stimuli, corrupt: Stimuli) -> Stimuli:
    """Corrupt tokens read with clean's labels, so every run is scored against the clean answer."""
    if not (isinstance(clean, Stimuli) and isinstance(corrupt, Stimuli)):
        raise TypeError("patching takes clean and corrupt Stimuli.")
    if clean.n_seqs != corrupt.n_seqs or not np.array_equal(clean.lengths, corrupt.lengths):
        raise ValueError("clean and corrupt stimuli must pair up: same number of sequences, same lengths.")
    table = clean.tokens.copy()
    table[["token", "text"]] = corrupt.tokens[["token", "text"]].to_numpy()
    return Stimuli(corrupt.ids, corrupt.lengths, table, name=f"{corrupt.name} (corrupt)", pad_id=corrupt.pad_id)


def _plot_patching(result: Result) -> "go.Figure":
    import plotly.graph_objects as go

    df = result.df
    grid = df.pivot(index="site", columns="pos", values="value").reindex(index=list(dict.fromkeys(df["site"])))
    texts = df.drop_duplicates("pos").set_index("pos")["text"]
    fig = go.Figure(go.Heatmap(  # "pos: text" keeps repeated tokens apart on a categorical axis
        z=grid.to_numpy(), x=[f"{p}: {texts[p]}" for p in grid.columns], y=list(grid.index),
        colorscale="RdBu", zmid=0, colorbar=dict(title="restored"),
        hovertemplate="%{y} @ %{x}<br>%{z:.3f}<extra></extra>",
    ))
    return fig.update_layout(title=f"activation patching: {result.meta['metric']} restored (1 = clean)",
                             xaxis_title="position: clean token", yaxis_title="site")


def patching(model: "TransformerBridge", clean: Stimuli, corrupt: Stimuli, metric: Metric,
             sites: Sequence[str | Site] | None = None, positions: Sequence[int] | None = None) -> Result:
    """Activation patching: run ``corrupt`` with one site x position taken from ``clean``.

    ``value`` is the normalized effect ``(patched - corrupt) / (clean - corrupt)`` of the mean
    metric (1 = the clean behaviour is fully restored, 0 = no change). The metric is always
    read with clean's labels (e.g. its ``good_id``/``bad_id``). Defaults: every ``resid.L``
    site, every position.

    Several positions run in one forward pass: the corrupt sequences are stacked once per
    position (up to about 1024 tokens a pass), each copy patched at its own position. That is
    exact because patching one site leaves everything upstream of it as in the corrupt run.
    A callable metric must therefore score all the stimuli it is given in one pass.

    Returns:
        Result with ``df`` columns ``site``, ``layer``, ``pos``, ``text`` (the clean token there,
        from the first sequence that long), ``metric`` (raw mean) and ``value``; ``.plot()`` is a
        heatmap.

    Example:
        >>> r = patching(model, clean, corrupt, "logit_diff")           # doctest: +SKIP
        >>> r.plot()                                                     # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    target = _corrupt_run(clean, corrupt)
    targets = resolve_sites(model, sites or [f"resid.{L}" for L in range(model.cfg.n_layers + 1)])
    n, width = clean.n_seqs, int(clean.lengths.max())
    positions = list(range(width)) if positions is None else [int(p) for p in positions]
    if any(not -width <= p < width for p in positions):
        raise ValueError(f"positions {positions} must lie in -{width}..{width - 1} (the longest clean sequence).")
    positions = [p % width for p in positions]

    clean_value = float(_per_row(model, clean, metric, n)["value"].mean())
    corrupt_value = float(_per_row(model, target, metric, n)["value"].mean())
    if np.isclose(clean_value, corrupt_value):
        raise ValueError(f"clean and corrupt give the same {_metric_name(metric)} ({clean_value:.4g}): "
                         "there is nothing for patching to restore; choose a metric that tells them apart.")
    hooks = [s.hook for s in targets]
    with torch.no_grad():
        _, source = model.run_with_cache(clean.ids[:, :width], names_filter=hooks)
        _, base = model.run_with_cache(target.ids[:, :width], names_filter=hooks)
    text = clean.tokens.drop_duplicates("pos").set_index("pos")["text"]  # first sequence that has the position
    per_pass = max(1, _PATCH_TOKENS // (n * width))
    chunks = [positions[i:i + per_pass] for i in range(0, len(positions), per_pass)]
    rows = []
    with tqdm(total=len(targets) * len(positions), desc="patching", leave=False) as bar:
        for s in targets:
            for chunk in chunks:
                k = len(chunk)
                mixed = base[s.hook].repeat(k, *[1] * (base[s.hook].ndim - 1))
                for j, p in enumerate(chunk):  # copy j is the corrupt run with clean's activation at p
                    mixed[j * n:(j + 1) * n, p] = source[s.hook][:, p]
                with intervene(model, patch({s.hook: mixed}, s)):
                    try:
                        scored = _per_row(model, target.select_seqs(np.tile(np.arange(n), k)), metric, k * n)
                    except InterventionError as exc:
                        if not callable(metric):
                            raise
                        raise InterventionError(
                            f"{exc} patching() gives a callable metric {k * n} sequences ({k} copies of the "
                            "corrupt stimuli) to score in one forward pass; run all it is given as one batch, "
                            "e.g. token_loss(model, stim, batch_size=stim.n_seqs).") from None
                means = scored.groupby(scored["seq"].to_numpy() // n)["value"].mean()
                rows += [dict(site=s.name, layer=s.layer, pos=p, text=text[p], metric=float(means[j]),
                              value=(float(means[j]) - corrupt_value) / (clean_value - corrupt_value))
                         for j, p in enumerate(chunk)]
                bar.update(k)
    meta = dict(metric=_metric_name(metric), clean=clean_value, corrupt=corrupt_value,
                sites=[s.name for s in targets])
    return Result(pd.DataFrame(rows), kind="patching", meta=meta, plotter=_plot_patching)


__all__ = ["token_loss", "logit_diff", "metric", "effect", "patching"]
