"""Activation patching: run corrupt stimuli with one site x position (x head) taken from clean ones.

Example:
    >>> import llmscope
    >>> from llmscope import logit_diff, patching
    >>> from llmscope.stimuli import ioi
    >>> smol = llmscope.load("smollm2-135m")
    >>> from functools import partial
    >>> clean = ioi(smol, n=4, seed=0, corrupt=True)   # clean prompts; clean.corrupt is their twin
    >>> io_vs_s = partial(logit_diff, good="io_id", bad="s_id")
    >>> r = patching(smol, clean, metric=io_vs_s, sites=["attn.9"], positions=[-1], per_head=True, progress=False)
    >>> r.df.columns.tolist()
    ['site', 'layer', 'head', 'pos', 'text', 'metric', 'value']
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from llmscope import identity
from llmscope.checks import choice, flag
from llmscope.behaviour import Metric, evaluate, metric_fn, metric_name
from llmscope.errors import AnalysisError
from llmscope.interventions import intervene, patch
from llmscope.result import Result
from llmscope.sites import Site, sites as resolve_sites
from llmscope.stimuli.core import Stimuli, as_stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

PASS_TOKENS = 1024  # tokens per patching pass: the logits of 1024 SmolLM2 tokens are 200 MB


def _corrupt_run(clean: Stimuli, corrupt: Stimuli) -> Stimuli:
    """Corrupt tokens read with clean's labels, so every run is scored against the clean answer."""
    if not (isinstance(clean, Stimuli) and isinstance(corrupt, Stimuli)):
        raise AnalysisError.Type("patching takes clean and corrupt Stimuli (e.g. ioi(..., corrupt=True)).")
    if clean.n_seqs != corrupt.n_seqs or not np.array_equal(clean.lengths, corrupt.lengths):
        raise AnalysisError("clean and corrupt stimuli must pair up: same number of sequences, same lengths; "
                            f"got {clean.n_seqs} and {corrupt.n_seqs} sequences.")
    table = clean.tokens.copy()
    table[["token", "text"]] = corrupt.tokens[["token", "text"]].to_numpy()
    return Stimuli(corrupt.ids, corrupt.lengths, table, name=f"{corrupt.name} (corrupt)", pad_id=corrupt.pad_id,
                   model=corrupt.model)


def _scored(model: "TransformerBridge", stimuli: Stimuli, metric: Metric, batch_size: int) -> pd.DataFrame:
    """The trial rows that have a value of ``metric`` (column ``value``), in passes of ``batch_size``."""
    rows = evaluate(model, stimuli, {"value": metric}, batch_size=batch_size).df.dropna(subset=["value"])
    if rows.empty:
        raise AnalysisError(f"no row has a value of {metric_name(metric)}; nothing to patch for.")
    return rows


def _label(df: pd.DataFrame) -> list[str]:
    return [s if h < 0 else f"{s}.{h}" for s, h in zip(df["site"], df["head"])]


class PatchingResult(Result):
    """What :func:`patching` returns: one row per cell (site x position, x head), see :func:`patching`."""

    kind = "patching"

    def plot(self) -> "go.Figure":
        """A heatmap of the restored fraction: sites (or heads) by positions."""
        import plotly.graph_objects as go

        df = self.df.assign(row=lambda d: _label(d))
        grid = df.pivot(index="row", columns="pos", values="value").reindex(index=list(dict.fromkeys(df["row"])))
        texts = df.drop_duplicates("pos").set_index("pos")["text"]
        fig = go.Figure(go.Heatmap(  # "pos: text" keeps repeated tokens apart on a categorical axis
            z=grid.to_numpy(), x=[f"{p}: {html.escape(str(texts[p]))}" for p in grid.columns], y=list(grid.index),
            colorscale="RdBu", zmid=0, colorbar=dict(title="restored"),
            hovertemplate="%{y} @ %{x}<br>%{z:.3f}<extra></extra>",
        ))
        return fig.update_layout(title=f"activation patching: {html.escape(self.meta['metric'])} restored (1 = clean)",
                                 xaxis_title="position: clean token", yaxis_title="site",
                                 xaxis_type="category", yaxis_type="category")


def _cells(targets: list[Site], positions: list[int], per_head: bool) -> list[tuple[Site, int, int]]:
    """``(site, head, pos)`` cells of the map; head -1 patches the whole site."""
    out = []
    for s in targets:
        heads = range(s.n_units) if per_head and s.kind == "attn" else [-1]
        out += [(s, h, p) for h in heads for p in positions]
    return out


def patching(model: "TransformerBridge", clean: Stimuli, corrupt: Stimuli | None = None, metric: Metric = "loss",
             sites: Sequence[str | Site] | None = None, positions: Sequence[int] | None = None,
             per_head: bool = False, method: str = "exact", confirm: int | None = None,
             progress: bool = True) -> PatchingResult:
    """Activation patching: run ``corrupt`` with one site x position taken from ``clean``.

    ``method="atp"`` (or ``"atp*"``) estimates the whole map from gradients instead
    (:func:`~llmscope.analysis.attribution.patching_screen`, a ``PatchingScreen`` whose
    ``estimate`` column stands for ``value``); ``confirm=k`` then patches its top ``k`` cells
    exactly (a ``PatchingConfirmation``: exact cells outlined in the figure).

    ``corrupt`` defaults to ``clean.corrupt``, the twin a builder makes with ``corrupt=True``
    (``agreement(model, corrupt=True)``, ``ioi(model, corrupt=True)``).

    ``value`` is the normalized effect ``(patched - corrupt) / (clean - corrupt)`` of the mean
    metric (1 = the clean behaviour is fully restored, 0 = no change). The metric is always
    read with clean's labels (e.g. its ``good_id``/``bad_id``). Defaults: every ``resid.L``
    site, every position. With ``per_head=True`` each head of an ``attn.L`` site is patched on
    its own (its ``hook_z`` slice), as TransformerLens's head-level patching does.

    Several cells run in one forward pass: the corrupt sequences are stacked once per cell (up
    to about 1024 tokens a pass), each copy patched at its own cell. That is exact because
    patching one site leaves everything upstream of it as in the corrupt run.

    Returns:
        PatchingResult with ``df`` columns ``site``, ``layer``, ``head`` (-1 = the whole site), ``pos``,
        ``text`` (the clean token there, from the first sequence that long), ``metric`` (raw
        mean) and ``value``; ``meta``: ``metric``, ``clean``, ``corrupt``, ``sites``,
        ``per_head``; ``.plot()`` is a heatmap.
    """
    from llmscope.progress import progress_bar

    method = choice(method, "method", ("exact", "atp", "atp*"))
    if method != "exact":
        from llmscope.analysis.attribution import confirm_patching, patching_screen

        screened = patching_screen(model, clean, corrupt, metric, sites, positions, per_head, method=method,
                                   progress=progress)
        return screened if confirm is None else confirm_patching(model, screened, confirm, progress=progress)
    if confirm is not None:
        raise AnalysisError(f"confirm={confirm!r} confirms an estimated map; pass method='atp' or 'atp*' too "
                            "(method='exact' patches every cell exactly).")
    clean = as_stimuli(model, clean, "clean")
    if corrupt is None:
        if clean.corrupt is None:
            raise AnalysisError.Type("patching needs corrupt stimuli: pass corrupt=, or clean stimuli built with "
                                     "corrupt=True (e.g. agreement(model, corrupt=True)), whose .corrupt is the twin.")
        corrupt = clean.corrupt
    corrupt = as_stimuli(model, corrupt, "corrupt")
    per_head, progress = flag(per_head, "per_head"), flag(progress, "progress")
    target = _corrupt_run(clean, corrupt)
    metric_fn(metric)
    targets = resolve_sites(model, sites or [f"resid.{L}" for L in range(model.cfg.n_layers + 1)])
    n, width = clean.n_seqs, int(clean.lengths.max())
    if positions is None:
        positions = list(range(width))
    elif isinstance(positions, (str, bytes)) or not all(isinstance(p, (int, np.integer)) for p in positions):
        raise AnalysisError.Type(f"positions are integer token positions, got {positions!r}.")
    if any(not -width <= p < width for p in positions) or len(positions) == 0:
        raise AnalysisError.Range(f"positions {list(positions)} must lie in -{width}..{width - 1} (the longest clean sequence).")
    positions = [int(p) % width for p in positions]

    clean_value = float(_scored(model, clean, metric, n)["value"].mean())
    corrupt_value = float(_scored(model, target, metric, n)["value"].mean())
    if np.isclose(clean_value, corrupt_value):
        raise AnalysisError(f"clean and corrupt give the same {metric_name(metric)} ({clean_value:.4g}): "
                            "there is nothing for patching to restore; choose a metric that tells them apart.")
    hooks = [s.hook for s in targets]
    with torch.no_grad():
        _, source = model.run_with_cache(clean.ids[:, :width], names_filter=hooks)
        _, base = model.run_with_cache(target.ids[:, :width], names_filter=hooks)
    text = clean.tokens.drop_duplicates("pos").set_index("pos")["text"]  # first sequence that has the position
    cells = _cells(targets, positions, per_head)
    per_pass = max(1, PASS_TOKENS // (n * width))
    rows = []
    with progress_bar(total=len(cells), desc="patching", leave=False, show=progress) as bar:
        for s in targets:
            mine = [c for c in cells if c[0] is s]
            for i in range(0, len(mine), per_pass):
                chunk = mine[i:i + per_pass]
                k = len(chunk)
                mixed = base[s.hook].repeat(k, *[1] * (base[s.hook].ndim - 1))
                for j, (_, h, p) in enumerate(chunk):  # copy j: the corrupt run with clean's activation at p (head h)
                    copy = slice(j * n, (j + 1) * n)
                    if h < 0:
                        mixed[copy, p] = source[s.hook][:, p]
                    else:
                        mixed[copy, p, h] = source[s.hook][:, p, h]
                with intervene(model, patch({s.hook: mixed}, s)):
                    scored = _scored(model, target.select_seqs(np.tile(np.arange(n), k)), metric, k * n)
                means = scored.groupby(scored["seq"].to_numpy() // n)["value"].mean()
                rows += [dict(site=s.name, layer=s.layer, head=h, pos=p, text=text[p], metric=float(means[j]),
                              value=(float(means[j]) - corrupt_value) / (clean_value - corrupt_value))
                         for j, (_, h, p) in enumerate(chunk)]
                bar.update(k)
    return PatchingResult(pd.DataFrame(rows), dict(
        metric=metric_name(metric), clean=clean_value, corrupt=corrupt_value, sites=[s.name for s in targets],
        per_head=per_head, model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict()))


__all__ = ["patching", "PatchingResult"]
