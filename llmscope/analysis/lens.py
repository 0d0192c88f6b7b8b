"""Prediction error: what each layer already predicts (the logit lens), and how the model
responds when a continuation breaks the grammar (its N400/P600 analogue).

Both are experiments: they run the model (no intervention, so it is left as it was).

* :func:`lens_logits` — the model's own final norm and unembedding (``model.ln_final``,
  ``model.unembed`` of the TransformerBridge) applied to residual-stream vectors; at the last
  residual site this is the model's output (bit for bit on the same tensor; other shapes
  sum in another order, so equal to float rounding).
* :func:`logit_lens` — per residual site ``resid.L``: KL from the model's final next-token
  distribution to the lens's, the loss and rank of the true next token, and the same numbers
  for the lens applied to token-shuffled residuals (the control).
* :func:`surprise` — minimal pairs (``agreement``: one prefix, a verb that agrees or not):
  per residual site and token offset from the critical token, the lens surprisal of the
  grammatical and the violating continuation and their difference, beside a shuffled-pair
  control (the prefix continued with another pair's agreeing verb); per unit, the
  violation-minus-grammatical response, with FDR across units.

**Alignment.** As everywhere in llmscope, a loss belongs to the token being predicted: the
lens row of token ``t`` scores the prediction of ``t`` made from the residual at ``t - 1``
(KL and rank too, so all columns describe the same predictions). In :func:`surprise` offset
``k`` is the token ``k`` places after the critical one (offset 0 is the critical token): its
surprisal is predicted from the residual just before it, and a unit's response is its
activation at that token.

Example:
    >>> import llmscope
    >>> from llmscope import logit_lens
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> lens = logit_lens(model, stim, progress=False)
    >>> lens.df[["site", "kl"]].round(2).values.tolist()[-1]
    ['resid.2', 0.0]
"""

from __future__ import annotations

import html
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from llmscope import identity
from llmscope.analysis.stats import fdr
from llmscope.behaviour import By, check_logit_diff, group_columns, groups
from llmscope.checks import choice, count, flag
from llmscope.errors import AnalysisError, SiteError
from llmscope.result import Result
from llmscope.sites import Site, UnitsLike, resolve_units, sites as resolve_sites
from llmscope.stimuli import trials
from llmscope.stimuli.core import Stimuli, as_stimuli
from llmscope.tokens import check_tokens
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import xarray as xr
    from transformer_lens.model_bridge import TransformerBridge

_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|mid|post)$")
CHUNK_BYTES = 64 << 20  # float32 bytes of lens logits held at once: bounded memory on a big vocabulary
MEASURES = ("kl", "loss", "rank")


# ---------------------------------------------------------------- the lens


def lens_logits(model: "TransformerBridge", resid: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., d_vocab]`` that the model's final norm and unembedding make of residual
    vectors ``[..., d_model]``.

    Example:
        >>> import torch
        >>> import llmscope
        >>> from llmscope.analysis.lens import lens_logits
        >>> model = llmscope.load("grammar-2l")
        >>> ids = model.to_tokens("the dog")
        >>> logits, cache = model.run_with_cache(ids)
        >>> torch.equal(lens_logits(model, cache["blocks.1.hook_resid_post"]), logits)
        True
    """
    with torch.no_grad():
        return model.unembed(model.ln_final(resid))


def lens_sites(model: "TransformerBridge", specs: "str | Site | Sequence[str | Site] | None" = None) -> list[Site]:
    """Residual-stream sites (all of ``resid.0..resid.{n_layers}`` by default), or a SiteError
    naming a site that is not the residual stream."""
    if specs is None:
        specs = [f"resid.{layer}" for layer in range(model.cfg.n_layers + 1)]
    resolved = resolve_sites(model, specs)
    bad = [s.name for s in resolved if s.kind != "resid" and not _RESID_HOOK.match(s.hook)]
    if bad:
        raise SiteError(
            f"the logit lens reads the residual stream; {bad} {'is' if len(bad) == 1 else 'are'} not residual "
            f"sites. Use resid.0..resid.{model.cfg.n_layers} or blocks.L.hook_resid_pre/mid/post.")
    return resolved


def _score(model: "TransformerBridge", resid: torch.Tensor, final: torch.Tensor,
           targets: torch.Tensor) -> dict[str, np.ndarray]:
    """Per row: KL(final || lens) in nats, the lens loss (nats) and rank (0 = top) of ``targets``.

    ``resid [n, d_model]``, ``final [n, d_vocab]`` (the model's logits), ``targets [n]``."""
    step = max(1, CHUNK_BYTES // (4 * final.shape[-1]))
    out: dict[str, list[np.ndarray]] = {m: [] for m in MEASURES}
    for lo in range(0, len(targets), step):
        part = slice(lo, lo + step)
        lens = lens_logits(model, resid[part]).float().log_softmax(-1)
        fin = final[part].float().log_softmax(-1)
        hit = lens.gather(-1, targets[part, None])
        out["kl"].append((fin.exp() * (fin - lens)).sum(-1).numpy())
        out["loss"].append(-hit[:, 0].numpy())
        out["rank"].append((lens > hit).sum(-1).numpy())
    return {m: np.concatenate(v).astype(np.float64) for m, v in out.items()}


def _contexts(stimuli: Stimuli, lo: int, ids: torch.Tensor, keep: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The batch's predictions that are scored: ``(batch row, context position, table row of the
    predicted token)`` for every kept trial row after a sequence's first token."""
    lengths = torch.as_tensor(stimuli.lengths[lo:lo + len(ids)])
    b, t = torch.nonzero(torch.arange(ids.shape[1] - 1)[None] < lengths[:, None] - 1, as_tuple=True)
    row = torch.as_tensor(stimuli.offsets()[lo:lo + len(ids)])[b] + t + 1
    scored = torch.as_tensor(keep)[row]
    return b[scored], t[scored], row[scored]


def _final_check(model: "TransformerBridge", cache: dict, logits: torch.Tensor) -> float:
    """Largest |lens - model| logit at the last residual site: 0 when the lens is the model's head."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    return float((lens_logits(model, cache[last]) - logits).abs().max())


class LensResult(Result):
    """What :func:`logit_lens` returns: one row per residual site (and group of ``by``), see
    :func:`logit_lens`; the control sits in the ``_control`` columns."""

    kind = "logit_lens"

    def plot(self, measure: str = "kl") -> "go.Figure":
        """One measure (``"kl"``, ``"loss"``, ``"rank"`` or ``"top1"``) across sites, beside its control."""
        import plotly.graph_objects as go

        choice(measure, "lens measure", [*MEASURES, "top1"])
        df, by = self.df, self.meta["by"]
        fig = go.Figure()
        for key, g in groups(df, by):
            name = html.escape(" / ".join(map(str, key.values()))) or "lens"
            fig.add_trace(go.Scatter(x=g["site"], y=g[measure], mode="lines+markers", name=name))
            fig.add_trace(go.Scatter(x=g["site"], y=g[f"{measure}_control"], mode="lines+markers",
                                     line=dict(dash="dash"), name=f"{name}: shuffled residuals"))
        title = {"kl": "KL(final || lens), nats", "loss": "loss of the next token, nats",
                 "rank": "median rank of the next token", "top1": "next token ranked first"}[measure]
        return fig.update_layout(title=f"logit lens on {html.escape(self.meta['stimuli'])}: {title}",
                                 xaxis_title="site", yaxis_title=title, xaxis_type="category")


def logit_lens(model: "TransformerBridge", stimuli: Stimuli, sites: "str | Sequence[str] | None" = None, *,
               by: By = None, include_bos: bool = False, batch_size: int = 8, seed: int = 0,
               progress: bool = True) -> Result:
    """How well each residual site already predicts the next token (runs the model).

    For every scored token (a trial row that is not a sequence's first token; BOS rows out
    unless ``include_bos``) the residual at the token before it goes through the model's
    final norm and unembedding (:func:`lens_logits`), and the lens prediction is compared with
    the model's own (KL) and with the token that came (loss, rank). The control applies the
    lens to the same residuals shuffled across the batch's scored tokens (seeded): what a
    layer predicts from some other context, so a layer beats its control only by carrying
    this context's information about the next token. At the last site the lens is the model's
    head: KL 0, loss the model's loss (``meta["final_max_abs_diff"]`` checks it).

    Returns:
        Result whose ``df`` has one row per site (and group of ``by``, the predicted token's
        labels): ``site``, ``layer``, the ``by`` columns, ``kl`` (mean KL(final || lens),
        nats), ``loss`` (mean lens loss, nats), ``top1`` (fraction of tokens ranked first),
        ``rank`` (median rank, 0 = top), each with ``<measure>_control``, and ``n`` (tokens).
        ``meta``: ``model``, ``stimuli``, ``sites``, ``by``, ``include_bos``, ``seed``,
        ``control``, ``final_max_abs_diff`` (largest |lens - model| logit at the last residual
        site, on the first batch). ``.plot(measure="kl")`` draws a measure across sites.

    Raises:
        SiteError: a site that is not the residual stream.

    Example:
        >>> import llmscope
        >>> from llmscope import logit_lens
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> r = logit_lens(model, stim, ["resid.0", "resid.1"], by="pos_tag", progress=False)
        >>> r.df.columns[:3].tolist()
        ['site', 'layer', 'pos_tag']
    """
    from llmscope.progress import progress_bar

    stimuli = as_stimuli(model, stimuli)
    resolved = lens_sites(model, sites)
    cols = group_columns(stimuli.tokens, by)
    batch_size, seed = count(batch_size, "batch_size"), count(seed, "seed", minimum=0)
    progress = flag(progress, "progress")
    keep = trials.rows(stimuli.tokens, include_bos) & (stimuli.tokens["pos"].to_numpy() > 0)
    if not keep.any():
        raise AnalysisError("no token of these stimuli is predicted from a context: each sequence needs a "
                            "token after its first (BOS rows are left out unless include_bos=True).")
    hooks = {s.hook for s in resolved} | {f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"}
    rng = np.random.default_rng(seed)
    n_rows = len(stimuli.tokens)
    values = {(s.name, m + tag): np.full(n_rows, np.nan) for s in resolved for m in MEASURES for tag in ("", "_control")}
    check = None
    with progress_bar(total=stimuli.n_seqs, desc="logit lens", unit="seq", show=progress, leave=False) as bar:
        for lo, ids in stimuli.batches(batch_size):
            with torch.no_grad():
                logits, cache = model.run_with_cache(check_tokens(model, ids).to(model.cfg.device),
                                                     names_filter=lambda name: name in hooks)
            check = _final_check(model, cache, logits) if check is None else check
            b, t, row = _contexts(stimuli, lo, ids, keep)
            final, targets = logits[b, t].cpu(), ids[b, t + 1]
            shuffled = torch.as_tensor(rng.permutation(len(row)))
            for s in resolved:
                resid = cache[s.hook][b, t].cpu()
                for tag, r in (("", resid), ("_control", resid[shuffled])):
                    for m, v in _score(model, r, final, targets).items():
                        values[(s.name, m + tag)][row.numpy()] = v
            bar.update(len(ids))
    if check is not None and check > 1e-4:
        warnings.warn(f"the lens differs from the model's own logits at the last residual site by up to {check:.3g}: "
                      "this model's head is more than ln_final + unembed, so lens numbers are approximate.",
                      stacklevel=2)
    df = _lens_table(stimuli.tokens, resolved, values, cols)
    meta = dict(model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(), stimuli=stimuli.name, sites=[s.name for s in resolved], by=cols,
                include_bos=include_bos, seed=seed, final_max_abs_diff=check,
                control="lens applied to residuals shuffled across the batch's scored tokens")
    return LensResult(df, meta)


def _lens_table(table: pd.DataFrame, resolved: list[Site], values: dict, cols: list[str]) -> pd.DataFrame:
    """One row per site and group: mean KL and loss, fraction ranked first, median rank."""
    out = []
    for s in resolved:
        scored = np.isfinite(values[(s.name, "kl")])
        rows = table.loc[scored, cols].assign(**{m: v[scored] for (name, m), v in values.items() if name == s.name})
        for key, g in groups(rows, cols):
            entry = {"site": s.name, "layer": s.layer, **key}
            for tag in ("", "_control"):
                entry.update({f"kl{tag}": g[f"kl{tag}"].mean(), f"loss{tag}": g[f"loss{tag}"].mean(),
                              f"top1{tag}": (g[f"rank{tag}"] == 0).mean(), f"rank{tag}": g[f"rank{tag}"].median()})
            out.append({**entry, "n": len(g)})
    order = ["site", "layer", *cols] + [m + tag for m in ("kl", "loss", "top1", "rank") for tag in ("", "_control")]
    return pd.DataFrame(out)[order + ["n"]]


# ---------------------------------------------------------------- the surprise response


def _contrast(diff: np.ndarray, group: np.ndarray) -> dict[str, np.ndarray]:
    """Mean paired difference over items, every group weighted equally, with a t-test.

    ``diff [n_items, ...]``; returns arrays of shape ``diff.shape[1:]``: ``effect``, ``ci_low``,
    ``ci_high`` (95%, t), ``t``, ``p`` (two-sided, ``n - n_groups`` degrees of freedom) and
    ``d`` (effect / pooled within-group sd). Equal weights keep a response to the word's form
    from passing for a response to the violation when one number is more frequent."""
    from scipy import stats

    labels = pd.unique(group)
    ns = np.array([(group == g).sum() for g in labels], dtype=float).reshape(-1, *[1] * (diff.ndim - 1))
    means = np.stack([diff[group == g].mean(0) for g in labels])
    var = np.stack([diff[group == g].var(0, ddof=1) for g in labels])
    dof = int(ns.sum()) - len(labels)
    effect = means.mean(0)
    se = np.sqrt((var / ns).sum(0)) / len(labels)
    with np.errstate(divide="ignore", invalid="ignore"):  # identical differences: se 0, t inf or NaN
        t = effect / se
        d = effect / np.sqrt(((ns - 1) * var).sum(0) / dof)
    half = stats.t.ppf(0.975, dof) * se
    return dict(effect=effect, ci_low=effect - half, ci_high=effect + half, t=t, p=2 * stats.t.sf(np.abs(t), dof), d=d)


def _tail_ids(model: "TransformerBridge", tail: "str | Sequence[int]") -> list[int]:
    if isinstance(tail, str):
        return model.to_tokens(tail, prepend_bos=False)[0].tolist() if tail.strip() else []
    ids = list(tail)
    if ids:
        check_tokens(model, torch.as_tensor(ids))
    return [int(i) for i in ids]


@dataclass
class _Items:
    """Minimal pairs read from stimuli: each sequence's prefix and the three continuations."""

    prefixes: list[list[int]]
    words: dict[str, np.ndarray]  # condition -> [n_items] token id at the critical position
    group: np.ndarray             # [n_items] the match label (one group when match is None)
    n_bos: int


def _items(stimuli: Stimuli, good: str, bad: str, at: str, match: str | None, seed: int,
           d_vocab: int) -> _Items:
    check_logit_diff(stimuli, good, bad, at, d_vocab)
    table = stimuli.tokens
    flags = table[at].astype("boolean").fillna(False).to_numpy(dtype=bool)
    ends = table.groupby("seq").size().cumsum().to_numpy() - 1
    if flags.sum() != stimuli.n_seqs or not flags[ends].all():
        raise AnalysisError(f"surprise() continues each sequence after its {at!r} row, so every sequence must end "
                            f"at its one {at}=True row (as agreement(...) stimuli do); {int(flags.sum())} rows of "
                            f"{stimuli.n_seqs} sequences are {at}=True, {int(flags[ends].sum())} of them last.")
    rows = table.iloc[ends]
    if match is None:
        group = np.zeros(len(rows), dtype=int)
    else:
        labels = trials.column(table, match, "match column").iloc[ends]
        if labels.isna().any() or (labels.astype(str) == "").any():
            raise AnalysisError(f"every pair needs a {match!r} label at its {at!r} row to draw a control partner; "
                                f"{int((labels.isna() | (labels.astype(str) == '')).sum())} have none.")
        group = labels.astype(str).to_numpy()
    sizes = pd.Series(group).value_counts()
    if (sizes < 2).any():
        raise AnalysisError(f"the shuffled-pair control continues each prefix with another pair's {good!r} word from "
                            f"the same {match!r} group; groups {sizes[sizes < 2].index.tolist()} have one pair. "
                            "Use more pairs, or match=None.")
    partner = np.arange(len(rows))
    rng = np.random.default_rng(seed)
    for g in sizes.index:  # a random cycle through the group: nobody is their own partner
        members = rng.permutation(np.flatnonzero(group == g))
        partner[members] = np.roll(members, 1)
    good_ids, bad_ids = (rows[c].to_numpy(dtype=np.int64) for c in (good, bad))
    n_bos = int(table.loc[table["seq"] == 0, "is_bos"].astype(bool).sum()) if "is_bos" in table else 0
    prefixes = [stimuli.ids[i, : stimuli.lengths[i]].tolist() for i in range(stimuli.n_seqs)]
    return _Items(prefixes, {"grammatical": good_ids, "violation": bad_ids, "control": good_ids[partner]}, group, n_bos)


def _unit_response(act: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    """``[n, n_units, ...]`` activations -> ``[n, len(idx)]``: a unit with several values (a
    head's ``hook_z``) responds with their L2 norm, as in :mod:`llmscope.analysis.responses`."""
    act = act[:, torch.as_tensor(idx)].float()
    return (act.flatten(2).norm(dim=-1) if act.ndim > 2 else act).cpu().numpy().astype(np.float64)


class Surprise(Result):
    """What :func:`surprise` returns: the unit table in ``.df`` (``rank_by="t"``: the units most
    larger for violations first), the per-site lens surprisal on ``.data``."""

    kind = "surprise"
    rank_by = "t"

    def plot(self) -> "go.Figure":
        """The lens surprisal effect per site and offset, with its 95% interval, beside its control."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for offset in self.data["offset"].to_numpy():
            g = self.data.sel(offset=offset)
            word = html.escape(str(g["word"].item()))
            for tag, dash in (("", None), ("_control", "dash")):
                effect, low, high = (g[f"{m}{tag}"].to_numpy() for m in ("effect", "ci_low", "ci_high"))
                fig.add_trace(go.Scatter(
                    x=g["site"].to_numpy(), y=effect, mode="lines+markers", line=dict(dash=dash),
                    name=f"{int(offset):+d} {word}: {'shuffled pair' if tag else 'violation'}",
                    error_y=dict(type="data", symmetric=False, array=high - effect, arrayminus=effect - low)))
        fig.add_hline(y=0, line_color="grey")
        return fig.update_layout(
            title=f"surprise on {html.escape(self.meta['stimuli'])}: lens surprisal minus the grammatical one",
            xaxis_title="site", yaxis_title="Δ surprisal, nats (95% CI)", xaxis_type="category")


@renamed(at="where")
def surprise(model: "TransformerBridge", stimuli: Stimuli, *, good: str = "good_id", bad: str = "bad_id",
             where: str = "is_target", match: str | None = "number", tail: "str | Sequence[int]" = "",
             sites: "str | Sequence[str] | None" = None, units: UnitsLike | None = None, unit_offset: int = 0,
             batch_size: int = 32, seed: int = 0, progress: bool = True) -> Surprise:
    """The response to a grammatical violation, per residual site and per unit (runs the model).

    Each sequence of ``stimuli`` is a prefix ending at its ``where`` row (``agreement(model, n)``:
    a sentence up to its verb); it is continued three ways, each followed by the same ``tail``
    (text or token ids, e.g. ``". the"``): the ``good`` token (grammatical), the ``bad`` one
    (the violation: the verb in the wrong number), and the control, the ``good`` token of
    another pair of the same ``match`` group (seeded), which agrees with this prefix too: a
    word swap without a violation. The critical token is offset 0; the tail's tokens follow.

    Per residual site and offset, the response is the lens surprisal (:func:`lens_logits`) of
    the token there, predicted from the residual before it; per unit, its activation at offset
    ``unit_offset`` (a head: the L2 norm of its ``hook_z``). "Larger for violations" means a
    positive mean of violation minus grammatical over pairs, the groups of ``match`` weighted
    equally (so a unit that only tells singular from plural verb forms averages out), with a
    t-test across pairs; the control is the same contrast of control minus grammatical.

    Returns:
        Surprise. ``.df``: indexed by ``(site, unit)``, most violation-responsive first (by
        |t|), columns ``effect`` (mean activation difference), ``d`` (effect / within-group sd of
        the differences), ``t``, ``p``, ``q`` (BH-FDR across all units) and ``effect_control``,
        ``d_control``, ``t_control``, ``p_control``, ``q_control``. ``.data``: dims ``site`` and
        ``offset`` (coordinates ``layer``, ``word``: the tail token's text, ``"<critical>"`` at
        0): mean surprisal (nats) ``grammatical``, ``violation``, ``control``, then ``effect``
        (violation - grammatical), ``ci_low``, ``ci_high``, ``p``, the same four for the control
        as ``effect_control``..., and ``n`` (pairs). ``meta``: ``model``, ``stimuli``, ``good``,
        ``bad``, ``where``, ``match``, ``groups`` (pairs per group), ``tail``, ``unit_offset``,
        ``seed``, ``control``, ``n_responsive`` and ``n_responsive_control`` (units with q <
        0.05). ``.top(n)`` ranks by ``t``; ``.plot()`` draws the effect per site and offset
        beside its control.

    Raises:
        ColumnError / AnalysisError: missing columns, a sequence that does not end at its
            ``where`` row, a ``match`` group of one pair; SiteError: a site that is not the
            residual stream, or a bad unit. All before the first forward pass.

    Example:
        >>> import llmscope
        >>> from llmscope import surprise
        >>> from llmscope.stimuli import agreement
        >>> model = llmscope.load("grammar-2l")
        >>> r = surprise(model, agreement(model, n=16, seed=0), tail=".", units="mlp.1", progress=False)
        >>> r.data["word"].values.tolist(), r.top(2).index.names
        (['<critical>', '.'], FrozenList(['site', 'unit']))
    """
    from llmscope.progress import progress_bar

    stimuli = as_stimuli(model, stimuli)
    seed, batch_size = count(seed, "seed", minimum=0), count(batch_size, "batch_size")
    progress = flag(progress, "progress")
    items = _items(stimuli, good, bad, where, match, seed, model.cfg.d_vocab)
    tail_ids = _tail_ids(model, tail)
    offset = count(unit_offset, "unit_offset", minimum=0)
    if offset > len(tail_ids):
        raise AnalysisError.Range(f"unit_offset must be in 0..{len(tail_ids)} (the critical token and the tail's "
                            f"{len(tail_ids)} tokens); got {unit_offset}.")
    resolved = lens_sites(model, sites)
    unit_sites = resolve_units(model, [(f"mlp.{L}", None) for L in range(model.cfg.n_layers)] if units is None else units)
    hooks = {s.hook for s in resolved} | {s.hook for s, _ in unit_sites}
    n, width = len(items.prefixes), len(tail_ids) + 1
    conditions = {c: Stimuli.from_ids(model, [p + [int(w)] + tail_ids for p, w in zip(items.prefixes, words)],
                                      name=f"{stimuli.name} ({c})", n_bos=items.n_bos)
                  for c, words in items.words.items()}
    crit = torch.tensor([len(p) for p in items.prefixes])
    surprisal = {c: {s.name: np.empty((n, width)) for s in resolved} for c in conditions}
    response = {c: {s.name: [] for s, _ in unit_sites} for c in conditions}
    with progress_bar(total=3 * n, desc="surprise", unit="seq", show=progress, leave=False) as bar:
        for cond, stim in conditions.items():
            for lo, ids in stim.batches(batch_size):
                with torch.no_grad():
                    logits, cache = model.run_with_cache(ids.to(model.cfg.device), names_filter=lambda h: h in hooks)
                pos = crit[lo:lo + len(ids), None] + torch.arange(width)[None]   # [b, width]: offsets 0..T
                b = torch.arange(len(ids))[:, None].expand_as(pos)
                for s in resolved:
                    scores = _score(model, cache[s.hook][b, pos - 1].flatten(0, 1).cpu(),
                                    logits[b, pos - 1].flatten(0, 1).cpu(), ids[b, pos].flatten())
                    surprisal[cond][s.name][lo:lo + len(ids)] = scores["loss"].reshape(len(ids), width)
                for s, idx in unit_sites:
                    response[cond][s.name].append(_unit_response(cache[s.hook][b[:, 0], pos[:, offset]], idx))
                bar.update(len(ids))
    per_site = _surprise_table(model, resolved, surprisal, items.group, tail_ids)
    table = _unit_table(unit_sites, {c: {k: np.concatenate(v) for k, v in r.items()} for c, r in response.items()},
                        items.group)
    meta = dict(model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(), stimuli=stimuli.name, good=good, bad=bad, where=where, match=match,
                groups=pd.Series(items.group).value_counts().sort_index().to_dict(),
                tail=model.tokenizer.decode(tail_ids) if tail_ids else "", unit_offset=offset, seed=seed,
                control=f"each prefix continued with another pair's {good!r} token of the same {match!r} group",
                n_responsive=int((table["q"] < 0.05).sum()), n_responsive_control=int((table["q_control"] < 0.05).sum()))
    return Surprise(table, meta, per_site)


def _surprise_table(model: "TransformerBridge", resolved: list[Site], surprisal: dict, group: np.ndarray,
                    tail_ids: list[int]) -> "xr.Dataset":
    import xarray as xr

    from llmscope.stimuli.core import token_texts

    names = [s.name for s in resolved]
    data: dict[str, tuple] = {}
    means = {k: np.stack([_contrast(surprisal[k][n], group)["effect"] for n in names]) for k in surprisal}
    data.update({k: (("site", "offset"), v) for k, v in means.items()})
    for tag, cond in (("", "violation"), ("_control", "control")):
        stats = [_contrast(surprisal[cond][n] - surprisal["grammatical"][n], group) for n in names]
        data.update({f"{m}{tag}": (("site", "offset"), np.stack([st[m] for st in stats]))
                     for m in ("effect", "ci_low", "ci_high", "p")})
    width = len(tail_ids) + 1
    coords = {"site": names, "offset": np.arange(width), "layer": ("site", [s.layer for s in resolved]),
              "word": ("offset", ["<critical>", *token_texts(model, tail_ids)])}
    return xr.Dataset(data, coords=coords, attrs={"n": len(group)})


def _unit_table(unit_sites: list[tuple[Site, np.ndarray]], response: dict, group: np.ndarray) -> pd.DataFrame:
    index = pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in unit_sites for i in idx], names=["site", "unit"])
    stack = {c: np.concatenate([r[s.name] for s, _ in unit_sites], axis=1) for c, r in response.items()}
    columns = {}
    for tag, cond in (("", "violation"), ("_control", "control")):
        stats = _contrast(stack[cond] - stack["grammatical"], group)
        columns.update({f"{m}{tag}": stats[m] for m in ("effect", "d", "t", "p")})
        columns[f"q{tag}"] = fdr(stats["p"])
    table = pd.DataFrame(columns, index=index)
    order = np.argsort(-np.nan_to_num(np.abs(table["t"].to_numpy()), nan=-1.0), kind="stable")
    return table.iloc[order]


__all__ = ["lens_logits", "lens_sites", "logit_lens", "surprise", "Surprise", "LensResult"]
