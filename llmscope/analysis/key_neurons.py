"""Key neurons (seed 002): the MLP neurons that matter most for predicting words of each class.

The method of "Spotting key neurons in grammar perception" (seed 002), as issue 11 reads it:

1. **Score** every MLP neuron at every *sample*, a prediction: the model, at context position
   ``t - 1``, predicting the actual token at ``t``. The score of neuron ``i`` of ``mlp.L`` is its
   attribution to ``log p(token_t | tokens_<t)``, the log-probability of the actual next token:

   * ``"ig"`` — Integrated Gradients (Captum's ``IntegratedGradients``): the layer's activation
     vector at position ``t - 1`` goes along a straight line from zero (the baseline) to its
     actual value while every other position keeps its actual activations, and the rest of the
     model downstream of the layer is re-run at every step. Completeness holds per sample: the
     scores of a layer's neurons sum to ``log p(actual) - log p(layer zero at t - 1)``.
   * ``"grad_x_act"`` — gradient x activation (one backward pass for all layers).
   * ``"activation"`` — the activation itself (no gradient; the cheap control).

2. **Keep**, per sample and per layer, the ``top_frac`` neurons with the largest (signed)
   score: the neurons that most raise the probability of the word that came
   (``ceil(top_frac * d_mlp)`` of each layer, so every layer contributes alike).
3. **Count**, for each class of ``label``, how often each neuron is kept; the ``k`` most
   recurrent neurons of a class are its key neurons, per layer (as issue 11 reports them) or
   over all layers (:meth:`KeyNeurons.units` with ``site=None``).

**Which token's label.** ``label_of="next"`` (the default, as in the paper) gives a sample
the label of the token being predicted (the word at ``t``); ``"current"`` that of the token the
neurons sit on (``t - 1``). Either way the row that stands for a sample in tables is the predicted
token's row ``(seq, t)``, as a loss belongs to the token being predicted. BOS rows stay out
(neither token of a sample may be a BOS) unless ``include_bos=True``.

**One sample, one run.** In a causal model the prediction at ``t - 1`` also reads the layer at
earlier positions (through attention downstream), and changing the layer at ``t - 1`` changes
later positions. To attribute each sample to its own position in one batched pass, the layers
downstream run *position-separated* (:func:`separated`): each position's query reads the keys
and values of the other positions from the actual (clean) run and only its own from the live
run, so position ``p`` of one pass computes exactly the prediction of a run in which only
position ``p`` changed. A check against one-position-at-a-time runs on a short probe guards
every model before use (an architecture where it fails is refused, naming the error).

**Captum.** IG is ``captum.attr.IntegratedGradients`` with the site's activation as its input,
injected at the site's HookPoint. ``LayerIntegratedGradients`` on the HookPoint runs too, but
its baseline lives in input space (the layer's activation on baseline *tokens*); a zero
activation baseline needs the activation itself as the input.

**Cost.** ``"grad_x_act"`` costs about one plain forward+backward pass over the stimuli,
whatever the number of layers, and ``"activation"`` less than one. ``"ig"`` costs about ``steps``
separated passes per layer (Captum packs the steps into passes of ``PASS_TOKENS`` tokens), each
shorter than a plain one: a pass for ``mlp.L`` starts at block L from the clean run's residual
entering it (the blocks below are the clean run's), and its gradient stops there. Every pass stops
at ``ln_final`` and unembeds only the samples' rows (SmolLM2's unembedding is about a quarter
of its forward pass, and padding and BOS rows are no samples). Both short cuts are checked once
per model against a plain pass on the probe and left out where they differ; the scores are the
same either way. How many steps make the scores add up depends on the layer: on the organism and
on SmolLM2 the first layer's path is far from linear (64 steps for 3% on the organism; 32 leave
23% on SmolLM2), later ones add up within 0.1% at 8 steps. ``meta["completeness_error"]``
measures it on every run.

**Control.** The same counts with the labels permuted across samples (one seeded permutation;
class sizes kept): ``specificity_shuffled`` sits beside ``specificity`` in ``.df``, and
``units(..., shuffled=True)`` gives the shuffled-label key neurons.

Example:
    >>> from llmscope.analysis.key_neurons import key_neurons
    >>> res = key_neurons(model, stim, method="grad_x_act", k=5, progress=False)
    >>> res.units("NOUN", site="mlp.1").columns[:3].tolist()
    ['class', 'rank', 'count']
    >>> bool(res.df["specificity"].mean() > 2 * res.df["specificity_shuffled"].mean())
    True
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmscope import identity
from llmscope.stimuli import trials
from llmscope.checks import count, flag, fraction
from llmscope.behaviour import cross_entropy, next_token_loss
from llmscope.errors import AnalysisError, SiteError
from llmscope.progress import progress_bar
from llmscope.passes import layer_list, readout, run_from
from llmscope.result import Result
from llmscope.sites import Site, sites as resolve_sites
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.core import as_stimuli

Block = tuple[int, np.ndarray, torch.Tensor, "torch.Tensor | None"]  # site index, sample rows, scores, change

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

METHODS = ("ig", "grad_x_act", "activation")
LABEL_OF = ("next", "current")
PASS_TOKENS = 2048  # tokens per IG pass (sequences x steps): bounds the downstream graph held at once
PROBE_LEN = 6  # tokens of the probe that checks position separation on a new model
PROBE_TOL = 1e-3  # separated vs one-position runs: error allowed, relative to the change itself
SHUFFLE_SEED = 0
COMPLETENESS = 0.05  # IG error above which a warning says to raise steps
MAX_CLASSES = 256  # count tables are [classes, d_mlp] per site


# ---------------------------------------------------------------- position separation


def _memo(model: "TransformerBridge") -> dict[str, Any]:
    """What the scoring learns about a model once (hook names, the probe's verdicts), kept on it."""
    return model.__dict__.setdefault("_llmscope_separation", {})


def _attn_hooks(model: "TransformerBridge", layer: int) -> dict[str, str]:
    """The hooks of one attention layer that separation reads and writes. Keys and queries are
    taken where they enter the score product (after RoPE when the model has it)."""
    memo = _memo(model)
    if "hook_names" not in memo:  # the bridge rebuilds hook_dict on every read (~1 ms on SmolLM2, 60 reads a pass)
        memo["hook_names"] = frozenset(model.hook_dict)
    known = memo["hook_names"]

    def pick(*names: str) -> str:
        return next(f"blocks.{layer}.attn.{n}" for n in names if f"blocks.{layer}.attn.{n}" in known)

    try:
        return dict(q=pick("hook_rot_q", "hook_q"), k=pick("hook_rot_k", "hook_k"), v=pick("hook_v"),
                    scores=pick("hook_attn_scores"), pattern=pick("hook_pattern"), z=pick("hook_z"))
    except StopIteration:
        raise AnalysisError(f"attention layer {layer} of {model.cfg.model_name!r} lacks the q/k/v/scores/pattern/z "
                            "hooks that position-separated attribution needs; use method='activation'.") from None


def _per_head(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[batch, pos, kv_heads, d_head]`` -> ``[batch, pos, n_heads, d_head]`` (grouped-query attention)."""
    return x if x.shape[2] == n_heads else x.repeat_interleave(n_heads // x.shape[2], dim=2)


def separated(model: "TransformerBridge", layers: Sequence[int], scales: dict[int, float],
              clean: dict[str, torch.Tensor] | None = None) -> list[tuple[str, Callable]]:
    """TL hooks that run attention ``layers`` position-separated: query ``p`` reads the other
    positions' keys and values from ``clean`` (hook name -> the clean run's activation, as that
    hook gives it) and only its own key and value from the live run. ``clean=None`` takes the
    live values themselves as constants (``detach``): the forward is unchanged, and a gradient
    at position ``p`` comes from position ``p``'s own prediction only.

    The scores of a query with its own key are corrected on the diagonal,
    ``+ scale * q_p . (k_p - k_clean_p)``, and the head outputs by
    ``pattern_pp * (v_p - v_clean_p)``: zero when live equals clean, and the exact gradient.
    ``scales`` holds each layer's score scale (see :func:`check_separation`)."""
    hooks: list[tuple[str, Callable]] = []
    for layer in layers:
        names, live = _attn_hooks(model, layer), {}

        def keep_q(q, hook, live=live):
            live["q"] = q
            return q

        def scores(s, hook, live=live, scale=scales[layer]):
            q = live["q"]
            dk = _per_head(live["k"] - live["k_clean"], q.shape[2])
            return s + torch.diag_embed((q * dk).sum(-1).transpose(1, 2) * scale)

        def pattern(a, hook, live=live):
            live["pattern"] = a
            return a

        def z(x, hook, live=live):
            dv = _per_head(live["v"] - live["v_clean"], x.shape[2])
            return x + live["pattern"].diagonal(dim1=-2, dim2=-1).transpose(1, 2)[..., None] * dv

        def swap(x, hook, live=live, what="k", name=names["k"]):
            live[what] = x
            live[what + "_clean"] = x.detach() if clean is None else clean[name]
            return live[what + "_clean"]

        hooks += [(names["q"], keep_q), (names["k"], swap), (names["v"], partial(swap, what="v", name=names["v"])),
                  (names["scores"], scores), (names["pattern"], pattern), (names["z"], z)]
    return hooks


def clean_names(model: "TransformerBridge", layers: Sequence[int]) -> list[str]:
    """The hooks whose clean activations :func:`separated` reads for ``layers``."""
    return [h for layer in layers for key, h in _attn_hooks(model, layer).items() if key in ("k", "v")]


def _probe(model: "TransformerBridge") -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.cfg.d_vocab, (1, PROBE_LEN), generator=gen)


def check_separation(model: "TransformerBridge") -> dict[int, float]:
    """Each attention layer's score scale, after checking on a short probe that a
    position-separated pass equals one-position-at-a-time runs, in log-probabilities and in
    gradients (cached on the model). An AnalysisError names the error on a model where it fails.

    The probe halves ``mlp.0`` at every position in one separated pass, and at one position per
    sequence in ``PROBE_LEN`` plain passes; every later attention layer runs separated.
    """
    memo = _memo(model)
    if "scales" in memo:
        return memo["scales"]
    n = model.cfg.n_layers
    ids, hook = _probe(model), "blocks.0.mlp.hook_post"
    attn = {layer: _attn_hooks(model, layer) for layer in range(n)}
    wanted = {hook, *[h for names in attn.values() for h in (names["q"], names["k"], names["scores"])],
              *clean_names(model, range(n))}
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda name: name in wanted)
    scales = {layer: _scale(cache, names, layer, model) for layer, names in attn.items()}
    act = cache[hook]
    with constant_weights(model), torch.enable_grad():
        half = (0.5 * act).requires_grad_(True)
        hooks = [(hook, lambda a, hook: half)] + separated(model, range(1, n), scales,
                                                           {h: cache[h] for h in clean_names(model, range(1, n))})
        with model.hooks(fwd_hooks=hooks):
            logp = -next_token_loss(model(ids, return_type="logits"), ids)[:, 1:]
        grad_sep, = torch.autograd.grad(logp.sum(), half)
        eye = torch.eye(PROBE_LEN)[:, :, None]
        one = (act * (1 - 0.5 * eye)).requires_grad_(True)  # copy p halves position p only
        with model.hooks(fwd_hooks=[(hook, lambda a, hook: one)]):
            ref = -next_token_loss(model(ids.expand(PROBE_LEN, -1), return_type="logits"), ids.expand(PROBE_LEN, -1))
        diag = ref[:, 1:].diagonal()  # copy p's prediction made at p
        grad_ref, = torch.autograd.grad(diag.sum(), one)
    with torch.no_grad():
        plain = -next_token_loss(model(ids, return_type="logits"), ids)[0, 1:]
    grad_ref = grad_ref[torch.arange(PROBE_LEN - 1), torch.arange(PROBE_LEN - 1)]
    errors = {"log-probability": ((logp[0] - diag).abs().max() / (diag - plain).abs().max().clamp_min(1e-6)).item(),
              "gradient": ((grad_sep[0, :-1] - grad_ref).abs().max() / grad_ref.abs().max().clamp_min(1e-12)).item()}
    if max(errors.values()) > PROBE_TOL:
        raise AnalysisError(
            f"position-separated attribution does not reproduce one-position runs on {model.cfg.model_name!r} "
            f"(relative errors {errors}; allowed {PROBE_TOL}): its attention differs from q.k scores, a softmax "
            "and a pattern-weighted sum of values at the hooks. Use method='activation' on this model.")
    memo["scales"] = scales
    return scales


def _scale(cache: Any, names: dict[str, str], layer: int, model: "TransformerBridge") -> float:
    """The factor between a layer's scores and ``q . k``, read off the probe's diagonal."""
    q, k, s = cache[names["q"]], cache[names["k"]], cache[names["scores"]]
    qk = (q * _per_head(k, q.shape[2])).sum(-1).transpose(1, 2)  # [batch, head, pos]
    diag = s.diagonal(dim1=-2, dim2=-1)
    ok = qk.abs() > 1e-3 * qk.abs().max()
    if not ok.any():
        raise AnalysisError(f"layer {layer} of {model.cfg.model_name!r}: the probe's q.k products are all zero; "
                            "position separation cannot be calibrated.")
    return float((diag[ok] / qk[ok]).median())


@contextmanager
def constant_weights(model: "TransformerBridge") -> Iterator[None]:
    """Weights as constants inside the block (no autograd graph through them), restored on exit:
    gradients are taken with respect to activations only."""
    live = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in live:
            p.requires_grad_(False)
        yield
    finally:
        for p in live:
            p.requires_grad_(True)


# ---------------------------------------------------------------- shorter passes


def _entry(layer: int) -> str:
    """The residual entering block ``layer``, where a resumed pass starts."""
    return f"blocks.{layer}.hook_resid_pre"


def _same(out: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether a shortened pass gives a plain pass's logits (up to float32 rounding)."""
    return torch.allclose(out, logits, rtol=1e-4, atol=1e-4)


def _rows_readout(model: "TransformerBridge") -> Callable | None:
    """The readout (residual entering ``ln_final`` -> logits) with which passes stop at
    ``ln_final`` and unembed only the rows scored, where it gives the probe's logits (checked once
    per model); else None (passes give all logits)."""
    memo = _memo(model)
    if "readout" not in memo:
        ids, read = _probe(model), readout(model)
        with torch.no_grad():
            same = read is not None and _same(read(run_from(model, ids, 0, [], True)), model(ids, return_type="logits"))
        memo["readout"] = read if same else None
    return memo["readout"]


def _start(model: "TransformerBridge", layer: int) -> int:
    """The block where IG's passes for a site of block ``layer`` start: that block, if a pass
    resumed there from the residual entering it gives the probe's logits (checked once per block
    and model; the blocks below it are not run at all), else 0 (from the tokens)."""
    memo = _memo(model).setdefault("resumes", {})
    if layer and layer not in memo:
        ids = _probe(model)
        with torch.no_grad():
            logits, cache = model.run_with_cache(ids, names_filter=_entry(layer))
            try:
                memo[layer] = layer_list(model) is not None and _same(
                    run_from(model, cache[_entry(layer)], layer, [], False), logits)
            except (NotImplementedError, ValueError, KeyError):  # start_at_layer or the hook is not there
                memo[layer] = False
    return layer if layer and memo[layer] else 0


def _run_pass(model: "TransformerBridge", x: torch.Tensor, start: int, hooks: list) -> torch.Tensor:
    """One pass with ``hooks``, from the tokens ``x`` (``start`` 0) or the residual ``x`` entering
    block ``start``: the residual entering ``ln_final`` where the model reads out rows, else logits."""
    return run_from(model, x, start, hooks, _rows_readout(model) is not None)


def _logp_at(model: "TransformerBridge", out: torch.Tensor, ids: torch.Tensor, seq: torch.Tensor,
             pos: torch.Tensor) -> torch.Tensor:
    """``[n_rows]``: the log-probability of the actual token ``ids[seq, pos + 1]`` as predicted at
    ``(seq, pos)``, from a pass's output (:func:`_run_pass`)."""
    rows, read = out[seq, pos], _rows_readout(model)
    return -cross_entropy(rows if read is None else read(rows), ids[seq, pos + 1])


def _clean(model: "TransformerBridge", ids: torch.Tensor, names: set[str]) -> tuple[dict[str, torch.Tensor],
                                                                                    torch.Tensor]:
    """One plain pass without gradients: the activations at the hooks ``names``, and its output."""
    held: dict[str, torch.Tensor] = {}

    def hold(act: torch.Tensor, hook: Any, name: str) -> None:
        held[name] = act

    with torch.no_grad():
        out = _run_pass(model, ids, 0, [(name, partial(hold, name=name)) for name in names])
    return held, out


# ---------------------------------------------------------------- samples and scores


def _samples(stimuli: Stimuli, label: str | None, label_of: str, include_bos: bool) -> pd.DataFrame:
    """One row per sample, the predicted token's trial row (``seq``, ``pos`` = t, ...), plus
    ``context_pos`` (t - 1, where the scored neurons sit), ``context_text`` and, with a
    ``label``, ``class``: the label of the token ``label_of`` names. BOS rows out unless asked."""
    table = stimuli.tokens
    keep = trials.rows(table, include_bos)
    idx = np.flatnonzero(table["pos"].to_numpy() >= 1)  # rows are in (seq, pos) order: idx - 1 is the context
    idx = idx[keep[idx] & keep[idx - 1]]
    out = table.iloc[idx].reset_index(drop=True)
    out["context_pos"] = out["pos"] - 1
    out["context_text"] = table["text"].to_numpy()[idx - 1]
    if label is not None:
        out["class"] = table[label].to_numpy()[idx if label_of == "next" else idx - 1]
    if out.empty:
        raise AnalysisError(f"the stimuli {stimuli.name!r} have no prediction to score: every sequence is one "
                            "token long or every context/predicted token is a BOS (BOS rows stay out unless "
                            "include_bos=True).")
    return out


def _batches(stimuli: Stimuli, samples: pd.DataFrame,
             batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray, tuple[torch.Tensor, torch.Tensor]]]:
    """``(ids, sample rows, (batch row, context position) of each)`` per batch of sequences; the
    samples are in ``(seq, pos)`` order, so their positions are in row-major order."""
    seq = samples["seq"].to_numpy()
    for lo, ids in stimuli.batches(batch_size):
        rows = np.flatnonzero((seq >= lo) & (seq < lo + ids.shape[0]))
        if rows.size:
            yield ids, rows, (torch.as_tensor(seq[rows] - lo), torch.as_tensor(samples["context_pos"].to_numpy()[rows]))


def _keep(act: torch.Tensor, hook: Any, store: dict, name: str, leaf: bool) -> torch.Tensor:
    """Hold a site's activation for the gradient; the lowest site starts the graph (weights are constant)."""
    store[name] = act.detach().requires_grad_(True) if leaf else act
    return store[name]


def _scores(model: "TransformerBridge", stimuli: Stimuli, samples: pd.DataFrame, targets: list[Site], method: str,
            steps: int, batch_size: int, bar: tqdm) -> Iterator[Block]:
    """``(site index, sample rows, scores [n_rows, d_mlp] float32, change)`` a batch and a site at
    a time; ``change`` (IG only, else None) is each sample's ``log p(actual) - log p(site zeroed
    at the context position)`` ``[n_rows]``, what IG's scores must sum to."""
    n_layers = model.cfg.n_layers
    low = min(s.layer for s in targets)
    scales = check_separation(model) if method != "activation" else {}
    for ids, rows, where in _batches(stimuli, samples, batch_size):
        if method == "activation":
            acts, _ = _clean(model, ids, {s.hook for s in targets})
            for i, s in enumerate(targets):
                yield i, rows, acts[s.hook][where].float(), None
            bar.update(rows.size)
        elif method == "grad_x_act":
            acts: dict[str, torch.Tensor] = {}
            hooks = [(s.hook, partial(_keep, store=acts, name=s.hook, leaf=s.layer == low)) for s in targets]
            with constant_weights(model), torch.enable_grad():
                out = _run_pass(model, ids, 0, hooks + separated(model, range(low + 1, n_layers), scales))
                # positions run separated, so each sample's gradient comes from its own prediction only
                objective = _logp_at(model, out, ids, *where).sum()
                grads = torch.autograd.grad(objective, [acts[s.hook] for s in targets])
            for i, (s, g) in enumerate(zip(targets, grads)):
                yield i, rows, (acts[s.hook].detach() * g)[where].float(), None
            bar.update(rows.size)
        else:
            yield from _integrated(model, ids, rows, where, targets, steps, scales, bar)


def _integrated(model: "TransformerBridge", ids: torch.Tensor, rows: np.ndarray,
                where: tuple[torch.Tensor, torch.Tensor], targets: list[Site], steps: int, scales: dict[int, float],
                bar: tqdm) -> Iterator[Block]:
    """Integrated Gradients (Captum) of one batch, one site at a time: the site's activation is
    Captum's input, injected at its hook; every attention layer after it runs separated, reading
    the other positions from one clean run, and the blocks below it are the clean run's (a pass
    starts at the site's block). One more separated pass with the site at zero gives the change
    each sample's scores must sum to (completeness, checked per sample)."""
    from captum.attr import IntegratedGradients

    n_layers = model.cfg.n_layers
    low = min(s.layer for s in targets)
    start = {s.hook: _start(model, s.layer) for s in targets}
    cache, out = _clean(model, ids, {s.hook for s in targets} | set(clean_names(model, range(low + 1, n_layers)))
                        | {_entry(layer) for layer in start.values() if layer})
    actual = _logp_at(model, out, ids, *where)
    samples = torch.zeros(ids.shape, dtype=torch.bool)
    samples[where] = True  # Captum repeats it with the ids, one copy per step in a pass
    per_pass = max(1, PASS_TOKENS // ids.numel())
    for i, s in enumerate(targets):
        later = range(s.layer + 1, n_layers)
        names = clean_names(model, later)

        def logp(act: torch.Tensor, x: torch.Tensor, ids: torch.Tensor, samples: torch.Tensor, *clean: torch.Tensor,
                 at: str = s.hook, later: range = later, names: list[str] = names,
                 first: int = start[s.hook]) -> tuple[torch.Tensor, torch.Tensor]:
            """Each sample's log-probability, and the batch row it sits in."""
            hooks = [(at, lambda a, hook: act)] + separated(model, later, scales, dict(zip(names, clean)))
            seq, pos = samples.nonzero(as_tuple=True)  # row-major: the order of ``where``
            return _logp_at(model, _run_pass(model, x, first, hooks), ids, seq, pos), seq

        def per_sequence(*args: torch.Tensor) -> torch.Tensor:
            values, seq = logp(*args)
            return torch.zeros(len(args[0]), dtype=values.dtype).index_add(0, seq, values)

        inputs = (cache[_entry(start[s.hook])] if start[s.hook] else ids, ids, samples, *[cache[h] for h in names])
        with constant_weights(model):
            attr = IntegratedGradients(per_sequence).attribute(
                cache[s.hook].float(), baselines=0.0, additional_forward_args=inputs, n_steps=steps,
                method="gausslegendre", internal_batch_size=ids.shape[0] * per_pass)
            with torch.no_grad():
                change = actual - logp(torch.zeros_like(cache[s.hook]), *inputs)[0]
        yield i, rows, attr[where].detach().float(), change.double()
        bar.update(rows.size)


# ---------------------------------------------------------------- arguments


def _check(model: "TransformerBridge", stimuli: Stimuli, method: str, sites: Any, steps: int, batch_size: int,
           include_bos: bool, progress: bool) -> list[Site]:
    """The MLP sites to score, after checking every argument shared by both entry points."""
    if method not in METHODS:
        raise AnalysisError.Unknown(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    count(steps, "steps")
    count(batch_size, "batch_size")
    flag(include_bos, "include_bos")
    flag(progress, "progress")
    stimuli = as_stimuli(model, stimuli)
    targets = resolve_sites(model, [f"mlp.{i}" for i in range(model.cfg.n_layers)] if sites is None else sites)
    bad = [s.name for s in targets if s.kind != "mlp"]
    if bad:
        raise SiteError(f"key neurons are MLP neurons: {bad} {'is not an' if len(bad) == 1 else 'are not'} MLP site; "
                        f"choose among mlp.0..mlp.{model.cfg.n_layers - 1} (or None for all).")
    return targets


def _run(model: "TransformerBridge", stimuli: Stimuli, samples: pd.DataFrame, targets: list[Site], method: str,
         steps: int, batch_size: int, progress: bool, each: Callable[[Block], None]) -> dict[str, float]:
    """Score every sample at every site, handing each block to ``each``. Returns IG's
    completeness error per site, ``sum |scores summed - change| / sum |change|`` over the samples
    (empty for the other methods), and warns where it exceeds ``COMPLETENESS``."""
    gap, change = np.zeros(len(targets)), np.zeros(len(targets))
    total = len(samples) * (len(targets) if method == "ig" else 1)
    with progress_bar(total=total, unit="token", desc=f"key neurons ({method})", show=progress) as bar:
        for block in _scores(model, stimuli, samples, targets, method, steps, batch_size, bar):
            each(block)
            i, _, scores, delta = block
            if delta is not None:
                gap[i] += float((scores.double().sum(-1) - delta).abs().sum())
                change[i] += float(delta.abs().sum())
    if method != "ig":
        return {}
    errors = {s.name: float(g / c) if c else float("nan") for s, g, c in zip(targets, gap, change)}
    worse = {name: f"{e:.1%}" for name, e in errors.items() if e > COMPLETENESS}
    if worse:
        warnings.warn(f"Integrated Gradients with steps={steps}: the scores of a layer miss the output change by "
                      f"{worse} over all samples; raise steps for attributions that add up.", stacklevel=3)
    return errors


def _meta(model: "TransformerBridge", stimuli: Stimuli, targets: list[Site], method: str, steps: int,
          include_bos: bool, samples: pd.DataFrame, errors: dict[str, float]) -> dict[str, Any]:
    return dict(model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(),
                stimuli=stimuli.name, method=method,
                sites=[s.name for s in targets], steps=steps if method == "ig" else None,
                ig="Captum IntegratedGradients, Gauss-Legendre, zero-activation baseline at the context position"
                if method == "ig" else None,
                target="log-probability of the actual next token", include_bos=include_bos,
                n_samples=len(samples), n_seqs=int(samples["seq"].nunique()), completeness_by_site=errors,
                completeness_error=max((e for e in errors.values() if e == e), default=float("nan")))


# ---------------------------------------------------------------- per-sample attributions


@dataclass
class Attributions(Result):
    """What :func:`attributions` returns: one row of ``.df`` per sample and its neurons' scores.

    ``.df``: the predicted token's trial row (``seq``, ``pos`` = t, ``token``, ``text``, labels),
    plus ``context_pos`` (t - 1, where the neurons sit), ``context_text``, ``total`` (the scores
    summed over the site's neurons) and, for ``"ig"``, ``change``: ``log p(actual token)`` minus
    the same with the site zeroed at ``context_pos`` (the rest of the model re-run), which
    ``total`` equals by completeness, up to the integration error (NaN for other methods).

    Attributes:
        values: ``[n_samples, d_mlp]`` float32, row for row with ``.df``.

    ``.meta``: ``model``, ``stimuli``, ``method``, ``sites`` (one), ``steps``, ``ig``, ``target``,
    ``include_bos``, ``n_samples``, ``n_seqs``, ``completeness_error`` (IG:
    ``sum |total - change| / sum |change|`` over the samples; NaN otherwise) and
    ``completeness_by_site`` (the same, per site: ``{}`` for other methods).
    """

    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


def attributions(model: "TransformerBridge", stimuli: Stimuli, site: str = "mlp.0", method: str = "ig", *,
                 steps: int = 64, batch_size: int = 16, include_bos: bool = False,
                 progress: bool = True) -> Attributions:
    """Each sample's scores of one MLP site's neurons (runs the model; see the module docstring).

    Example:
        >>> from llmscope.analysis.key_neurons import attributions
        >>> a = attributions(model, stim, "mlp.1", "grad_x_act", progress=False)
        >>> a.values.shape == (len(a.df), 512)
        True
    """
    targets = _check(model, stimuli, method, [site], steps, batch_size, include_bos, progress)
    samples = _samples(stimuli, None, "next", include_bos)
    values = np.zeros((len(samples), targets[0].n_units), np.float32)
    change = np.full(len(samples), np.nan)

    def each(block: Block) -> None:
        _, rows, scores, delta = block
        values[rows] = scores.numpy()
        if delta is not None:
            change[rows] = delta.numpy()

    errors = _run(model, stimuli, samples, targets, method, steps, batch_size, progress, each)
    samples["total"] = values.sum(1, dtype=np.float64)
    samples["change"] = change
    meta = _meta(model, stimuli, targets, method, steps, include_bos, samples, errors)
    return Attributions(samples, kind="attributions", meta=meta, values=values)


# ---------------------------------------------------------------- key neurons


class _Counts:
    """Per site, how often each neuron is in a sample's top set, and its summed score, by class
    (``[n_classes, d_mlp]``), for the real labels and for the shuffled ones."""

    def __init__(self, targets: list[Site], n_classes: int, n_top: int, codes: np.ndarray, shuffled: np.ndarray):
        self.n_top, self.n_classes = n_top, n_classes
        self.codes = {"real": torch.as_tensor(codes), "shuffled": torch.as_tensor(shuffled)}
        self.counts = {k: [torch.zeros(n_classes * s.n_units, dtype=torch.int64) for s in targets] for k in self.codes}
        self.sums = {k: [torch.zeros(n_classes, s.n_units, dtype=torch.float64) for s in targets] for k in self.codes}

    def add(self, block: Block) -> None:
        i, rows, scores, _ = block
        top = scores.topk(self.n_top, dim=-1).indices  # [n_rows, n_top]
        d = scores.shape[1]
        for key, codes in self.codes.items():
            c = codes[torch.as_tensor(rows)]
            self.counts[key][i] += torch.bincount((c[:, None] * d + top).ravel(), minlength=self.n_classes * d)
            self.sums[key][i].index_add_(0, c, scores.double())

    def frames(self, key: str, index: pd.MultiIndex, classes: list, n: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Counts and mean scores ``[units, classes]`` of all sites."""
        counts = np.concatenate([c.view(self.n_classes, -1).T.numpy() for c in self.counts[key]])
        means = np.concatenate([s.T.numpy() for s in self.sums[key]]) / n
        return pd.DataFrame(counts, index=index, columns=classes), pd.DataFrame(means, index=index, columns=classes)


def _ranking(rows: np.ndarray, counts: np.ndarray, scores: np.ndarray, n: np.ndarray, which: np.ndarray,
             k: int) -> dict[str, np.ndarray]:
    """The ``k`` most recurrent neurons of each class at positions ``which``, among the neurons
    ``rows`` of ``counts`` and ``scores`` ``[neurons, classes]`` (top-set counts and mean scores;
    ties: the higher mean score, then the lower row), ``n`` samples per class: their row
    positions (``pos``) and the columns of a key-neuron table, each ``[len(which), k]``."""
    every = counts[rows]
    mine, mean = every[:, which], scores[rows][:, which]
    order = np.lexsort((-mean, -mine), axis=0)[:k].T
    col = np.arange(len(which))[:, None]
    hits = mine[order, col]
    frequency = hits / n[which, None]
    rest = (every.sum(1)[order] - hits) / (n.sum() - n[which])[:, None]
    return dict(pos=rows[order], rank=np.broadcast_to(np.arange(1, order.shape[1] + 1), order.shape), count=hits,
                frequency=frequency, frequency_rest=rest, specificity=frequency - rest, mean_score=mean[order, col])


def _table(index: pd.MultiIndex, classes: list, ranked: dict[str, np.ndarray],
           control: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """A key-neuron table from :func:`_ranking`'s columns (row ``i`` of each belongs to
    ``classes[i]``), indexed by the neurons' ``(site, unit)``; with the ``control``'s ranking,
    its ``specificity_shuffled`` (the neuron of the same class, site and rank under permuted labels)."""
    width = ranked["pos"].shape[1]
    columns = {key: value.ravel() for key, value in ranked.items() if key != "pos"}
    table = pd.DataFrame({"class": [c for c in classes for _ in range(width)], **columns},
                         index=index[ranked["pos"].ravel()])
    if control is not None:
        table.insert(5, "specificity_shuffled", control["specificity"].ravel())
    return table


def _plot(result: "KeyNeurons") -> "go.Figure":
    import plotly.graph_objects as go

    df = result.df.reset_index()
    grid = df.pivot_table(index="class", columns="site", values=["specificity", "specificity_shuffled"],
                          aggfunc="mean", sort=False)
    sites, classes = result.meta["sites"], result.meta["classes"]
    real = grid["specificity"].reindex(index=classes, columns=sites)
    shuffled = grid["specificity_shuffled"].reindex(index=classes, columns=sites)
    fig = go.Figure(go.Heatmap(
        z=real.to_numpy(), x=sites, y=[str(c) for c in classes], customdata=shuffled.to_numpy(),
        colorscale="Viridis", colorbar=dict(title="specificity"),
        hovertemplate="%{y} @ %{x}<br>specificity %{z:.3f}<br>shuffled labels %{customdata:.3f}<extra></extra>"))
    return fig.update_layout(
        title=(f"key neurons ({result.meta['method']}, k={result.meta['k']}): in-class minus out-of-class "
               f"frequency in the top {result.meta['top_frac']:.0%}"),
        xaxis_title="site", yaxis_title=f"{result.meta['label']} of the {result.meta['label_of']} token",
        xaxis_type="category", yaxis_type="category")


@dataclass
class KeyNeurons(Result):
    """What :func:`key_neurons` returns: the key neurons of every class, per layer.

    ``.df``, indexed by ``(site, unit)`` (pass it, or any part of it, to ``lesion``, ``gain``, a
    decoder or a widget): for every class and every site, its ``k`` most recurrent neurons:

    ======================  =======================================================================
    class                   the class (a value of ``label`` of the ``label_of`` token)
    rank                    1 = most recurrent in this class and site (ties: higher mean score)
    count                   samples of the class in which the neuron is in the top ``top_frac``
    frequency               ``count`` / samples of the class
    frequency_rest          the same over the samples of every other class
    specificity             ``frequency - frequency_rest``
    specificity_shuffled    the specificity of the neuron of the same rank when the labels are
                            permuted across samples (the control; near 0 when nothing is specific)
    mean_score              the neuron's mean score over all samples of the class
    ======================  =======================================================================

    Attributes:
        counts, scores: DataFrames ``[every scored neuron, classes]``: top-set counts and mean
            scores (``counts_shuffled``, ``scores_shuffled``: the same with permuted labels).
        n_samples: samples per class (a Series; the permutation keeps these sizes).

    ``.meta``: ``model``, ``stimuli``, ``method``, ``sites``, ``label``, ``label_of``, ``classes``,
    ``top_frac``, ``n_top`` (neurons kept per sample and layer), ``k``, ``steps`` (IG), ``ig``,
    ``target``, ``include_bos``, ``n_samples``, ``n_seqs``, ``completeness_error`` (IG: the worst
    site's, as in :class:`Attributions`), ``completeness_by_site``,
    ``shuffle``, ``seed``.
    """

    counts: pd.DataFrame = field(default_factory=pd.DataFrame)
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    counts_shuffled: pd.DataFrame = field(default_factory=pd.DataFrame)
    scores_shuffled: pd.DataFrame = field(default_factory=pd.DataFrame)
    n_samples: pd.Series = field(default_factory=lambda: pd.Series(dtype=int))

    def units(self, cls: Any, site: str | None = None, k: int | None = None, shuffled: bool = False) -> pd.DataFrame:
        """The ``k`` key neurons of class ``cls`` (``meta["k"]`` by default): in one ``site``, or
        over all scored sites (``site=None``: top-set counts compare across layers, as every layer
        keeps the same share). ``shuffled=True``: the key neurons under permuted labels (the
        control). Columns as ``.df`` (no ``specificity_shuffled``), indexed by ``(site, unit)``.

        Example:
            >>> from llmscope.analysis.key_neurons import key_neurons
            >>> res = key_neurons(model, stim, method="activation", sites=["mlp.1"], k=3, progress=False)
            >>> res.units("DET", k=2).index.tolist() == res.df[res.df["class"] == "DET"].index[:2].tolist()
            True
        """
        if cls not in self.n_samples.index:
            raise AnalysisError.Unknown(f"class {cls!r} is not a value of {self.meta['label']!r} here; "
                                f"the classes are {self.meta['classes']}.")
        if site is not None and site not in self.meta["sites"]:
            raise SiteError.Unknown(f"site {site!r} was not scored; the scored sites are {self.meta['sites']} (or None: all).")
        k = self.meta["k"] if k is None else count(k, "k")
        rows = slice(None) if site is None else self.counts.index.get_level_values("site") == site
        which = np.array([self.n_samples.index.get_loc(cls)])
        return _table(self.counts.index, [cls], self._ranked(flag(shuffled, "shuffled"), [rows], which, k))

    def _ranked(self, shuffled: bool, groups: list[Any], which: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """:func:`_ranking` of the classes at positions ``which`` within each group of neurons (a
        mask, slice or positions of the count tables' rows), the groups side by side, with the real
        or the shuffled labels."""
        counts, scores = (self.counts_shuffled, self.scores_shuffled) if shuffled else (self.counts, self.scores)
        every, n = np.arange(len(counts)), self.n_samples.to_numpy()
        parts = [_ranking(every[rows], counts.to_numpy(), scores.to_numpy(), n, which, k) for rows in groups]
        return {key: np.concatenate([part[key] for part in parts], axis=1) for key in parts[0]}

    def top(self, n: int = 10, cls: Any = None, site: str | None = None) -> pd.DataFrame:
        """The ``n`` most class-specific key neurons (rows of ``.df`` by ``specificity``), of one
        class and/or site if given; the index passes to ``lesion`` and the decoders.

        Example:
            >>> from llmscope.analysis.key_neurons import key_neurons
            >>> res = key_neurons(model, stim, method="activation", k=3, progress=False)
            >>> res.top(2, cls="NOUN")["class"].tolist()
            ['NOUN', 'NOUN']
        """
        n = count(n, "n")
        df = self.df
        if cls is not None:
            df = df[df["class"] == self.units(cls, site, 1)["class"].iloc[0]]
        if site is not None:
            self.units(self.n_samples.index[0], site, 1)  # checks the site
            df = df[df.index.get_level_values("site") == site]
        return df.sort_values("specificity", ascending=False, kind="stable").head(n)


def key_neurons(model: "TransformerBridge", stimuli: Stimuli, label: str = "pos_tag", method: str = "ig", *,
                sites: str | Sequence[str] | None = None, top_frac: float = 0.05, k: int = 100,
                label_of: str = "next", steps: int = 64, batch_size: int = 16, include_bos: bool = False,
                seed: int = SHUFFLE_SEED, progress: bool = True) -> KeyNeurons:
    """The key MLP neurons of every class of ``label`` (runs the model: forward and backward passes).

    Args:
        model: the model (left unchanged: hooks are removed and weights never touched).
        stimuli: token sequences with a categorical ``label`` column (``pos_tag``...).
        label: the class of a sample is this column's value at the ``label_of`` token.
        method: ``"ig"`` (Integrated Gradients, ``steps`` Gauss-Legendre points per sample and
            layer), ``"grad_x_act"`` or ``"activation"`` (see the module docstring).
        sites: MLP sites to score (``"mlp.L"``); None scores every layer.
        top_frac: share of each layer's neurons kept per sample, in (0, 1).
        k: key neurons per class and site (at most ``d_mlp``).
        label_of: ``"next"`` (the predicted token, as in the paper) or ``"current"``.
        steps: IG integration points (Gauss-Legendre). Cost grows linearly with them; 64 make
            the organism's first layer add up within 3% (its last layer needs 8): check
            ``meta["completeness_error"]`` (a warning says when it exceeds 5%).
        batch_size: sequences per forward pass (IG packs its steps into passes of at most
            ``PASS_TOKENS`` tokens).
        include_bos: keep samples whose context or predicted token is a BOS.
        seed: seeds the label permutation of the control.
        progress: show a tqdm bar (samples x sites for IG, samples otherwise).

    Returns:
        A :class:`KeyNeurons` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: an unknown method or ``label_of``, ``top_frac`` outside (0, 1), ``k < 1``
            or above ``d_mlp``, a label with fewer than two classes among the samples (or more
            than 256), bad stimuli, or a model whose attention cannot be position-separated.
        ColumnError: ``label`` is not a trial-table column.
        SiteError: a site that is not ``mlp.L``.

    Example:
        >>> res = key_neurons(model, stim, method="ig", sites=["mlp.1"], k=10, steps=16, progress=False)
        >>> res.meta["completeness_error"] < 0.05, len(res.units("NOUN"))
        (True, 10)
    """
    if label_of not in LABEL_OF:
        raise AnalysisError.Unknown(f"label_of must be one of {list(LABEL_OF)} (the predicted token, or the token the "
                            f"neurons sit on); got {label_of!r}.")
    top_frac = fraction(top_frac, "top_frac")
    k = count(k, "k")
    seed = count(seed, "seed", minimum=0)
    trials.column(stimuli.tokens if isinstance(stimuli, Stimuli) else pd.DataFrame(), label, "label column")
    targets = _check(model, stimuli, method, sites, steps, batch_size, include_bos, progress)
    d_mlp = min(s.n_units for s in targets)
    if k > d_mlp:
        raise AnalysisError.Range(f"k must be an integer in 1..{d_mlp} (the neurons of a layer); got {k}.")
    samples = _samples(stimuli, label, label_of, include_bos)
    values = trials.labels(samples, "class", min_categories=2)
    if values.nunique() > MAX_CLASSES:
        raise AnalysisError.Range(f"the label {label!r} has {values.nunique()} classes; key neurons count at most "
                            f"{MAX_CLASSES} (a table per class): bin it, or pick a coarser label.")
    samples = samples.loc[values.index].reset_index(drop=True)
    codes, classes = pd.factorize(samples["class"], sort=True)
    shuffled = np.random.default_rng(seed).permutation(codes)
    n_top = math.ceil(top_frac * d_mlp)
    tally = _Counts(targets, len(classes), n_top, codes, shuffled)
    errors = _run(model, stimuli, samples, targets, method, steps, batch_size, progress, tally.add)

    index = pd.MultiIndex.from_arrays([np.repeat([s.name for s in targets], [s.n_units for s in targets]),
                                       np.concatenate([np.arange(s.n_units) for s in targets])], names=["site", "unit"])
    n = np.bincount(codes, minlength=len(classes))
    counts, scores = tally.frames("real", index, classes.tolist(), n)
    counts_shuffled, scores_shuffled = tally.frames("shuffled", index, classes.tolist(), n)
    meta = dict(_meta(model, stimuli, targets, method, steps, include_bos, samples, errors), label=label,
                label_of=label_of, classes=classes.tolist(), top_frac=top_frac, n_top=n_top, k=k, seed=seed,
                shuffle="labels permuted across samples (class sizes kept), one permutation for all sites")
    res = KeyNeurons(pd.DataFrame(), kind="key_neurons", meta=meta, plotter=_plot, counts=counts, scores=scores,
                     counts_shuffled=counts_shuffled, scores_shuffled=scores_shuffled,
                     n_samples=pd.Series(n, index=classes, name="n"))
    ends = np.cumsum([s.n_units for s in targets])
    per_site = [slice(end - s.n_units, end) for s, end in zip(targets, ends)]
    every = np.arange(len(classes))
    res.df = _table(index, classes.tolist(), res._ranked(False, per_site, every, k),
                    res._ranked(True, per_site, every, k))
    return res


__all__ = ["key_neurons", "KeyNeurons", "attributions", "Attributions", "separated", "check_separation"]
