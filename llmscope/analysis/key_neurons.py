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
of its forward pass, and padding and BOS rows are no samples). Both short cuts are routes of
the engine (:mod:`llmscope.engine.routes`), checked once per model against a plain pass and left
out where they differ; the scores are the same either way. How many steps make the scores add up depends on the layer: on the organism and
on SmolLM2 the first layer's path is far from linear (64 steps for 3% on the organism; 32 leave
23% on SmolLM2), later ones add up within 0.1% at 8 steps. ``meta["completeness_error"]``
measures it on every run.

**The table.** ``.df`` has one row per scored neuron: the class it is most specific to
(``preferred``), how specific (``specificity``: the share of that class's samples that keep it,
less the share of the other classes'), and which classes it is a key neuron of (``key_for``);
``.data`` holds every neuron's counts and ranks in every class. ``top(10)`` gives the ten most
class-specific neurons; :meth:`KeyNeurons.units` the paper's key neurons of one class.

**Control.** The same counts with the labels permuted across samples (one seeded permutation;
class sizes kept): ``specificity_control`` sits beside ``specificity`` in ``.df`` (the same
statistic, the neuron's most specific class, under permuted labels), and
``units(..., control=True)`` gives the key neurons under permuted labels.

Example:
    >>> import llmscope
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> from llmscope.analysis.key_neurons import key_neurons
    >>> res = key_neurons(model, stim, method="grad_x_act", k=5, progress=False)
    >>> res.units("NOUN", site="mlp.1").columns[:3].tolist()
    ['class', 'rank', 'count']
    >>> key = res.df[res.df["key_for"] != ""]
    >>> bool(key["specificity"].mean() > 2 * key["specificity_control"].mean())
    True
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from llmscope import identity
from llmscope.stimuli import trials
from llmscope.checks import count, flag, fraction
from llmscope.behaviour import cross_entropy, next_token_loss
from llmscope.errors import AnalysisError, SiteError
from llmscope.engine import routes
from llmscope.engine.cache import memo
from llmscope.engine.passes import run_from
from llmscope.progress import progress_bar
from llmscope.result import Result
from llmscope.sites import Site, UnitsLike, resolve_units, unit_labels
from llmscope.stimuli.core import Stimuli, as_stimuli
from llmscope.vocabulary import renamed

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


def _attn_hooks(model: "TransformerBridge", layer: int) -> dict[str, str]:
    """The hooks of one attention layer that separation reads and writes. Keys and queries are
    taken where they enter the score product (after RoPE when the model has it)."""
    kept = memo(model, "separation")
    if "hook_names" not in kept:  # the bridge rebuilds hook_dict on every read (~1 ms on SmolLM2, 60 reads a pass)
        kept["hook_names"] = frozenset(model.hook_dict)
    known = kept["hook_names"]

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


def check_separation(model: "TransformerBridge") -> dict[int, float]:
    """Each attention layer's score scale, after checking on a short probe that a
    position-separated pass equals one-position-at-a-time runs, in log-probabilities and in
    gradients (kept in the per-model cache, :func:`llmscope.engine.cache.memo`). An AnalysisError
    names the error on a model where it fails.

    The probe halves ``mlp.0`` at every position in one separated pass, and at one position per
    sequence in ``PROBE_LEN`` plain passes; every later attention layer runs separated.
    """
    kept = memo(model, "separation")
    if "scales" in kept:
        return kept["scales"]
    n = model.cfg.n_layers
    ids, hook = routes.probe(model, PROBE_LEN), "blocks.0.mlp.hook_post"
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
    kept["scales"] = scales
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


def _run_pass(model: "TransformerBridge", x: torch.Tensor, start: int, hooks: list) -> torch.Tensor:
    """One pass with ``hooks``, from the tokens ``x`` (``start`` 0) or the residual ``x`` entering
    block ``start``: the residual entering ``ln_final`` where the model reads out rows, else logits."""
    return run_from(model, x, start, hooks, routes.readout(model) is not None)


def _logp_at(model: "TransformerBridge", out: torch.Tensor, ids: torch.Tensor, seq: torch.Tensor,
             pos: torch.Tensor) -> torch.Tensor:
    """``[n_rows]``: the log-probability of the actual token ``ids[seq, pos + 1]`` as predicted at
    ``(seq, pos)``, from a pass's output (:func:`_run_pass`)."""
    rows, read = out[seq, pos], routes.readout(model)
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
    start = {s.hook: s.layer if routes.resumes(model, s.layer) else 0 for s in targets}  # checked once per model
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


def _check(model: "TransformerBridge", stimuli: Stimuli, method: str, units: UnitsLike, steps: int,
           batch_size: int, include_bos: bool, progress: bool) -> list[Site]:
    """The MLP sites to score (whole), after checking every argument shared by both entry points."""
    if method not in METHODS:
        raise AnalysisError.Unknown(f"unknown method {method!r}; choose one of {list(METHODS)}.")
    count(steps, "steps")
    count(batch_size, "batch_size")
    flag(include_bos, "include_bos")
    flag(progress, "progress")
    stimuli = as_stimuli(model, stimuli)
    resolved = resolve_units(model, [f"mlp.{i}" for i in range(model.cfg.n_layers)] if units is None else units)
    bad = [s.name for s, _ in resolved if s.kind != "mlp"]
    if bad:
        raise SiteError(f"key neurons are MLP neurons: {bad} {'is not an' if len(bad) == 1 else 'are not'} MLP site; "
                        f"choose among mlp.0..mlp.{model.cfg.n_layers - 1} (or None for all).")
    part = [s.name for s, idx in resolved if len(idx) < s.n_units]
    if part:
        raise SiteError(f"key neurons rank every neuron of a layer (top_frac of each), so they take whole MLP sites; "
                        f"{part} {'is' if len(part) == 1 else 'are'} given in part: pass the site names.")
    return [s for s, _ in resolved]


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


def _unit_coords(index: pd.MultiIndex) -> dict[str, Any]:
    """The coordinates of a ``unit`` dimension: labels ``"mlp.0:12"``, with ``site`` and ``index``."""
    return {"unit": unit_labels(index), "site": ("unit", index.get_level_values(0).to_numpy()),
            "index": ("unit", index.get_level_values(1).to_numpy())}


class Attributions(Result):
    """What :func:`attributions` returns: one row of ``.df`` per sample, its neurons' scores on ``.data``.

    ``.df``: the predicted token's trial row (``seq``, ``pos`` = t, ``token``, ``text``, labels),
    plus ``context_pos`` (t - 1, where the neurons sit), ``context_text``, ``total`` (the scores
    summed over the site's neurons) and, for ``"ig"``, ``change``: ``log p(actual token)`` minus
    the same with the site zeroed at ``context_pos`` (the rest of the model re-run), which
    ``total`` equals by completeness, up to the integration error (NaN for other methods).

    ``.data``: ``score``, ``[sample, unit]`` float32, row for row with ``.df``.

    ``.meta``: ``model``, ``stimuli``, ``method``, ``sites`` (one), ``steps``, ``ig``, ``target``,
    ``include_bos``, ``n_samples``, ``n_seqs``, ``completeness_error`` (IG:
    ``sum |total - change| / sum |change|`` over the samples; NaN otherwise) and
    ``completeness_by_site`` (the same, per site: ``{}`` for other methods).
    """

    kind: ClassVar[str] = "attributions"

    def plot(self, n: int = 40) -> "go.Figure":
        """The ``n`` neurons with the largest mean score over the samples, as bars."""
        import plotly.graph_objects as go

        mean = self.data["score"].mean("sample").to_series().sort_values(ascending=False).head(count(n, "n"))
        fig = go.Figure(go.Bar(x=mean.index.tolist(), y=mean.tolist(),
                               hovertemplate="%{x}<br>mean score %{y:.4g}<extra></extra>"))
        fig.update_xaxes(type="category", title_text="neuron")
        return fig.update_layout(title=f"{self.meta['method']} attribution to log p(actual next token), mean over "
                                       f"{self.meta['n_samples']} samples", yaxis_title="mean score")


def attributions(model: "TransformerBridge", stimuli: Stimuli, site: str = "mlp.0", method: str = "ig", *,
                 steps: int = 64, batch_size: int = 16, include_bos: bool = False,
                 progress: bool = True) -> Attributions:
    """Each sample's scores of one MLP site's neurons (runs the model; see the module docstring).

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> from llmscope.analysis.key_neurons import attributions
        >>> a = attributions(model, stim, "mlp.1", "grad_x_act", progress=False)
        >>> a.data["score"].shape == (len(a.df), 512)
        True
    """
    import xarray as xr

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
    index = pd.MultiIndex.from_arrays([[targets[0].name] * values.shape[1], np.arange(values.shape[1])],
                                      names=["site", "unit"])
    data = xr.Dataset({"score": (("sample", "unit"), values)},
                      coords={"sample": np.arange(len(samples)), **_unit_coords(index)})
    return Attributions(samples, _meta(model, stimuli, targets, method, steps, include_bos, samples, errors), data)


# ---------------------------------------------------------------- key neurons


class _Counts:
    """Per site, how often each neuron is in a sample's top set, and its summed score, by class
    (``[n_classes, d_mlp]``), for the real labels and for the shuffled ones."""

    def __init__(self, targets: list[Site], n_classes: int, n_top: int, codes: np.ndarray, shuffled: np.ndarray):
        self.n_top, self.n_classes = n_top, n_classes
        self.codes = {"real": torch.as_tensor(codes), "control": torch.as_tensor(shuffled)}
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

    def arrays(self, key: str, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts and mean scores ``[units, classes]`` of all sites."""
        counts = np.concatenate([c.view(self.n_classes, -1).T.numpy() for c in self.counts[key]])
        return counts, np.concatenate([s.T.numpy() for s in self.sums[key]]) / n


def _order(counts: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Row positions, per column, from the most recurrent neuron down (ties: the higher mean
    score, then the lower row)."""
    return np.lexsort((-scores, -counts), axis=0)


def _ranks(counts: np.ndarray, scores: np.ndarray, sites: list[slice]) -> np.ndarray:
    """``[units, classes]``: each neuron's rank among its site's neurons in each class (1 = most recurrent)."""
    ranks = np.empty(counts.shape, dtype=np.int64)
    for rows in sites:
        order = _order(counts[rows], scores[rows])
        np.put_along_axis(ranks[rows], order, np.arange(1, len(order) + 1)[:, None].repeat(counts.shape[1], 1), 0)
    return ranks


def _specificity(counts: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(frequency, frequency_rest, specificity)`` ``[units, classes]``: the share of a class's
    samples in which a neuron is kept, the same over every other class's samples, their difference."""
    frequency = counts / n
    rest = (counts.sum(1, keepdims=True) - counts) / (n.sum() - n)
    return frequency, rest, frequency - rest


def _ranking(rows: np.ndarray, counts: np.ndarray, scores: np.ndarray, n: np.ndarray, which: int,
             k: int) -> dict[str, np.ndarray]:
    """The ``k`` most recurrent neurons of class ``which`` among the neurons ``rows`` of
    ``counts`` and ``scores`` ``[neurons, classes]`` (top-set counts and mean scores; ties: the
    higher mean score, then the lower row), ``n`` samples per class: their row positions
    (``pos``) and the columns of a key-neuron table."""
    frequency, rest, specificity = (x[rows, which] for x in _specificity(counts, n))
    order = _order(counts[rows, which], scores[rows, which])[:k]
    return dict(pos=rows[order], rank=np.arange(1, len(order) + 1), count=counts[rows[order], which],
                frequency=frequency[order], frequency_rest=rest[order], specificity=specificity[order],
                mean_score=scores[rows[order], which])


class KeyNeurons(Result):
    """What :func:`key_neurons` returns: every scored neuron, the key neurons of every class.

    ``.df``, one row per scored MLP neuron, indexed by ``(site, unit)`` (pass it, or any part of
    it, to ``lesion``, ``gain``, a decoder or a widget):

    ======================  =======================================================================
    preferred               the class in which the neuron is most specific (a value of ``label``
                            of the ``label_of`` token)
    rank                    its rank among its site's neurons in that class (1 = most recurrent;
                            ties: the higher mean score)
    count                   samples of that class in which it is in the top ``top_frac``
    frequency               ``count`` / samples of the class
    frequency_rest          the same over the samples of every other class
    specificity             ``frequency - frequency_rest`` (what :meth:`top` ranks by)
    specificity_control     the neuron's specificity in its most specific class when the labels
                            are permuted across samples (the control; near 0)
    mean_score              its mean score over all samples of the class
    key_for                 the classes whose ``k`` key neurons (the most recurrent in the site)
                            it is among, comma-separated
    ======================  =======================================================================

    ``.data``, over ``unit`` and ``class``: ``count``, ``mean_score``, ``rank`` and
    ``specificity`` of every neuron in every class, the same with permuted labels
    (``<name>_control``), and ``n_samples`` per class (the permutation keeps these sizes).

    ``.meta``: ``model``, ``stimuli``, ``method``, ``sites``, ``label``, ``label_of``, ``classes``,
    ``top_frac``, ``n_top`` (neurons kept per sample and layer), ``k``, ``steps`` (IG), ``ig``,
    ``target``, ``include_bos``, ``n_samples``, ``n_seqs``, ``completeness_error`` (IG: the worst
    site's, as in :class:`Attributions`), ``completeness_by_site``, ``control``, ``seed``.
    """

    kind: ClassVar[str] = "key_neurons"
    rank_by: ClassVar[str | None] = "specificity"

    @property
    def n_samples(self) -> pd.Series:
        """Samples per class."""
        return self.data["n_samples"].to_series().rename("n")

    @renamed(cls="category", shuffled="control")
    def units(self, category: Any, site: str | None = None, k: int | None = None,
              control: bool = False) -> pd.DataFrame:
        """The ``k`` key neurons of the class ``category`` (``meta["k"]`` by default): the most
        recurrent in one ``site``, or over all scored sites (``site=None``: top-set counts compare
        across layers, as every layer keeps the same share). ``control=True``: the key neurons
        under permuted labels. Columns ``class``, ``rank``, ``count``, ``frequency``,
        ``frequency_rest``, ``specificity``, ``mean_score``, indexed by ``(site, unit)``.

        Example:
            >>> import llmscope
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> from llmscope.analysis.key_neurons import key_neurons
            >>> res = key_neurons(model, stim, method="activation", units=["mlp.1"], k=3, progress=False)
            >>> res.units("DET", k=2)["rank"].tolist()
            [1, 2]
        """
        classes = self.meta["classes"]
        if category not in classes:
            raise AnalysisError.Unknown(f"class {category!r} is not a value of {self.meta['label']!r} here; "
                                        f"the classes are {classes}.")
        if site is not None and site not in self.meta["sites"]:
            raise SiteError.Unknown(f"site {site!r} was not scored; the scored sites are {self.meta['sites']} "
                                    "(or None: all).")
        k = self.meta["k"] if k is None else count(k, "k")
        suffix = "_control" if flag(control, "control") else ""
        d = self.data
        rows = np.arange(d.sizes["unit"]) if site is None else np.flatnonzero(d["site"].values == site)
        ranked = _ranking(rows, d[f"count{suffix}"].values, d[f"mean_score{suffix}"].values,
                          d["n_samples"].values, classes.index(category), k)
        pos = ranked.pop("pos")
        index = pd.MultiIndex.from_arrays([d["site"].values[pos], d["index"].values[pos]], names=["site", "unit"])
        out = pd.DataFrame({"class": category, **ranked}, index=index)
        out.attrs.update(self.df.attrs)
        return out

    def plot(self) -> "go.Figure":
        """A classes x sites heatmap: the mean specificity of each class's ``k`` key neurons in
        each site, the control (permuted labels) in the hover."""
        import plotly.graph_objects as go

        d, k = self.data, self.meta["k"]
        sites, classes = self.meta["sites"], self.meta["classes"]

        def grid(suffix: str) -> np.ndarray:
            key = d[f"rank{suffix}"].values <= k
            spec = np.where(key, d[f"specificity{suffix}"].values, 0.0)
            return np.stack([spec[d["site"].values == s].sum(0) / key[d["site"].values == s].sum(0)
                             for s in sites], 1)  # [classes, sites]

        fig = go.Figure(go.Heatmap(
            z=grid(""), x=sites, y=[str(c) for c in classes], customdata=grid("_control"),
            colorscale="Viridis", colorbar=dict(title="specificity"),
            hovertemplate="%{y} @ %{x}<br>specificity %{z:.3f}<br>permuted labels %{customdata:.3f}<extra></extra>"))
        return fig.update_layout(
            title=(f"key neurons ({self.meta['method']}, k={k}): in-class minus out-of-class "
                   f"frequency in the top {self.meta['top_frac']:.0%}"),
            xaxis_title="site", yaxis_title=f"{self.meta['label']} of the {self.meta['label_of']} token",
            xaxis_type="category", yaxis_type="category")


@renamed(sites="units")
def key_neurons(model: "TransformerBridge", stimuli: Stimuli, label: str = "pos_tag", method: str = "ig", *,
                units: UnitsLike = None, top_frac: float = 0.05, k: int = 100, label_of: str = "next",
                steps: int = 64, batch_size: int = 16, include_bos: bool = False, seed: int = SHUFFLE_SEED,
                progress: bool = True) -> KeyNeurons:
    """The key MLP neurons of every class of ``label`` (runs the model: forward and backward passes).

    Args:
        model: the model (left unchanged: hooks are removed and weights never touched).
        stimuli: token sequences with a categorical ``label`` column (``pos_tag``...).
        label: the class of a sample is this column's value at the ``label_of`` token.
        method: ``"ig"`` (Integrated Gradients, ``steps`` Gauss-Legendre points per sample and
            layer), ``"grad_x_act"`` or ``"activation"`` (see the module docstring).
        units: whole MLP sites to score (``"mlp.L"`` or a list of them); None scores every layer.
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
        SiteError: a site that is not ``mlp.L``, or part of one.

    Example:
        >>> import llmscope
        >>> from llmscope import key_neurons
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> res = key_neurons(model, stim, method="ig", units=["mlp.1"], k=10, steps=16, progress=False)
        >>> res.meta["completeness_error"] < 0.05, len(res.units("NOUN"))
        (True, 10)
    """
    import xarray as xr

    if label_of not in LABEL_OF:
        raise AnalysisError.Unknown(f"label_of must be one of {list(LABEL_OF)} (the predicted token, or the token the "
                                    f"neurons sit on); got {label_of!r}.")
    top_frac = fraction(top_frac, "top_frac")
    k = count(k, "k")
    seed = count(seed, "seed", minimum=0)
    trials.column(stimuli.tokens if isinstance(stimuli, Stimuli) else pd.DataFrame(), label, "label column")
    targets = _check(model, stimuli, method, units, steps, batch_size, include_bos, progress)
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
    ends = np.cumsum([s.n_units for s in targets])
    per_site = [slice(end - s.n_units, end) for s, end in zip(targets, ends)]
    n = np.bincount(codes, minlength=len(classes))
    arrays = {}
    for suffix, key in (("", "real"), ("_control", "control")):
        counts, scores = tally.arrays(key, n)
        arrays |= {f"count{suffix}": counts, f"mean_score{suffix}": scores,
                   f"rank{suffix}": _ranks(counts, scores, per_site),
                   f"specificity{suffix}": _specificity(counts, n)[2]}
    frequency, rest, specificity = _specificity(arrays["count"], n)
    best, rows = specificity.argmax(1), np.arange(len(index))
    key = arrays["rank"] <= k
    df = pd.DataFrame({"preferred": classes[best], "rank": arrays["rank"][rows, best],
                       "count": arrays["count"][rows, best], "frequency": frequency[rows, best],
                       "frequency_rest": rest[rows, best], "specificity": specificity[rows, best],
                       "specificity_control": arrays["specificity_control"].max(1),
                       "mean_score": arrays["mean_score"][rows, best],
                       "key_for": [", ".join(map(str, classes[hit])) for hit in key]}, index=index)
    data = xr.Dataset({name: (("unit", "class"), value) for name, value in arrays.items()}
                      | {"n_samples": ("class", n)}, coords=_unit_coords(index) | {"class": classes.to_numpy()})
    meta = dict(_meta(model, stimuli, targets, method, steps, include_bos, samples, errors), label=label,
                label_of=label_of, classes=classes.tolist(), top_frac=top_frac, n_top=n_top, k=k, seed=seed,
                control="labels permuted across samples (class sizes kept), one permutation for all sites")
    return KeyNeurons(df, meta, data)


__all__ = ["key_neurons", "KeyNeurons", "attributions", "Attributions", "check_separation"]
