"""Attribution screening: estimate every unit's lesion (or patching) effect from gradients, then
confirm the top of the ranking with exact experiments. It runs the model: an experiment.

* :func:`screen` estimates, for every neuron of ``mlp.L`` sites and every head of ``attn.L``
  sites (a head is its ``hook_z`` slice), the harm its zero or mean lesion does to each
  behaviour of a :class:`~llmscope.analysis.atlas.Battery`, from one forward pass and a few
  backward passes: a :class:`ScreenResult`, an approximation labelled as one.
* :func:`confirm` lesions the top ``k`` units of every behaviour exactly (the stacked lesion
  atlas), plus a uniform random sample of the others, and reports how good the screen was.
* :func:`patching_screen` and :func:`confirm_patching` do the same for activation patching:
  the whole site x position (x head) map estimated, the top ``k`` cells patched exactly.

**AtP** (``method="atp"``; Nanda 2022, Kramár et al. 2024): the first-order estimate of a
unit's effect, ``(ablated - clean activation) . d behaviour / d activation``, summed over the
unit's positions and the battery's sequences. One forward pass per stimuli set is shared by
its behaviours; each behaviour costs one backward pass. The gradient of a loss behaviour is that
of its mean loss; an accuracy is a step function, so its estimate is that of the mean logit
difference ``logit[good] - logit[bad]`` at its rows (harm: a fall), in logits, not in accuracy.
``score`` ranks units: ``|estimate|``, since a first-order estimate can get a large effect's
sign wrong.

**AtP\\*** (``method="atp*"``; Kramár, Lieberum, Shah & Nanda 2024, arXiv 2403.00745) adds the
paper's two fixes:

* *QK fix.* Attention softmaxes are often saturated, where the gradient says nothing about a
  large move. The paper recomputes the softmax exactly when a query or key node is patched
  and keeps first order only after the attention pattern. Our units are never queries or keys
  (a head's ``hook_z`` and a neuron lie *after* a softmax), so we apply the fix where their
  lesion does change queries and keys: the unit's direct write into the residual stream, as
  read by every later attention layer. For each such layer the residual entering it plus the
  unit's write goes through that layer's own norm, queries, keys and softmax exactly (a
  partial pass of the model, stacked over units); the change of its pattern times the
  gradient at the pattern replaces plain AtP's linear term for that path (the gradient at the
  scores pulled back to the residual). Paths through intermediate blocks stay first order.
* *GradDrop.* A unit's direct and indirect effects can cancel to first order while its real
  effect is large. For each block ``l`` the estimate ``I_l`` is taken again with the gradient
  through block ``l``'s residual contributions (attention and MLP outputs) set to zero (the QK
  fix included); the score is the paper's Eq. 11, ``sum_l |I_l| / (L - 1)``, the magnitude
  taken per sequence (the paper's "prompt") and summed over the battery, so a unit of block
  ``l`` has one zero term, and a two-layer model keeps only the path of a first-block unit
  around block 1. ``estimate`` stays the signed QK-fixed AtP estimate. Dropping block ``l``
  changes nothing above it and leaves the skip path through it, so ``I_l`` costs one backward
  pass from block ``l`` down, restarted from the intact pass's gradient at the residual leaving
  it: about ``L / 2`` backward passes per behaviour besides AtP's one. The QK fix adds one
  partial attention pass per unit and later layer, shared by all behaviours, which is what
  makes AtP* expensive on many neurons: pick sites for it.

Gradients are taken through TransformerLens hooks on the bridge (forward hooks hold the
activations, ``torch.autograd.grad`` differentiates with respect to them); weights never
require grad during a screen and every parameter's flag is restored, and every hook is removed,
even on error. A lesion screen's passes stop at ``ln_final`` and unembed only the rows a
behaviour reads.

**Confirmation** (:func:`confirm`) runs :func:`~llmscope.analysis.atlas.lesion_atlas`, exactly
as a user would, on the union of every behaviour's top ``k`` and on ``n_sample`` units drawn
uniformly from the rest; it reports the Spearman correlation of estimate and exact harm on the
lesioned units, and the paper's subsampling diagnostic in its simplest form: the number of
sampled units that break a behaviour gives a one-sided 95% Clopper-Pearson bound on how many
breakers the unconfirmed units can hold (:func:`false_negative_bound`). The paper stratifies
the sample by estimate; we draw one uniform stratum.

Example:
    >>> import llmscope
    >>> from llmscope import battery
    >>> from llmscope.analysis.attribution import screen
    >>> model = llmscope.load("grammar-2l")
    >>> bat = battery(model, n_docs=4, n_pairs=16, seed=0)
    >>> s = screen(model, bat, "attn.1", method="atp*", progress=False)
    >>> s.top(1, by="copying").index.tolist(), s.meta["approximate"]
    ([('attn.1', 0)], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from llmscope import identity
from llmscope.analysis.atlas import lesion_atlas
from llmscope.engine.lesions import PAD_SLACK, Battery, buckets, check_battery
from llmscope.analysis.key_neurons import constant_weights
from llmscope.analysis.patching import _corrupt_run, patching
from llmscope.behaviour import Metric, cross_entropy, metric_name, next_token_loss
from llmscope.checks import choice, count, flag, seed as check_seed
from llmscope.errors import AnalysisError
from llmscope.engine.passes import from_block, fused_activations, readout, run_from
from llmscope.progress import progress_bar
from llmscope.result import Result
from llmscope.vocabulary import renamed
from llmscope.sites import Site, UnitsLike, resolve_units, sites as resolve_sites
from llmscope.stimuli.core import Stimuli, as_stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import xarray as xr
    from transformer_lens.model_bridge import TransformerBridge

METHODS = ("atp", "atp*")
MODES = ("zero", "mean")
PASS_TOKENS = 1024  # tokens per forward+backward pass: SmolLM2's graph holds ~1.5 MB a token
QK_BYTES = 2 ** 28  # attention patterns held by one stacked QK-fix pass
QK_TOKENS = 65536  # tokens of one stacked QK-fix pass
CONFIDENCE = 0.95  # of the false-negative bound
FN_SAMPLE = 100  # unconfirmed units lesioned exactly for the false-negative bound, by default


# ---------------------------------------------------------------- the engine


class _Stop(Exception):
    """Raised by the hook that holds a partial pass's attention pattern: the pass ends there."""


@dataclass
class _Target:
    """A site being screened and its cells: ``units[c]`` (-1 = the whole site) at ``positions[c]``
    (-1 = every position). ``delta(act)`` is what an intervention adds to the site's activation
    ``[b, T, *shape]``; ``weights`` ``[n_flat, d_model]`` map a change of the site into the
    residual stream (None when it is not the input of an output projection: no QK fix)."""

    site: Site
    units: torch.Tensor
    positions: torch.Tensor
    delta: Callable[[torch.Tensor], torch.Tensor]
    weights: torch.Tensor | None

    @property
    def first(self) -> int:
        """The first block whose attention reads the site's direct write."""
        return self.site.layer if self.site.kind == "resid" else self.site.layer + 1

    def reduce(self, product: torch.Tensor) -> torch.Tensor:
        """``[b, T, *shape]`` -> ``[b, n_cells]``: the product summed over each cell (a cell at a
        position beyond the batch's longest sequence holds nothing)."""
        q = product.flatten(3).sum(-1) if product.ndim > 3 else product  # [b, T, n_units]
        if bool((self.positions < 0).all()):
            return q.sum(1)[:, self.units]
        width = q.shape[1]
        rows = q[:, self.positions.clamp(0, width - 1)]  # [b, cells, n_units]
        one = rows.gather(2, self.units.clamp(min=0)[None, :, None].expand(len(rows), -1, 1))[..., 0]
        return torch.where(self.units >= 0, one, rows.sum(2)) * (self.positions < width)

    def project(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient at the residual ``[b, T, d]`` as one at the site ``[b, T, *shape]``."""
        return (grad @ self.weights.T).view(*grad.shape[:2], *self.site.shape)

    def writes(self, delta: torch.Tensor, cells: slice) -> torch.Tensor:
        """``[k, b, T, d]``: the residual-stream change of each cell's intervention alone."""
        units, positions = self.units[cells], self.positions[cells]
        flat = delta.flatten(2)  # [b, T, n_flat]
        per_unit = flat.shape[-1] // self.site.n_units
        w = self.weights.view(self.site.n_units, per_unit, -1)
        if bool((units >= 0).all()):
            parts = flat.view(*flat.shape[:2], self.site.n_units, per_unit)[:, :, units]  # [b, T, k, per]
            out = torch.einsum("btke,ked->kbtd", parts, w[units])
        else:
            out = (flat @ self.weights)[None].expand(len(units), -1, -1, -1)
        if bool((positions >= 0).all()):
            keep = torch.zeros(len(units), 1, delta.shape[1] + 1, 1, dtype=out.dtype)
            keep[torch.arange(len(units)), 0, positions.clamp(max=delta.shape[1])] = 1.0
            out = out * keep[:, :, :-1]  # a position beyond the batch writes nothing
        return out


def _weights(model: "TransformerBridge", s: Site) -> torch.Tensor | None:
    """``[n_flat, d_model]``: what a unit change of the site adds to the residual stream, read off
    its output projection applied to the identity (the identity for a residual site)."""
    if s.kind == "resid":
        return torch.eye(model.cfg.d_model)
    block = model.blocks[s.layer]  # an mlp.L or attn.L site
    out = getattr(block.mlp, "out", None) if s.kind == "mlp" else getattr(block.attn, "o", None)
    if out is None or model.hook_dict.get(s.hook) is not getattr(out, "hook_in", None):
        return None
    n = int(np.prod(s.shape))
    with torch.no_grad():
        return (out(torch.eye(n)[None]) - out(torch.zeros(1, 1, n)))[0].float()


class _Patterns:
    """Attention patterns of block ``layer`` when the residual entering it is changed: a partial
    pass from that block (from the tokens, the change swapped in by a hook, where resuming does
    not reproduce the intact pattern: checked once per block), stopped at its pattern."""

    def __init__(self, model: "TransformerBridge", ids: torch.Tensor, resid: dict[int, torch.Tensor],
                 intact: dict[int, torch.Tensor]):
        self.model, self.ids, self.resid, self.intact = model, ids, resid, intact
        self.resume: dict[int, bool] = {}

    def _run(self, layer: int, x: torch.Tensor, resume: bool) -> torch.Tensor:
        held: list[torch.Tensor] = []

        def grab(pattern: torch.Tensor, hook: Any) -> None:
            held.append(pattern.detach())
            raise _Stop

        stop = [(f"blocks.{layer}.attn.hook_pattern", grab)]
        try:
            if resume:
                with self.model.hooks(fwd_hooks=stop), from_block(self.model, layer):
                    self.model(x, start_at_layer=layer)
            else:
                swap = [(f"blocks.{layer}.hook_resid_pre", lambda act, hook: x)]
                with self.model.hooks(fwd_hooks=swap + stop):
                    self.model(self.ids.repeat(len(x) // len(self.ids), 1))
        except _Stop:
            pass
        if not held:
            raise AnalysisError(f"block {layer} of {self.model.cfg.model_name!r} fired no attention pattern; "
                                "the QK fix of AtP* needs blocks.L.attn.hook_pattern (use method='atp').")
        return held[0]

    def delta(self, layer: int, writes: torch.Tensor) -> torch.Tensor:
        """``[k, b, H, T, T]``: pattern with each of ``k`` residual changes ``writes [k, b, T, d]``,
        less the intact pattern."""
        base = self.resid[layer]
        if layer not in self.resume:
            ok = layer > 0 and torch.allclose(self._run(layer, base, True), self.intact[layer], atol=1e-5)
            if not ok and not torch.allclose(self._run(layer, base, False), self.intact[layer], atol=1e-5):
                raise AnalysisError(f"block {layer}'s attention pattern cannot be recomputed from the residual "
                                    "entering it on this model; use method='atp'.")
            self.resume[layer] = ok
        k, b = writes.shape[:2]
        x = (base[None] + writes.to(base.dtype)).reshape(k * b, *base.shape[1:])
        pattern = self._run(layer, x, self.resume[layer])
        return pattern.reshape(k, b, *pattern.shape[1:]).float() - self.intact[layer].float()


@dataclass
class _Grads:
    """The gradients of one objective under one GradDrop variant: at each target's activation, at
    each QK-fix layer's pattern and scores (None where no path reaches them)."""

    sites: list[torch.Tensor | None]
    patterns: dict[int, torch.Tensor | None]
    scores: dict[int, torch.Tensor | None]


def _attribute(model: "TransformerBridge", ids: torch.Tensor, targets: list[_Target],
               objectives: Callable[[torch.Tensor], dict[str, torch.Tensor]], star: bool
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One batch of sequences: ``name -> (estimate [b, cells], graddrop [b, cells])`` for every
    objective (a scalar whose change is the harm), cells of all targets in order. The estimate
    is per sequence; ``graddrop`` is ``sum_l |I_l| / (L - 1)`` per sequence (zeros for AtP)."""
    n_layers = model.cfg.n_layers
    low = min(min(t.site.layer for t in targets), n_layers - 1)
    qk_layers = list(range(min(t.first for t in targets), n_layers)) if star else []
    acts: dict[str, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}
    scores: dict[int, torch.Tensor] = {}
    patterns: dict[int, torch.Tensor] = {}

    def keep(store: dict, key: Any) -> Callable:
        def hook_fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            store[key] = act
            return act
        return hook_fn

    def leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:  # the graph starts here: weights are constants
        resid[low] = act.detach().requires_grad_(True)
        return resid[low]

    hooks = [(f"blocks.{low}.hook_resid_pre", leaf)] + [(t.site.hook, keep(acts, t.site.hook)) for t in targets]
    if star:
        hooks += [(f"blocks.{L}.hook_resid_pre", keep(resid, L)) for L in range(low + 1, n_layers)]
        hooks += [(f"blocks.{n_layers - 1}.hook_resid_post", keep(resid, n_layers))]
        hooks += [hook for L in qk_layers for hook in ((f"blocks.{L}.attn.hook_attn_scores", keep(scores, L)),
                                                       (f"blocks.{L}.attn.hook_pattern", keep(patterns, L)))]
    read = readout(model)
    estimates: dict[tuple[str, int | None], torch.Tensor] = {}
    pattern_grads: dict[tuple[str, int | None], dict] = {}
    with constant_weights(model), torch.enable_grad(), fused_activations(model):
        out = run_from(model, ids, 0, hooks, read is not None)
        named = objectives(out)
        deltas = [t.delta(acts[t.site.hook].detach()) for t in targets]
        for name, objective in named.items():
            variants = _variants(objective, targets, acts, qk_layers, resid, scores, patterns, low, n_layers, star)
            pulled: dict[int, torch.Tensor] = {}  # score gradients pulled back to the residual, by tensor
            for drop, grads in variants.items():
                cells = [t.reduce(g * d) if g is not None else torch.zeros(len(ids), len(t.units))
                         for t, g, d in zip(targets, grads.sites, deltas)]
                estimate = torch.cat(cells, 1)
                if star:
                    estimate = estimate - _linear_qk(targets, deltas, resid, scores, grads.scores, drop, pulled)
                estimates[name, drop], pattern_grads[name, drop] = estimate.detach(), grads.patterns
    if star:
        _exact_qk(model, ids, targets, deltas, qk_layers, resid, patterns, pattern_grads, estimates)
    terms = list(range(n_layers)) if n_layers > 1 else [None]  # one block: nothing to drop but the unit's own
    out_arrays = {}
    for name in named:
        plain = estimates[name, None].double().numpy()
        gd = sum(estimates[name, d if d is None or d >= low else None].abs() for d in terms).double().numpy() \
            / max(n_layers - 1, 1) if star else np.zeros_like(plain)
        out_arrays[name] = (plain, gd)
    return out_arrays


def _variants(objective: torch.Tensor, targets: list[_Target], acts: dict, qk_layers: list[int], resid: dict,
              scores: dict, patterns: dict, low: int, n_layers: int, star: bool) -> dict[int | None, _Grads]:
    """The gradients of ``objective`` as they are (key None) and, for AtP*, with each block ``d``'s
    residual contribution dropped (GradDrop; key d). A dropped block changes nothing above it,
    zeroes its own units, and leaves the skip path below: the gradient at the residual entering
    it is the one leaving it, so each variant is one backward pass from block ``d`` down, started
    from the intact pass's gradient there (blocks below every target need none)."""
    sites = [acts[t.site.hook] for t in targets]
    restart = [resid[L] for L in range(low + 1, n_layers + 1)] if star else []
    inputs = sites + [patterns[L] for L in qk_layers] + [scores[L] for L in qk_layers] + restart
    grads = torch.autograd.grad(objective, inputs, retain_graph=True, allow_unused=True)
    n, q = len(sites), len(qk_layers)
    intact = _Grads(list(grads[:n]), dict(zip(qk_layers, grads[n:n + q])), dict(zip(qk_layers, grads[n + q:n + 2 * q])))
    leaving = dict(zip(range(low + 1, n_layers + 1), grads[n + 2 * q:]))  # gradient at the residual entering block L
    out: dict[int | None, _Grads] = {None: intact}
    for d in range(low, n_layers) if star else []:
        below = [i for i, t in enumerate(targets) if t.site.layer < d]
        below_qk = [L for L in qk_layers if L < d]
        part = torch.autograd.grad(resid[d], [sites[i] for i in below] + [patterns[L] for L in below_qk]
                                   + [scores[L] for L in below_qk], leaving[d + 1], retain_graph=True, allow_unused=True
                                   ) if (below or below_qk) and leaving[d + 1] is not None else [None] * (
                                       len(below) + 2 * len(below_qk))
        moved = dict(zip(below, part))
        site_grads = []
        for i, t in enumerate(targets):
            if t.site.layer > d:
                site_grads.append(intact.sites[i])
            elif t.site.layer < d:
                site_grads.append(moved[i])
            else:  # a unit of the dropped block: nothing; the residual entering it: the skip path
                site_grads.append(leaving[d + 1] if t.site.kind == "resid" else None)
        k = len(below_qk)
        changed_p, changed_s = dict(zip(below_qk, part[len(below):len(below) + k])), dict(zip(below_qk, part[len(below) + k:]))
        out[d] = _Grads(site_grads, {L: changed_p[L] if L < d else None if L == d else intact.patterns[L] for L in qk_layers},
                        {L: changed_s[L] if L < d else None if L == d else intact.scores[L] for L in qk_layers})
    return out


def _dropped(target: _Target, drop: int | None) -> bool:
    """Whether GradDrop's dropped block carries the target's whole write (a unit of that block)."""
    return drop is not None and target.site.kind != "resid" and target.site.layer == drop


def _linear_qk(targets: list[_Target], deltas: list[torch.Tensor], resid: dict, scores: dict,
               score_grads: dict[int, torch.Tensor | None], drop: int | None, pulled: dict) -> torch.Tensor:
    """``[b, cells]``: plain AtP's first-order term for the path from each cell's direct write
    through every later layer's norm, queries, keys and scores (the gradient at the scores
    pulled back to the residual entering the layer, summed over the layers a target reaches);
    zero for a target whose own block is the one ``drop`` ped. ``pulled`` caches pull-backs."""
    back = {}
    for L, g in score_grads.items():
        if g is not None:
            if id(g) not in pulled:
                pulled[id(g)] = torch.autograd.grad(scores[L], resid[L], g, retain_graph=True)[0]
            back[L] = pulled[id(g)]
    out = []
    for t, d in zip(targets, deltas):
        reach = [g for L, g in back.items() if L >= t.first]
        if not reach or t.weights is None or _dropped(t, drop):
            out.append(torch.zeros(len(d), len(t.units)))
            continue
        out.append(t.reduce(t.project(sum(reach).float()) * d))
    return torch.cat(out, 1)


def _exact_qk(model: "TransformerBridge", ids: torch.Tensor, targets: list[_Target], deltas: list[torch.Tensor],
              qk_layers: list[int], resid: dict, patterns: dict, pattern_grads: dict, estimates: dict) -> None:
    """Add to every estimate the QK fix's exact term: each cell's direct write put into the
    residual entering each later layer, that layer's pattern recomputed by the model, its change
    times the gradient at the pattern (one partial pass per chunk of cells, for all objectives
    and GradDrop variants; each distinct gradient contracted once)."""
    recompute = _Patterns(model, ids, {L: resid[L].detach() for L in qk_layers},
                          {L: patterns[L].detach() for L in qk_layers})
    offsets = np.cumsum([0] + [len(t.units) for t in targets])
    with torch.no_grad():
        for L in qk_layers:
            users: dict[int, list] = {}  # distinct gradient at this pattern -> the estimates that use it
            for key, grads in pattern_grads.items():
                if grads[L] is not None:
                    users.setdefault(id(grads[L]), [grads[L]]).append(key)
            if not users:
                continue
            stacked = torch.stack([keys[0].float() for keys in users.values()])  # [V, b, H, T, T]
            b, h, t_len = stacked.shape[1], stacked.shape[2], stacked.shape[3]
            chunk = max(1, min(QK_BYTES // (4 * b * h * t_len * t_len), QK_TOKENS // (b * t_len)))
            for target, delta, offset in zip(targets, deltas, offsets):
                if L < target.first or target.weights is None:
                    continue
                for lo in range(0, len(target.units), chunk):
                    cells = slice(lo, min(lo + chunk, len(target.units)))
                    change = recompute.delta(L, target.writes(delta, cells))  # [k, b, H, T, T]
                    term = torch.einsum("kbhqs,vbhqs->vbk", change, stacked)
                    for v, (_, *keys) in enumerate(users.values()):
                        for key in keys:
                            if not _dropped(target, key[1]):
                                estimates[key][:, offset + cells.start:offset + cells.stop] += term[v]


# ---------------------------------------------------------------- the lesion screen


def _objectives(behaviours: list, stimuli: Stimuli, seqs: np.ndarray, ids: torch.Tensor,
                read: Callable | None, intact: dict[str, float]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The batch's objective per behaviour: its harm direction times its value's share from these
    sequences (a loss's mean, an accuracy's mean logit difference); adds each behaviour's intact
    sum (loss, or pairs right) to ``intact``."""
    t = stimuli.tokens
    seq, pos = t["seq"].to_numpy(), t["pos"].to_numpy()
    plans = []
    for b in behaviours:
        here = b.rows & np.isin(seq, seqs)
        if not here.any():
            continue
        local = torch.as_tensor(np.searchsorted(seqs, seq[here]))
        at = torch.as_tensor(pos[here])
        extra = (ids[local, at],) if b.kind == "loss" else tuple(
            torch.tensor(t.loc[here, c].to_numpy(dtype=np.int64)) for c in ("good_id", "bad_id"))
        plans.append((b, local, at - 1 if b.kind == "loss" else at, extra, float(b.rows.sum())))

    def objectives(out: torch.Tensor) -> dict[str, torch.Tensor]:
        named = {}
        for b, local, at, extra, n in plans:
            logits = out[local, at] if read is None else read(out[local, at])
            if b.kind == "loss":
                value = cross_entropy(logits, extra[0])
                intact[b.name] += float(value.detach().sum())
            else:
                rows = torch.arange(len(local))
                value = logits[rows, extra[0]].float() - logits[rows, extra[1]].float()
                intact[b.name] += float((value > 0).sum())
            named[b.name] = b.sign * value.sum() / n
        return named

    return objectives


def _lesion_targets(model: "TransformerBridge", resolved: list[tuple[Site, np.ndarray]], mode: str,
                    reference: Any, star: bool, default_reference: Stimuli) -> list[_Target]:
    from llmscope.interventions import reference_pools

    for s, _ in resolved:
        if s.kind not in ("mlp", "attn"):
            raise AnalysisError(f"a screen lesions neurons of mlp.L and heads of attn.L sites; {s.name} is a "
                                f"{s.kind} site. Pass units such as 'mlp.0' or [('attn.1', [0, 2])].")
    means = {}
    if mode == "mean":
        pools = reference_pools(model, default_reference if reference is None else reference,
                                [(s, torch.arange(s.n_units)) for s, _ in resolved])
        means = {hook: pool.mean(0) for hook, pool in pools.items()}
    targets = []
    for s, idx in resolved:
        weights = _weights(model, s) if star else None
        if star and weights is None:
            raise AnalysisError(f"AtP*'s QK fix needs {s.name} to feed an output projection (its hook is not the "
                                "input of mlp.out / attn.o on this model); use method='atp'.")
        mean = means.get(s.hook)
        targets.append(_Target(s, torch.as_tensor(idx), torch.full((len(idx),), -1),
                               (lambda act: -act) if mean is None else (lambda act, m=mean: m.to(act.dtype) - act),
                               weights))
    return targets


def _per_behaviour(table: pd.DataFrame) -> "xr.Dataset":
    """A per-behaviour table as a Dataset on the ``behaviour`` dimension (what ``.data`` holds)."""
    import xarray as xr

    return xr.Dataset.from_dataframe(table.rename_axis("behaviour"))


class ScreenResult(Result):
    """What :func:`screen` returns: estimates, not measurements (``meta["approximate"]`` is True).

    ``.df``, one row per screened unit, indexed by ``(site, unit)``:

    ==============  ======================================================================
    estimate_<b>    the estimated harm to behaviour b of lesioning the unit (nats of loss;
                    logits of mean logit difference for an accuracy), signed as the atlas's
                    ``harm_<b>``: AtP, with the QK fix for AtP*
    score_<b>       what ranks the units for b: ``|estimate|`` for AtP, GradDrop for AtP*
    rank_<b>        1 = the highest score for b
    score           the unit's largest ``score_<b>`` as a share of that behaviour's largest
                    (1: first for some behaviour); what ``top()`` ranks by by default
    ==============  ======================================================================

    ``.data``: one row per behaviour (dimension ``behaviour``): ``kind``, ``stimuli``,
    ``n_rows``, ``n_seqs``, ``baseline`` (the intact value: mean loss, or fraction of pairs
    right), ``min_effect``, ``estimate_unit``; :attr:`behaviours` shows it as a table.
    ``reference``: the mean-lesion reference (None for zero lesions), for :func:`confirm`.

    ``.meta``: ``model``, ``method``, ``mode``, ``approximate``, ``behaviours``, ``n_units``,
    ``sites``, ``score`` (in words), ``backward_passes`` (per behaviour and batch; GradDrop's run
    from their block down), ``fingerprint``. ``.top(n, by=behaviour)`` gives a unit table for
    ``lesion``, the atlas and the widgets; ``.heads(behaviour)`` the per-head grid for an
    AttentionMap.
    """

    kind: ClassVar[str] = "screen"
    rank_by: ClassVar[str | None] = "score"
    reference: Any = None

    @property
    def behaviours(self) -> pd.DataFrame:
        """One row per behaviour (the battery's, with its intact value)."""
        return self.data.to_dataframe()

    def _behaviour(self, behaviour: str | None) -> str:
        names = list(self.data["behaviour"].values)
        if behaviour is None and len(names) == 1:
            return names[0]
        if not isinstance(behaviour, str) or behaviour not in names:
            raise AnalysisError.Unknown(f"the screen has no behaviour {behaviour!r}; name one of {names}.")
        return behaviour

    def top(self, n: int = 10, by: str | None = None, where: str | None = None,
            ascending: bool = False) -> pd.DataFrame:
        """The ``n`` highest-scoring units, indexed by ``(site, unit)``: ready for ``lesion()``,
        ``lesion_atlas(units=...)`` or a widget. ``by`` is a behaviour's name (its ``score_<b>``)
        or a column (default ``score``: first for any behaviour).

        Example:
            >>> import llmscope
            >>> from llmscope import battery, intervene, lesion
            >>> from llmscope.analysis.attribution import screen
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> s = screen(model, battery(model, n_docs=2, n_pairs=8), "attn.0", progress=False)
            >>> with intervene(model, lesion(s.top(2, by="copying"))):
            ...     logits = model(stim.ids)
        """
        names = list(self.data["behaviour"].values)
        return super().top(n, f"score_{by}" if by in names else by, where, ascending)

    def heads(self, behaviour: str | None = None, measure: str = "score") -> pd.DataFrame:
        """``[attn.L x head]``: one number per screened head for ``behaviour`` (``measure`` is
        ``"score"`` or ``"estimate"``), NaN where a head was not screened; ``.to_numpy()`` is the
        ``[layers, heads]`` grid an AttentionMap colours its thumbnails by."""
        b = self._behaviour(behaviour)
        choice(measure, "measure", ("score", "estimate"))
        layers, n_heads = self.meta["n_layers"], self.meta["n_heads"]
        grid = pd.DataFrame(np.nan, index=pd.Index([f"attn.{L}" for L in range(layers)], name="site"),
                            columns=pd.Index(range(n_heads), name="head"))
        heads = self.df[self.df.index.get_level_values(0).str.startswith("attn.")]
        for (s, u), value in heads[f"{measure}_{b}"].items():
            grid.loc[s, u] = value
        return grid

    def plot(self, n: int = 40) -> "go.Figure":
        """The ``n`` units scoring highest for any behaviour: score (a share of each behaviour's
        largest) per unit x behaviour, the estimate in the hover."""
        import plotly.graph_objects as go

        names = list(self.data["behaviour"].values)
        score = self.df[[f"score_{b}" for b in names]].to_numpy()
        scale = np.where(score.max(0) > 0, score.max(0), 1.0)
        order = np.argsort(-(score / scale).max(1), kind="stable")[:count(n, "n")]
        rows = self.df.iloc[order]
        estimate = rows[[f"estimate_{b}" for b in names]].to_numpy()
        fig = go.Figure(go.Heatmap(
            z=score[order] / scale, x=names, y=[f"{s}:{u}" for s, u in rows.index], customdata=estimate,
            zmin=0, zmax=1, colorscale="Viridis", colorbar=dict(title="score /<br>largest"),
            hovertemplate="%{y} | %{x}<br>estimate %{customdata:.3g}<br>score %{z:.2f} of the largest<extra></extra>"))
        fig.update_yaxes(type="category", autorange="reversed")
        return fig.update_layout(
            title=f"{self.meta['method'].upper()} estimate ({self.meta['mode']} lesions): {len(rows)} highest "
                  f"scores of {len(self.df)} units", xaxis_type="category", height=240 + 14 * len(rows))


def screen(model: "TransformerBridge", battery: Battery, units: UnitsLike = None, *, method: str = "atp",
           mode: str = "zero", reference: Any = None, behaviours: Sequence[str] | None = None,
           pass_tokens: int | None = None, progress: bool = True) -> ScreenResult:
    """Estimate every unit's lesion harm to every behaviour of ``battery`` (runs the model:
    forward and backward passes; see the module docstring for AtP and AtP*).

    Args:
        model: the model (left unchanged: hooks removed and weights' ``requires_grad`` restored,
            even on error).
        battery: what to estimate (:func:`~llmscope.analysis.atlas.battery`); ``behaviours``
            keeps only the named ones.
        units: neurons of ``mlp.L`` and heads of ``attn.L`` in any unit form of
            :mod:`llmscope.sites`; default every neuron and head of the model.
        method: ``"atp"`` or ``"atp*"``.
        mode: ``"zero"`` or ``"mean"`` (each unit's mean over ``reference``, as the atlas takes
            it; default reference: the stimuli of the battery's first behaviour).
        pass_tokens: tokens per forward+backward pass (default :data:`PASS_TOKENS`).

    Returns:
        :class:`ScreenResult` (its docstring lists the columns).

    Example:
        >>> import llmscope
        >>> from llmscope import battery
        >>> from llmscope.analysis.attribution import screen
        >>> model = llmscope.load("grammar-2l")
        >>> s = screen(model, battery(model, n_docs=4, n_pairs=8), ["mlp.1", "attn.1"], progress=False)
        >>> s.df.columns[:3].tolist()
        ['estimate_loss_ADJ', 'estimate_loss_ADP', 'estimate_loss_ADV']
    """
    bat = check_battery(model, battery)
    bat = bat if behaviours is None else bat.select(behaviours)
    method, mode = choice(method, "method", METHODS), choice(mode, "lesion mode", MODES)
    if mode == "zero" and reference is not None:
        raise AnalysisError("lesion mode 'zero' takes no reference; pass mode='mean' to use one.")
    progress = flag(progress, "progress")
    pass_tokens = PASS_TOKENS if pass_tokens is None else count(pass_tokens, "pass_tokens")
    n_layers = model.cfg.n_layers
    default = [(f"{kind}.{L}", None) for L in range(n_layers) for kind in ("mlp", "attn")]
    resolved = resolve_units(model, default if units is None else units)
    star = method == "atp*"
    targets = _lesion_targets(model, resolved, mode, reference, star, bat.behaviours[0].stimuli)
    sets: dict[int, list] = {}
    for b in bat:
        sets.setdefault(id(b.stimuli), []).append(b)
    plans = [(group, seqs) for group in sets.values()
             for seqs in buckets(group[0].stimuli.lengths, pass_tokens, PAD_SLACK)]
    n_cells = sum(len(t.units) for t in targets)
    estimate = {b.name: np.zeros(n_cells) for b in bat}
    score = {b.name: np.zeros(n_cells) for b in bat}
    intact = {b.name: 0.0 for b in bat}
    read = readout(model)
    with progress_bar(total=len(plans), desc=f"{method} screen", unit="pass", show=progress, leave=False) as bar:
        for group, seqs in plans:
            stim = group[0].stimuli
            ids = stim.ids[torch.as_tensor(seqs), : int(stim.lengths[seqs].max())]
            per = _attribute(model, ids, targets, _objectives(group, stim, seqs, ids, read, intact), star)
            for name, (plain, gd) in per.items():
                estimate[name] += plain.sum(0)
                score[name] += gd.sum(0)
            bar.update()
    index = pd.MultiIndex.from_tuples([(t.site.name, int(u)) for t in targets for u in t.units],
                                      names=["site", "unit"])
    columns = {}
    for q in ("estimate", "score", "rank"):
        for b in bat:
            if q == "estimate":
                columns[f"estimate_{b.name}"] = estimate[b.name] + 0.0
            elif q == "score":
                columns[f"score_{b.name}"] = score[b.name] if star else np.abs(estimate[b.name])
            else:
                columns[f"rank_{b.name}"] = pd.Series(columns[f"score_{b.name}"]).rank(
                    ascending=False, method="min").astype(int).to_numpy()
    scores = np.stack([columns[f"score_{b.name}"] for b in bat], 1)
    columns["score"] = (scores / np.where(scores.max(0) > 0, scores.max(0), 1.0)).max(1)
    table = bat.table().drop(columns="description")
    table.insert(3, "baseline", [intact[b.name] / b.rows.sum() for b in bat])
    table["estimate_unit"] = ["nats" if b.kind == "loss" else "logit difference" for b in bat]
    meta = dict(model=str(model.cfg.model_name), method=method, mode=mode, approximate=True, behaviours=bat.names,
                n_units=n_cells, sites=[t.site.name for t in targets], n_layers=n_layers, n_heads=model.cfg.n_heads,
                score="|estimate|" if not star else "GradDrop: mean over sequences of sum_l |I_l| / (L - 1)",
                backward_passes=1 + (n_layers - 1 - min(t.site.layer for t in targets) if star else 0),
                pass_tokens=pass_tokens, fingerprint=identity.fingerprint(model).to_dict())
    out = ScreenResult(pd.DataFrame(columns, index=index), meta, _per_behaviour(table))
    out.reference = reference if mode == "mean" else None
    return out


# ---------------------------------------------------------------- confirmation


def false_negative_bound(n_break: int, n_sample: int, n_pool: int, confidence: float = CONFIDENCE) -> float:
    """An upper bound, at ``confidence``, on how many of ``n_pool`` unconfirmed units break a
    behaviour when ``n_break`` of a uniform random sample of ``n_sample`` of them do: the
    one-sided Clopper-Pearson bound on the fraction, times ``n_pool``; NaN without a sample.

    Example:
        >>> from llmscope.analysis.attribution import false_negative_bound
        >>> round(false_negative_bound(0, 100, 1000), 1)
        29.5
    """
    from scipy.stats import beta

    if n_sample == 0:
        return float("nan")
    fraction = 1.0 if n_break >= n_sample else float(beta.ppf(confidence, n_break + 1, n_sample - n_break))
    return fraction * n_pool


class ConfirmResult(ScreenResult):
    """What :func:`confirm` (and ``lesion_atlas(screen=..., confirm=k)``) returns: the screen
    with exact lesions beside it.

    ``.df``, one row per screened unit indexed by ``(site, unit)``: the screen's
    ``estimate_<b>``, ``score_<b>``, ``rank_<b>``, ``score``; ``exact`` (lesioned exactly),
    ``why`` (``"top"``: in some behaviour's top k; ``"sample"``: in the random sample; ``""``),
    and for the exact units the atlas's ``harm_<b>`` and ``breaks_<b>`` (NaN / NA elsewhere).

    ``.data`` (dimension ``behaviour``; :attr:`behaviours` as a table): ``k``, ``breakers_top``
    (of the top k, how many break it exactly), ``spearman`` (estimate against exact harm over the
    lesioned units) and ``n_exact``, ``sample_breakers`` (of the sample), ``fn_bound`` (at most
    this many unconfirmed units break it, at 95%: :func:`false_negative_bound`),
    ``sample_max_harm``, ``min_effect``. ``atlas``: the
    :class:`~llmscope.analysis.atlas.AtlasResult` of the exact lesions (its controls are the
    random groups).
    """

    kind: ClassVar[str] = "confirm"
    atlas: Any = None

    def plot(self) -> "go.Figure":
        """Estimate (x) against exact harm (y) of every lesioned unit, one panel per behaviour:
        the top units filled, the random sample open, the breaking threshold dotted."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        quality = self.behaviours
        names = list(quality.index)
        cols = min(3, len(names))
        rows = -(-len(names) // cols)
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=[
            f"{b} (rho {quality.loc[b, 'spearman']:.2f})" for b in names])
        exact = self.df[self.df["exact"]]
        for i, b in enumerate(names):
            r, c = divmod(i, cols)
            for why, symbol in (("top", "circle"), ("sample", "circle-open")):
                part = exact[exact["why"] == why]
                fig.add_trace(go.Scatter(
                    x=part[f"estimate_{b}"].tolist(), y=part[f"harm_{b}"].tolist(), mode="markers",
                    name=f"{why} (exact)", marker=dict(symbol=symbol, color="crimson" if why == "top" else "grey"),
                    showlegend=i == 0, text=[f"{s}:{u}" for s, u in part.index],
                    hovertemplate="%{text}<br>estimate %{x:.3g}<br>exact harm %{y:.3g}<extra></extra>"),
                    row=r + 1, col=c + 1)
            fig.add_hline(y=quality.loc[b, "min_effect"], line_dash="dot", line_color="grey", row=r + 1, col=c + 1)
        return fig.update_layout(title=f"{self.meta['method'].upper()} estimate (x) against exact lesion harm (y): "
                                       f"top {self.meta['k']} per behaviour and {self.meta['n_sample']} random units",
                                 height=260 * rows + 120)


@renamed(screened="result", n_random="n_controls")
def confirm(model: "TransformerBridge", battery: Battery, result: ScreenResult, k: int = 10, *,
            n_sample: int | None = None, n_controls: int = 20, min_effect: float | Mapping[str, float] | None = None,
            n_boot: int = 1000, seed: int = 0, pass_tokens: int | None = None, progress: bool = True) -> ConfirmResult:
    """Lesion exactly the top ``k`` units of every behaviour of ``screened`` and ``n_sample``
    units drawn uniformly from the others, in one stacked
    :func:`~llmscope.analysis.atlas.lesion_atlas` run (with its ``n_controls`` random groups), and
    report the screen's quality (runs the model).

    Args:
        model: the model the screen was made on (checked).
        battery: a battery holding the screen's behaviours (the same stimuli).
        result: the :class:`ScreenResult` of :func:`screen`; its mode and reference are reused.
        k: units confirmed per behaviour (their union is lesioned once).
        n_sample: the uniform random sample of unconfirmed units behind the false-negative
            bound (0: no bound; None: :data:`FN_SAMPLE`, or every unconfirmed unit when fewer).
        n_controls, min_effect, n_boot, seed, pass_tokens: as for the atlas.

    Returns:
        :class:`ConfirmResult`.

    Example:
        >>> import llmscope
        >>> from llmscope import battery
        >>> from llmscope.analysis.attribution import confirm, screen
        >>> model = llmscope.load("grammar-2l")
        >>> bat = battery(model, n_docs=4, n_pairs=8, behaviours=["copying"])
        >>> c = confirm(model, bat, screen(model, bat, "attn.1", progress=False), k=1, n_sample=2, n_controls=2,
        ...             progress=False)
        >>> c.df.loc[c.df["exact"], "why"].tolist(), c.meta["approximate"]
        (['top', 'sample', 'sample'], False)
    """
    screened = result
    if not isinstance(screened, ScreenResult) or isinstance(screened, ConfirmResult):
        raise AnalysisError.Type(f"confirm takes the ScreenResult of screen(...), got {type(screened).__name__}.")
    identity.check(identity.Fingerprint.from_dict(screened.meta.get("fingerprint")), model, "the screen", "weights",
                   AnalysisError, "Screen this model first: screen(model, battery, ...).")
    names = list(screened.behaviours.index)
    bat = check_battery(model, battery).select(names)
    k = count(k, "k", maximum=len(screened.df))
    seed = check_seed(seed)
    tops = {b: screened.top(k, by=b).index for b in names}
    union = pd.Index(list(dict.fromkeys(u for b in names for u in tops[b])))
    pool = screened.df.index.difference(union, sort=False)
    n_sample = min(FN_SAMPLE, len(pool)) if n_sample is None else count(n_sample, "n_sample", minimum=0)
    if n_sample > len(pool):
        raise AnalysisError.Range(f"n_sample={n_sample} exceeds the {len(pool)} unconfirmed units; use n_sample <= "
                                  f"{len(pool)}.")
    sample = pool[np.sort(np.random.default_rng(seed).choice(len(pool), n_sample, replace=False))]
    lesioned = union.append(sample)
    extra = {} if screened.meta["mode"] == "zero" else dict(mode="mean", reference=screened.reference)
    atlas = lesion_atlas(model, bat, pd.MultiIndex.from_tuples(list(lesioned), names=["site", "unit"]),
                         n_controls=n_controls, min_effect=min_effect, n_boot=n_boot, seed=seed,
                         pass_tokens=pass_tokens, progress=progress, **extra)
    df = screened.df.copy()
    df["exact"] = df.index.isin(lesioned)
    df["why"] = np.where(df.index.isin(union), "top", np.where(df.index.isin(sample), "sample", ""))
    for b in names:
        df[f"harm_{b}"] = atlas.df[f"harm_{b}"].reindex(df.index)
        df[f"breaks_{b}"] = atlas.df[f"breaks_{b}"].reindex(df.index).astype("boolean")
    quality = []
    for b in names:
        from scipy.stats import spearmanr

        done = df[df["exact"]]
        rho = spearmanr(done[f"estimate_{b}"], done[f"harm_{b}"]).statistic if len(done) > 2 else float("nan")
        drawn = df.loc[sample]
        hits = int(drawn[f"breaks_{b}"].sum())
        quality.append(dict(k=k, breakers_top=int(df.loc[tops[b], f"breaks_{b}"].sum()), spearman=float(rho),
                            n_exact=len(done), sample_breakers=hits,
                            fn_bound=false_negative_bound(hits, n_sample, len(pool)),
                            sample_max_harm=float(drawn[f"harm_{b}"].max()) if n_sample else float("nan"),
                            min_effect=float(atlas.behaviours.loc[b, "min_effect"])))
    meta = {**screened.meta, "approximate": False, "k": k, "n_sample": n_sample, "n_pool": len(pool),
            "n_controls": n_controls, "seed": seed, "n_lesioned": len(lesioned),
            "bound": f"one-sided {CONFIDENCE:.0%} Clopper-Pearson on a uniform sample of unconfirmed units"}
    out = ConfirmResult(df, meta, _per_behaviour(pd.DataFrame(quality, index=pd.Index(names, name="behaviour"))))
    out.reference, out.atlas = screened.reference, atlas
    return out


# ---------------------------------------------------------------- patching


def _differentiable(metric: Metric) -> Callable[[torch.Tensor, Stimuli], torch.Tensor]:
    """A metric as ``fn(logits, stimuli) -> [n_rows]`` torch values (NaN where undefined) that
    gradients flow through: the names and functions of :mod:`llmscope.behaviour` (``loss``,
    ``confidence``, ``entropy``, ``logit_diff``, also as ``functools.partial`` with their keyword
    arguments; the target alignment only), or a callable that computes a torch tensor from the
    logits."""
    from functools import partial

    from llmscope import behaviour

    def per_row(values: torch.Tensor, stimuli: Stimuli) -> torch.Tensor:
        real = torch.arange(values.shape[1]) < torch.as_tensor(stimuli.lengths)[:, None]
        return values[real]

    def of_prediction(fn: Callable) -> Callable:
        def metric_fn(logits: torch.Tensor, stimuli: Stimuli, align: str = "target") -> torch.Tensor:
            choice(align, "align (attribution differentiates the target alignment only)", ("target",))
            values = torch.full(logits.shape[:2], float("nan"))
            values[:, 1:] = fn(logits[:, :-1].float().log_softmax(-1))
            return per_row(values, stimuli)
        return metric_fn

    def loss(logits: torch.Tensor, stimuli: Stimuli, align: str = "target") -> torch.Tensor:
        choice(align, "align (attribution differentiates the target alignment only)", ("target",))
        return per_row(next_token_loss(logits, stimuli.ids[:, :logits.shape[1]]), stimuli)

    def logit_diff(logits: torch.Tensor, stimuli: Stimuli, good: str = "good_id", bad: str = "bad_id",
                   where: str = "is_target") -> torch.Tensor:
        behaviour.check_logit_diff(stimuli, good, bad, where, logits.shape[-1])
        t = stimuli.tokens
        rows = t[where].astype("boolean").fillna(False).to_numpy(dtype=bool)
        seq, pos, g, w = (torch.tensor(t.loc[rows, c].to_numpy(dtype=np.int64)) for c in ("seq", "pos", good, bad))
        out = torch.full((len(t),), float("nan"))
        out[torch.as_tensor(np.flatnonzero(rows))] = (logits[seq, pos, g] - logits[seq, pos, w]).float()
        return out

    torch_versions = {behaviour.loss: loss, behaviour.confidence: of_prediction(lambda logp: logp.max(-1).values.exp()),
                      behaviour.entropy: of_prediction(lambda logp: -(logp.exp() * logp).sum(-1)),
                      behaviour.logit_diff: logit_diff}
    names = {name: torch_versions[fn] for name, fn in behaviour.METRICS.items() if fn in torch_versions}
    func = metric.func if isinstance(metric, partial) and not metric.args else metric
    if isinstance(metric, str) and metric in names:
        return names[metric]
    if not isinstance(metric, str) and func in torch_versions:
        return partial(torch_versions[func], **metric.keywords) if func is not metric else torch_versions[func]
    if isinstance(metric, str) or func is behaviour.correct:
        raise AnalysisError.Unknown(f"attribution cannot differentiate the metric {metric_name(metric)!r}; choose one "
                                    f"of {list(names)} or a callable fn(logits, stimuli) that returns a torch tensor "
                                    "computed from the logits ('correct' is a step: it has no gradient).")
    if not callable(metric):
        raise AnalysisError.Type(f"a metric is a name ({list(names)}) or a callable fn(logits, stimuli); "
                                 f"got {type(metric).__name__}.")

    def checked(logits: torch.Tensor, stimuli: Stimuli) -> torch.Tensor:
        values = metric(logits, stimuli)
        if (not isinstance(values, torch.Tensor) or values.shape != (len(stimuli),)
                or (torch.is_grad_enabled() and not values.requires_grad)):
            raise AnalysisError.Type(
                f"the metric {metric_name(metric)!r} must return a torch tensor with one value per trial row "
                f"({len(stimuli)}), computed from the logits so gradients flow (numpy values have no gradient); "
                f"it returned {type(values).__name__}.")
        return values

    return checked


def _mean(values: torch.Tensor) -> tuple[torch.Tensor, int]:
    ok = ~torch.isnan(values)
    return values[ok].sum(), int(ok.sum())


class PatchingScreen(Result):
    """What :func:`patching_screen` (and ``patching(method="atp")``) returns: the patching map
    estimated (``meta["approximate"]`` is True).

    ``.df``: ``site``, ``layer``, ``head`` (-1 = the whole site), ``pos``, ``text`` as
    :func:`~llmscope.analysis.patching.patching` gives them, ``estimate`` (the estimated
    ``value``: the fraction of the clean-corrupt difference restored), ``score`` and ``rank``
    (1 = first to confirm). ``.meta``: ``metric``, ``clean``, ``corrupt``, ``sites``,
    ``per_head``, ``method``, ``approximate``.
    """

    kind: ClassVar[str] = "patching_screen"

    def plot(self) -> "go.Figure":
        """Site (x head) by position, coloured by the estimated share restored."""
        return _heatmap(self.df, "estimate", f"activation patching, {self.meta['method'].upper()} estimate: "
                                             f"{self.meta['metric']} restored (1 = clean)")


class PatchingConfirmation(PatchingScreen):
    """What :func:`confirm_patching` (and ``patching(method="atp", confirm=k)``) returns: the
    screen's ``.df`` plus ``value`` (exact, NaN where not patched) and ``exact``; ``.meta`` adds
    ``k``, ``spearman`` (estimate against exact value over the exact cells), ``n_exact``,
    ``approximate`` False."""

    kind: ClassVar[str] = "confirm_patching"

    def plot(self) -> "go.Figure":
        """The map with exact values where patched (outlined) and estimates elsewhere."""
        df = self.df
        shown = df.assign(shown=df["value"].where(df["exact"], df["estimate"]))
        return _heatmap(shown, "shown", f"activation patching: {self.meta['metric']} restored; "
                                        f"{int(df['exact'].sum())} exact cells outlined, the rest "
                                        f"{self.meta['method'].upper()} estimate", exact=df["exact"])


def _heatmap(table: pd.DataFrame, column: str, title: str, exact: pd.Series | None = None) -> "go.Figure":
    import plotly.graph_objects as go

    df = table.assign(row=[s if h < 0 else f"{s}.{h}" for s, h in zip(table["site"], table["head"])])
    order = list(dict.fromkeys(df["row"]))
    grid = df.pivot(index="row", columns="pos", values=column).reindex(index=order)
    texts = df.drop_duplicates("pos").set_index("pos")["text"]
    x = [f"{p}: {texts[p]}" for p in grid.columns]
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=x, y=order, colorscale="RdBu", zmid=0,
                               colorbar=dict(title="restored"),
                               hovertemplate="%{y} @ %{x}<br>%{z:.3f}<extra></extra>"))
    if exact is not None:  # exact cells outlined
        cols = {p: i for i, p in enumerate(grid.columns)}
        for (row, pos) in zip(df.loc[exact.to_numpy(), "row"], df.loc[exact.to_numpy(), "pos"]):
            i, j = order.index(row), cols[pos]
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line=dict(color="black", width=2))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig.update_layout(title=title, xaxis_title="position: clean token", yaxis_title="site")


def patching_screen(model: "TransformerBridge", clean: Stimuli, corrupt: Stimuli | None = None, metric: Metric = "loss",
                    sites: Sequence[str | Site] | None = None, positions: Sequence[int] | None = None,
                    per_head: bool = False, *, method: str = "atp", pass_tokens: int | None = None,
                    progress: bool = True) -> PatchingScreen:
    """Estimate the whole activation-patching map of :func:`~llmscope.analysis.patching.patching`
    (the same arguments and cells) from gradients of the corrupt run: AtP's estimate of a cell is
    ``(clean - corrupt activation) . d metric / d activation`` there; AtP* adds the QK fix and
    GradDrop as for :func:`screen` (runs the model). ``corrupt`` defaults to ``clean.corrupt``.

    Example:
        >>> import llmscope
        >>> from llmscope import logit_diff
        >>> from llmscope.analysis.attribution import patching_screen
        >>> from llmscope.stimuli import ioi
        >>> smol = llmscope.load("smollm2-135m")
        >>> from functools import partial
        >>> clean = ioi(smol, n=4, seed=0, corrupt=True)
        >>> s = patching_screen(smol, clean, metric=partial(logit_diff, good="io_id", bad="s_id"),
        ...                     sites=["resid.3", "resid.6"], positions=[-1], progress=False)
        >>> s.df.columns.tolist()
        ['site', 'layer', 'head', 'pos', 'text', 'estimate', 'score', 'rank']
    """
    clean = as_stimuli(model, clean, "clean")
    corrupt = as_stimuli(model, clean.corrupt if corrupt is None else corrupt, "corrupt")
    per_head, progress = flag(per_head, "per_head"), flag(progress, "progress")
    method = choice(method, "method", METHODS)
    pass_tokens = PASS_TOKENS if pass_tokens is None else count(pass_tokens, "pass_tokens")
    target = _corrupt_run(clean, corrupt)
    fn = _differentiable(metric)
    resolved = resolve_sites(model, sites or [f"resid.{L}" for L in range(model.cfg.n_layers + 1)])
    width = int(clean.lengths.max())
    if positions is None:
        positions = list(range(width))
    elif isinstance(positions, (str, bytes)) or not all(isinstance(p, (int, np.integer)) for p in positions):
        raise AnalysisError.Type(f"positions are integer token positions, got {positions!r}.")
    if len(positions) == 0 or any(not -width <= p < width for p in positions):
        raise AnalysisError.Range(f"positions {list(positions)} must lie in -{width}..{width - 1} (the longest clean sequence).")
    positions = [int(p) % width for p in positions]
    star = method == "atp*"
    targets, rows = [], []
    text = clean.tokens.drop_duplicates("pos").set_index("pos")["text"]
    for s in resolved:
        if s.kind not in ("resid", "mlp", "attn"):
            raise AnalysisError(f"a patching screen takes resid.L, mlp.L and attn.L sites; {s.name} is a raw hook.")
        heads = range(s.n_units) if per_head and s.kind == "attn" else [-1]
        cells = [(h, p) for h in heads for p in positions]
        weights = _weights(model, s) if star else None
        if star and weights is None:
            raise AnalysisError(f"AtP*'s QK fix needs {s.name} to be a resid.L site or feed an output projection; "
                                "use method='atp'.")
        targets.append(_Target(s, torch.as_tensor([h for h, _ in cells]), torch.as_tensor([p for _, p in cells]),
                               None, weights))
        rows += [dict(site=s.name, layer=s.layer, head=h, pos=p, text=text[p]) for h, p in cells]
    n_cells = len(rows)
    est, gd = np.zeros(n_cells), np.zeros(n_cells)
    totals = {"clean": [0.0, 0], "corrupt": [0.0, 0]}
    read = readout(model)
    batches = buckets(target.lengths, pass_tokens, PAD_SLACK)
    with progress_bar(total=len(batches), desc=f"{method} patching screen", unit="pass", show=progress,
                      leave=False) as bar:
        for seqs in batches:
            part, source = target.select_seqs(seqs), clean.select_seqs(seqs)
            ids = part.ids
            with torch.no_grad():
                logits, cache = model.run_with_cache(source.ids, names_filter=[s.hook for s in resolved])
                value, n = _mean(fn(logits, source))
                totals["clean"][0] += float(value)
                totals["clean"][1] += n
            for t in targets:
                t.delta = lambda act, src=cache[t.site.hook]: src.to(act.dtype) - act

            def objectives(out: torch.Tensor) -> dict[str, torch.Tensor]:
                value, n = _mean(fn(out if read is None else read(out), part))
                totals["corrupt"][0] += float(value.detach())
                totals["corrupt"][1] += n
                return {"metric": value}

            per = _attribute(model, ids, targets, objectives, star)["metric"]
            est += per[0].sum(0)
            gd += per[1].sum(0)
            bar.update()
    clean_value, corrupt_value = (totals[k][0] / max(totals[k][1], 1) for k in ("clean", "corrupt"))
    if totals["clean"][1] == 0 or totals["corrupt"][1] == 0:
        raise AnalysisError(f"no row has a value of {metric_name(metric)}; nothing to patch for.")
    if np.isclose(clean_value, corrupt_value):
        raise AnalysisError(f"clean and corrupt give the same {metric_name(metric)} ({clean_value:.4g}): there is "
                            "nothing for patching to restore; choose a metric that tells them apart.")
    span, n_rows = clean_value - corrupt_value, totals["corrupt"][1]
    df = pd.DataFrame(rows)
    df["estimate"] = est / n_rows / span
    df["score"] = gd / n_rows / abs(span) if star else np.abs(df["estimate"])
    df["rank"] = df["score"].rank(ascending=False, method="min").astype(int)
    meta = dict(metric=metric_name(metric), clean=clean_value, corrupt=corrupt_value, sites=[s.name for s in resolved],
                per_head=per_head, method=method, approximate=True, fingerprint=identity.fingerprint(model).to_dict())
    out = PatchingScreen(df, meta)
    out.clean, out.corrupt, out.metric = clean, corrupt, metric  # what confirm_patching re-runs exactly
    return out


@renamed(screened="result")
def confirm_patching(model: "TransformerBridge", result: PatchingScreen, k: int = 10,
                     progress: bool = True) -> PatchingConfirmation:
    """Patch exactly the top ``k`` cells of ``screened`` (with
    :func:`~llmscope.analysis.patching.patching`, one call per site, every head of a per-head
    site at those positions) and put the exact values beside the estimates (runs the model).

    The screen's clean and corrupt stimuli and metric are reused (kept on the screen).

    Returns:
        :class:`PatchingConfirmation`; ``.plot()`` outlines the exact cells.
    """
    screened = result
    if not isinstance(screened, PatchingScreen) or isinstance(screened, PatchingConfirmation):
        raise AnalysisError.Type(f"confirm_patching takes the PatchingScreen of patching_screen(...), got "
                                 f"{type(screened).__name__}.")
    identity.check(identity.Fingerprint.from_dict(screened.meta.get("fingerprint")), model, "the screen", "weights",
                   AnalysisError, "Screen this model first: patching_screen(model, ...).")
    k = count(k, "k", maximum=len(screened.df))
    top = screened.df.nsmallest(k, "rank", keep="first")
    exact = []
    for s, cells in top.groupby("site", sort=False):
        exact.append(patching(model, screened.clean, screened.corrupt, screened.metric, sites=[s],
                              positions=sorted(set(cells["pos"])),
                              per_head=screened.meta["per_head"], progress=progress).df)
    found = pd.concat(exact).set_index(["site", "head", "pos"])["value"]
    df = screened.df.copy()
    df["value"] = found.reindex(pd.MultiIndex.from_frame(df[["site", "head", "pos"]])).to_numpy()
    df["exact"] = df["value"].notna()
    from scipy.stats import spearmanr

    done = df[df["exact"]]
    rho = spearmanr(done["estimate"], done["value"]).statistic if len(done) > 2 else float("nan")
    meta = {**screened.meta, "approximate": False, "k": k, "spearman": float(rho), "n_exact": len(done)}
    out = PatchingConfirmation(df, meta)
    out.clean, out.corrupt, out.metric = screened.clean, screened.corrupt, screened.metric
    return out


__all__ = ["screen", "ScreenResult", "confirm", "ConfirmResult", "false_negative_bound", "patching_screen",
           "PatchingScreen", "confirm_patching", "PatchingConfirmation", "METHODS"]
