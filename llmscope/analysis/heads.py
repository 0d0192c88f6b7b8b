"""Head localizers: which attention heads look at the previous token, at earlier copies of the
current token, or at the token after such a copy (induction), and whether lesioning them hurts.

* :func:`localize_heads` reads attention patterns (``blocks.L.attn.hook_pattern``) and scores
  every head (layer x head). Three scores, each the mean over query tokens that have a target
  of the attention the head pays to the target keys:

  - ``previous_token``: the key at ``query - 1``;
  - ``duplicate_token``: every earlier key holding the same token as the query;
  - ``induction``: every key right after an earlier occurrence of the query's token (where an
    induction head looks to copy what came next last time).

  Targets come from the token ids alone, so the scores run on any stimuli; the duplicate and
  induction scores need repeated tokens (``induction(...)`` paradigm, organism documents with
  ``is_repeat``, or any text with repeats). Beside each score, ``<score>_control`` is the
  attention the same head pays to as many *other* causal keys of the same queries (the
  expected score of a shuffled-key control): a head that spreads its attention evenly scores
  the same on both; a head tuned to the target scores far above its control.
* :func:`confirm_by_lesion` runs the model: it zero-lesions each given head and measures the
  change in loss on the rows of interest (``is_repeat`` by default), against the same lesion
  of random other heads (a null distribution: percentile and p-value). It is a configuration
  of the engine's stacked lesion runner (:func:`llmscope.engine.lesions.run`).

Example:
    >>> import llmscope
    >>> from llmscope import confirm_by_lesion, localize_heads
    >>> model = llmscope.load("grammar-2l")
    >>> stim = llmscope.stimuli.grammar(model, n_docs=8, seed=0)
    >>> heads = localize_heads(model, stim, progress=False)
    >>> heads.top(1).index.tolist()
    [('attn.1', 0)]
    >>> confirm_by_lesion(model, stim, heads.top(1), progress=False).df["percentile"].tolist()
    [100.0]
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import pandas as pd
import torch

from llmscope import checks, identity
from llmscope.checks import count, draws, flag
from llmscope.engine import lesions as engine
from llmscope.errors import AnalysisError, SiteError
from llmscope.result import Result
from llmscope.sites import UnitsLike, resolve_units, site, unit_index, unit_labels
from llmscope.stimuli import trials
from llmscope.stimuli.core import Stimuli, as_stimuli
from llmscope.tokens import check_tokens
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

SCORES = ("previous_token", "duplicate_token", "induction")
METRICS = {"loss": 1.0, "correct": -1.0}  # the sign that turns a change of the metric into harm


def _kept_grid(stimuli: Stimuli, keep: np.ndarray) -> torch.Tensor:
    """The trial-table mask ``keep`` laid out as ``[n_seqs, max_len]`` (padding False)."""
    grid = torch.zeros(stimuli.ids.shape, dtype=torch.bool)
    t = stimuli.tokens
    grid[t["seq"].to_numpy(copy=True), t["pos"].to_numpy(copy=True)] = torch.tensor(keep)
    return grid


def _targets(ids: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each score's target keys, ``[batch, query, key]`` bool; only kept queries and keys."""
    n = ids.shape[1]
    pos = torch.arange(n)
    earlier = pos[None, :] < pos[:, None]                       # [query, key]: key before query
    same = ids[:, :, None] == ids[:, None, :]                   # [b, query, key]: same token
    previous = (pos[None, :] == pos[:, None] - 1).expand_as(same)
    induction = torch.zeros_like(same)
    induction[:, :, 1:] = same[:, :, :-1] & earlier[:, :-1]     # key k follows an earlier copy at k-1
    both = keep[:, :, None] & keep[:, None, :]
    return {"previous_token": previous & both, "duplicate_token": same & earlier & both,
            "induction": induction & both}


def _n_queries(stimuli: Stimuli, grid: torch.Tensor, batch_size: int) -> dict[str, int]:
    """How many query tokens have at least one target key, per score (no forward pass)."""
    counts = dict.fromkeys(SCORES, 0)
    for lo, ids in stimuli.batches(batch_size):
        for name, mask in _targets(ids, grid[lo:lo + len(ids), : ids.shape[1]]).items():
            counts[name] += int(mask.any(-1).sum())
    return counts


class _Accumulator:
    """Sums of each head's attention on target keys (and its shuffled-key control) over queries."""

    def __init__(self, n_layers: int, n_heads: int):
        self.score = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in SCORES}
        self.control = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in SCORES}
        self.targets: dict[str, tuple[torch.Tensor, ...]] = {}

    def aim(self, masks: dict[str, torch.Tensor]) -> None:
        """Take one batch's target keys (:func:`_targets`) as index lists: a score reads only the
        attention on its targets, so a layer costs as much as its targets, not query x key (at
        4,096 tokens a layer's patterns are 0.6 GB, its targets a few thousand cells)."""
        self.targets = {name: (*mask.nonzero(as_tuple=True), mask.sum(-1, dtype=torch.float64))
                        for name, mask in masks.items()}

    def hook(self, layer: int) -> Callable[[torch.Tensor, Any], None]:
        def read(pattern: torch.Tensor, hook: Any) -> None:  # pattern [batch, head, query, key]
            # reduced here, one layer at a time, and None returned: the activation flows on
            # unchanged and no [layers, batch, head, pos, pos] cache is ever held
            p = pattern.detach()
            batch, n_heads, n = p.shape[:3]
            n_keys = torch.arange(1, n + 1, dtype=torch.float64)  # causal keys per query
            for name, (b, q, k, n_t) in self.targets.items():
                hit = torch.zeros(batch, n, n_heads, dtype=torch.float64)  # attention on targets
                hit.index_put_((b, q), p[b, :, q, k].to("cpu", torch.float64), accumulate=True)
                hit = hit.transpose(1, 2)                                  # [b, head, query]
                counted = (n_t > 0)[:, None]
                other = (n_keys - n_t).clamp(min=1)[:, None]
                self.score[name][layer] += torch.where(counted, hit, 0).sum((0, 2))
                self.control[name][layer] += torch.where(counted, n_t[:, None] * (1 - hit) / other, 0).sum((0, 2))

        return read


def old_top(n: Any, by: Any, column: Callable[[str], str] = str) -> tuple[Any, Any]:
    """``(n, by)`` of a call in the old order ``top(name, n)`` (kept one release, with a
    FutureWarning): ``by`` is ``column(name)``."""
    if not isinstance(n, str):
        return n, by
    name, n, by = n, (1 if by is None else by), column(n)
    warnings.warn(f"top({name!r}, {n}) is now top({n}, by={by!r}); the old order will be removed in the next "
                  "release.", FutureWarning, stacklevel=3)
    return n, by


class HeadScores(Result):
    """What :func:`localize_heads` returns: one row per head (see :func:`localize_heads`)."""

    kind: ClassVar[str] = "localize_heads"
    rank_by: ClassVar[str | None] = "induction"

    @renamed(score="by")
    def top(self, n: int = 10, by: str | None = None, where: str | None = None,
            ascending: bool = False) -> pd.DataFrame:
        """The ``n`` heads with the highest score ``by`` (default ``"induction"``; any of
        :data:`SCORES` or another column): a unit table ready for ``lesion()``. A score no head
        has (no query of the stimuli had a target for it) is an AnalysisError.

        Example:
            >>> import llmscope
            >>> from llmscope import localize_heads
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> localize_heads(model, stim, progress=False).top(1, by="previous_token").index.tolist()
            [('attn.0', 2)]
        """
        n, by = old_top(n, by)
        score = by or self.rank_by
        if score in self.df.columns and self.df[score].isna().all():
            raise AnalysisError(f"no head has a {score} score: no query of these stimuli has a target "
                                f"for it (induction and duplicate scores need repeated tokens).")
        return super().top(n, by, where, ascending)

    @renamed(score="by")
    def plot(self, by: str | None = None) -> "go.Figure":
        """A layers x heads heatmap per score (or of the one score ``by``), the control in the hover."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if by is not None and by not in SCORES:
            raise AnalysisError.Unknown(f"unknown head score {by!r}; choose one of {list(SCORES)} or None (all).")
        names = list(SCORES) if by is None else [by]
        df = self.df
        layers = [f"attn.{L}" for L in sorted(df["layer"].unique())]
        heads = [str(h) for h in sorted(df["head"].unique())]
        fig = make_subplots(rows=1, cols=len(names), subplot_titles=[s.replace("_", " ") for s in names],
                            horizontal_spacing=0.08)
        for i, name in enumerate(names, start=1):
            grid = df.pivot(index="layer", columns="head", values=name)
            ctrl = df.pivot(index="layer", columns="head", values=f"{name}_control")
            fig.add_trace(go.Heatmap(
                z=grid.to_numpy(), x=heads, y=layers, customdata=ctrl.to_numpy(), zmin=0, zmax=1,
                colorscale="Viridis", showscale=i == len(names), colorbar=dict(title="attention"),
                hovertemplate=f"%{{y}}:%{{x}}<br>{name} %{{z:.3f}}<br>control %{{customdata:.3f}}<extra></extra>",
            ), row=1, col=i)
            fig.update_xaxes(type="category", title_text="head", row=1, col=i)
            fig.update_yaxes(type="category", row=1, col=i, title_text="site" if i == 1 else None)
        return fig.update_layout(title=f"head scores on {self.meta['stimuli']}")


def localize_heads(model: "TransformerBridge", stimuli: Stimuli, *, batch_size: int = 8,
                   include_bos: bool = False, progress: bool = True) -> HeadScores:
    """Previous-token, duplicate-token and induction scores of every attention head.

    Reads the attention patterns ``blocks.L.attn.hook_pattern`` ``[batch, head, query, key]``
    from one forward pass per batch, with no intervention: the model is not changed. Queries
    and target keys are trial rows (BOS rows out unless ``include_bos=True``); a query counts
    toward a score when it has at least one target key. Stimuli with no repeated token leave
    the duplicate and induction scores NaN, with a warning (the previous-token score is still
    measured); stimuli where no score has a single target raise an AnalysisError.

    Returns:
        HeadScores, whose ``df`` is indexed by ``(site, unit)`` (``"attn.L"``, head) with
        columns ``layer``, ``head``, and for each score in ``previous_token``,
        ``duplicate_token``, ``induction``: the score and ``<score>_control`` (the mean
        attention on as many other causal keys of the same queries). All are fractions of
        attention in 0..1. ``meta``: ``model``, ``stimuli``, ``include_bos``, ``n_queries``
        (queries scored, per score). ``.top(n, by=score)`` gives the best heads as a unit table;
        ``.plot(by=None)`` draws a layers x heads heatmap per score.

    Example:
        >>> import llmscope
        >>> from llmscope import localize_heads
        >>> model = llmscope.load("grammar-2l")
        >>> heads = localize_heads(model, llmscope.stimuli.grammar(model, n_docs=8), progress=False)
        >>> heads.df.nlargest(1, "previous_token")[["layer", "head"]].values.tolist()
        [[0, 2]]
    """
    from llmscope.progress import progress_bar

    stimuli = as_stimuli(model, stimuli)
    batch_size = count(batch_size, "batch_size")
    progress = flag(progress, "progress")
    grid = _kept_grid(stimuli, trials.rows(stimuli.tokens, include_bos))
    n_queries = _n_queries(stimuli, grid, batch_size)
    if not any(n_queries.values()):
        raise AnalysisError("no query token of these stimuli has a target for any head score: each "
                            "sequence needs at least two tokens besides BOS.")
    missing = [name for name, n in n_queries.items() if n == 0]
    if missing:
        warnings.warn(f"no token of these stimuli repeats an earlier one, so the scores {missing} are NaN; "
                      "use stimuli with repeats, e.g. llmscope.stimuli.induction(model).", stacklevel=2)
    cfg = model.cfg
    acc = _Accumulator(cfg.n_layers, cfg.n_heads)
    hooks = [(f"blocks.{L}.attn.hook_pattern", acc.hook(L)) for L in range(cfg.n_layers)]
    with torch.no_grad(), progress_bar(total=stimuli.n_seqs, desc="localize heads", unit="seq",
                                       show=progress, leave=False) as bar:
        for lo, ids in stimuli.batches(batch_size):
            acc.aim(_targets(ids, grid[lo:lo + len(ids), : ids.shape[1]]))
            model.run_with_hooks(check_tokens(model, ids).to(cfg.device), fwd_hooks=hooks)
            bar.update(len(ids))
    layer, head = np.divmod(np.arange(cfg.n_layers * cfg.n_heads), cfg.n_heads)
    columns: dict[str, np.ndarray] = {"layer": layer, "head": head}
    for name in SCORES:
        n = n_queries[name] or np.nan
        columns[name] = acc.score[name].numpy().ravel() / n
        columns[f"{name}_control"] = acc.control[name].numpy().ravel() / n
    index = pd.MultiIndex.from_arrays([[f"attn.{L}" for L in layer], head], names=["site", "unit"])
    meta = dict(model=str(cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(), stimuli=stimuli.name, include_bos=include_bos, n_queries=n_queries)
    return HeadScores(pd.DataFrame(columns, index=index), meta)


# ---------------------------------------------------------------- confirmation by lesion


def _head_index(model: "TransformerBridge", units: UnitsLike) -> pd.MultiIndex:
    """``units`` as a ``(site, unit)`` index of attention heads, or a SiteError."""
    index = unit_index(model, units)
    bad = sorted({s for s in index.get_level_values(0) if site(model, s).kind != "attn"})
    if bad:
        raise SiteError(f"confirm_by_lesion lesions attention heads; {bad} are not attention sites "
                        f"(use attn.0..attn.{model.cfg.n_layers - 1}).")
    return index


def _rows_of_interest(stimuli: Stimuli, where: str | None) -> np.ndarray:
    """The rows measured: trial rows (BOS out) where ``where`` is true, except each sequence's
    first token (nothing predicts it)."""
    keep = trials.rows(stimuli.tokens) & (stimuli.tokens["pos"].to_numpy() > 0)
    if where is not None:
        col = trials.column(stimuli.tokens, where, "where column")
        if not (pd.api.types.is_bool_dtype(col) or col.dropna().isin([True, False]).all()):
            raise AnalysisError.Type(f"where={where!r} must name a boolean column (such as 'is_repeat'); "
                                     f"it holds {col.dtype} values such as {col.dropna().unique()[:3].tolist()}.")
        keep &= col.astype("boolean").fillna(False).to_numpy(dtype=bool)
    if not keep.any():
        raise AnalysisError(f"no trial row has {where}=True (BOS rows and first tokens left out); nothing to measure.")
    return keep


class LesionConfirmation(Result):
    """What :func:`confirm_by_lesion` returns: one row per tested head, most harmful first.

    ``.df``, indexed by ``(site, unit)``: ``layer``, ``head``, ``delta_<metric>`` (lesioned -
    intact), ``harm`` (the delta signed so that harm is positive: a rise in loss, a fall in
    ``correct``), ``harm_control`` (the random heads' mean harm), ``harm_control_p95`` (their
    95th percentile), ``percentile`` (of the head's harm among the random heads', ties half) and
    ``p`` (``(1 + #random heads at least as harmful) / (1 + n_controls)``).

    ``.data``: per random head (``control``), ``delta`` and ``harm``, labelled by ``unit``
    (``"attn.L:h"``). ``.meta``: ``model``, ``stimuli``, ``metric``, ``where``, ``baseline``
    (intact mean), ``n_rows``, ``n_controls`` (random heads lesioned), ``seed``.
    """

    kind: ClassVar[str] = "confirm_by_lesion"
    rank_by: ClassVar[str | None] = "harm"

    def plot(self) -> "go.Figure":
        """The tested heads' deltas beside the random heads'."""
        import plotly.graph_objects as go

        df, meta, null = self.df, self.meta, self.data
        col = f"delta_{meta['metric']}"
        labels = [f"{s}:{u}" for s, u in df.index]
        fig = go.Figure([
            go.Bar(x=labels, y=df[col], name="tested heads", customdata=df[["percentile", "p"]].to_numpy(),
                   hovertemplate="%{x}<br>Δ %{y:.4g}<br>percentile %{customdata[0]:.0f}, p %{customdata[1]:.3g}"
                                 "<extra></extra>"),
            go.Box(x=["random heads"] * null.sizes["control"], y=null["delta"].values, name="random heads",
                   boxpoints="all", text=null["unit"].values, hovertemplate="%{text}<br>Δ %{y:.4g}<extra></extra>"),
        ])
        p95 = METRICS[meta["metric"]] * float(df["harm_control_p95"].iloc[0])
        fig.add_hline(y=p95, line_dash="dash", line_color="grey", annotation_text="95th percentile of random heads")
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=[*labels, "random heads"])
        where = meta["where"] or "all rows"
        return fig.update_layout(title=f"zero lesion: change in {meta['metric']} on {where}", showlegend=False,
                                 xaxis_title="head", yaxis_title=f"Δ {meta['metric']}")


@renamed(heads="units", n_random="n_controls")
def confirm_by_lesion(model: "TransformerBridge", stimuli: Stimuli, units: UnitsLike, *,
                      metric: str = "loss", where: str | None = "is_repeat", n_controls: int = 20,
                      seed: int = 0, pass_tokens: int | None = None, progress: bool = True) -> LesionConfirmation:
    """Lesion each head and compare the harm with lesions of random heads (runs the model).

    For every head of ``units`` (a unit table such as ``localize_heads(...).top(3)``, or
    ``(site, head)`` pairs), the head is zero-lesioned and ``delta`` is the change in the mean
    ``metric`` over the rows where ``where`` is true (``"loss"``: the loss of predicting those
    tokens, as :func:`llmscope.behaviour.token_loss` gives it, so ``is_repeat`` gives the loss on
    repeated tokens; ``"correct"``: the share of them that are the model's top guess;
    ``where=None`` takes every row). The control lesions, one at a time, ``n_controls`` distinct
    heads drawn at random (seeded) from the heads not tested (all of them when fewer remain):
    their deltas are the null distribution. Harm is a rise in loss or a fall in ``correct``.
    The lesions run stacked on the engine (:func:`llmscope.engine.lesions.run`; ``pass_tokens``
    per forward pass).

    Returns:
        :class:`LesionConfirmation` (its docstring lists the columns).

    Example:
        >>> import llmscope
        >>> from llmscope import confirm_by_lesion
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> r = confirm_by_lesion(model, stim, [("attn.1", 0)], n_controls=7, progress=False)
        >>> r.df["p"].tolist()
        [0.125]
    """
    import xarray as xr
    from scipy import stats

    stimuli = as_stimuli(model, stimuli)
    if not isinstance(metric, str) or metric not in METRICS:
        raise AnalysisError.Unknown(f"unknown metric {metric!r}; choose one of {list(METRICS)}.")
    n_controls, seed = draws(n_controls, "n_controls", "pass"), checks.seed(seed)
    progress = flag(progress, "progress")
    keep = _rows_of_interest(stimuli, where)
    tested = _head_index(model, units)
    every = pd.MultiIndex.from_product([[f"attn.{L}" for L in range(model.cfg.n_layers)],
                                        range(model.cfg.n_heads)], names=["site", "unit"])
    pool = every.difference(tested, sort=False)
    if len(pool) == 0:
        raise AnalysisError.Range(f"all {len(every)} heads are tested, so no head is left for the random-head "
                                  "control; test fewer heads.")
    rng = np.random.default_rng(seed)
    null = pool[np.sort(rng.choice(len(pool), size=min(n_controls, len(pool)), replace=False))]
    bat = engine.Battery([engine.Behaviour(metric, stimuli, metric, keep)])
    heads = [resolve_units(model, (s, [h])) for s, h in [*tested, *null]]
    sums = engine.run(model, bat, heads, pass_tokens=pass_tokens, progress=progress, desc="lesion heads")
    values = sums.values()[metric].to_numpy()
    deltas = values[1:] - values[0]
    sign = METRICS[metric]
    harm, null_harm = sign * deltas[:len(tested)], sign * deltas[len(tested):]
    df = pd.DataFrame({"layer": [site(model, s).layer for s, _ in tested], "head": tested.get_level_values(1),
                       f"delta_{metric}": deltas[:len(tested)], "harm": harm,
                       "harm_control": float(null_harm.mean()),
                       "harm_control_p95": float(np.percentile(null_harm, 95)),
                       "percentile": [float(stats.percentileofscore(null_harm, h, kind="mean")) for h in harm],
                       "p": [(1 + int((null_harm >= h).sum())) / (1 + len(null)) for h in harm]}, index=tested)
    df = df.iloc[np.argsort(-harm, kind="stable")]
    data = xr.Dataset({"delta": ("control", deltas[len(tested):]), "harm": ("control", null_harm)},
                      coords={"control": np.arange(len(null)), "unit": ("control", unit_labels(null))})
    meta = dict(model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(),
                stimuli=stimuli.name, metric=metric, where=where, baseline=float(values[0]), n_rows=int(keep.sum()),
                n_controls=len(null), seed=seed)
    return LesionConfirmation(df, meta, data)


__all__ = ["localize_heads", "confirm_by_lesion", "HeadScores", "LesionConfirmation", "SCORES", "METRICS"]
