"""Interventions: change a model's activations only inside a ``with`` block.

Four kinds, each a small object that is cheap to re-apply (a slider move makes a new one, or
sets ``.factor`` / ``.alpha`` on the old one, even inside the block):

* :class:`lesion` — silence units: ``mode="zero"``, ``"mean"`` (the unit's mean over a
  reference) or ``"resample"`` (its value at a random reference token, seeded);
* :class:`gain` — multiply units by a factor (microstimulation when ``factor > 1``);
* :class:`steer` — add ``alpha * vector`` at every position of a site;
* :class:`patch` — activation patching: put a source run's activations into the target run.

Units follow the one convention of :mod:`llmscope.sites`: ``lesion("mlp.1", [3, 7])``
(neurons), ``gain("attn.0", [2], factor=2.0)`` (heads: the head's ``hook_z`` slice), a list of
``(site, indices)`` pairs, or any table indexed by ``(site, unit)``, such as an analysis's
top units: ``lesion(tuning(rec, "mlp.0", "pos_tag").top(8))``.

:func:`intervene` validates every intervention against the model *before* attaching a hook,
then attaches them with TransformerLens's own ``model.hooks(...)`` context, which removes them
on exit, even on error. Weights are never touched. Each intervention also exposes TL-style
hooks, so ``model.run_with_hooks(tokens, fwd_hooks=gain(...).fwd_hooks(model))`` works as well.

Example:
    >>> import llmscope
    >>> from llmscope import gain, intervene, lesion
    >>> model = llmscope.load("grammar-2l")
    >>> tokens = model.to_tokens("the dog runs .")
    >>> with intervene(model, lesion("mlp.1", [3, 7]), gain("attn.0", [2], factor=2.0)):
    ...     logits = model(tokens)
    >>> logits.shape[:2]
    torch.Size([1, 5])
"""

from __future__ import annotations

import abc
import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch

from llmscope import checks, identity
from llmscope.checks import choice, finite, number
from llmscope.errors import InterventionError
from llmscope.recording import Recording, record
from llmscope.sites import Site, UnitsLike, parse_units, resolve_units, site, sites
from llmscope.stimuli.core import Stimuli, as_stimuli
from llmscope.tokens import tokenize

if TYPE_CHECKING:
    from transformer_lens import ActivationCache
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor]


class Intervention(abc.ABC):
    """A change to activations at one or more sites; apply it with :func:`intervene`."""

    @abc.abstractmethod
    def fwd_hooks(self, model: "TransformerBridge") -> list[tuple[str, HookFn]]:
        """Validate against ``model`` and return TL-style ``(hook name, fn)`` pairs (nothing attached)."""


# ---------------------------------------------------------------- units and references


def reference_pools(model: "TransformerBridge", reference: Any,
                    resolved: list[tuple[Site, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The reference activations of some units of ``model``, the values a mean or resample
    lesion puts in their place: ``hook -> [n_tokens, n_sel, ...]`` float32 per site.

    Args:
        model: the model the units belong to (a Recording made by another model is refused).
        reference: Stimuli (recorded here) or a Recording holding the sites (or anything with
            ``.sites`` and ``.responses(site, indices=...)``).
        resolved: ``(site, unit indices)`` pairs, the indices a 1-d integer tensor.

    Raises:
        InterventionError: a reference of another type or model, a site it lacks, responses of
            the wrong shape.

    Example:
        >>> import torch
        >>> import llmscope
        >>> from llmscope import site
        >>> from llmscope.interventions import reference_pools
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> pools = reference_pools(model, stim, [(site(model, "mlp.1"), torch.tensor([3, 7]))])
        >>> pools["blocks.1.mlp.hook_post"].shape[1:]
        torch.Size([2])
    """
    if isinstance(reference, Stimuli):
        reference = record(model, reference, [s for s, _ in resolved], dtype="float32", progress=False)
    if not (hasattr(reference, "responses") and hasattr(reference, "sites")):
        raise InterventionError.Type(f"reference must be a Recording or Stimuli, got {type(reference).__name__}.")
    if isinstance(reference, Recording):
        identity.check(reference.fingerprint, model, "the reference recording", "weights", InterventionError,
                       "Its means would not be this model's: record a reference with this model, or pass Stimuli.")
    have = set(map(str, reference.sites))
    pools = {}
    for s, idx in resolved:
        name = s.name if s.name in have else s.hook
        if name not in have:
            raise InterventionError.Unknown(
                f"the reference recording has no site {s.name!r} (it has {sorted(have)}); "
                f"record it first, e.g. record(model, stimuli, [{s.name!r}])."
            )
        pool = np.asarray(reference.responses(name, indices=idx.numpy()), dtype=np.float32)
        if pool.ndim < 2 or pool.shape[1:] != (len(idx), *s.shape[1:]) or len(pool) == 0:
            raise InterventionError(
                f"the reference responses of {s.name!r} have shape {pool.shape}; expected "
                f"[n_tokens >= 1, {', '.join(map(str, (len(idx), *s.shape[1:])))}] for units {idx.tolist()}."
            )
        finite(pool, f"the reference responses of {s.name}", units=idx.numpy(), error=InterventionError,
               fix="record the reference again (with dtype='float32' if float16 overflowed)")
        pools[s.hook] = torch.from_numpy(pool)
    return pools


class _PerModel:
    """Values computed once per model (reference statistics, source activations)."""

    def __init__(self) -> None:
        self._memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, model: "TransformerBridge", make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if model not in self._memo:
            self._memo[model] = make()
        return self._memo[model]


# ---------------------------------------------------------------- unit interventions


class _UnitIntervention(Intervention):
    """Replace the selected units' activations by new values (one hook per site)."""

    def __init__(self, units: UnitsLike, indices: Any = None):
        self.units = parse_units(units, indices)

    def fwd_hooks(self, model: "TransformerBridge") -> list[tuple[str, HookFn]]:
        resolved = [(s, torch.as_tensor(idx)) for s, idx in resolve_units(model, self.units)]
        new_values = self._value_fns(model, resolved)
        return [(s.hook, _replace_units(idx, fn)) for (s, idx), fn in zip(resolved, new_values)]

    @abc.abstractmethod
    def _value_fns(self, model: "TransformerBridge", resolved: list[tuple[Site, torch.Tensor]]) -> list[Callable]:
        """One ``fn(selected [batch, pos, n_sel, ...]) -> new values`` per resolved site."""

    def _units_repr(self) -> str:
        return ", ".join(f"({getattr(s, 'name', s)!r}, {'all' if idx is None else list(idx)})" for s, idx in self.units)


def _replace_units(idx: torch.Tensor, new: Callable[[torch.Tensor], Any]) -> HookFn:
    def hook_fn(act: torch.Tensor, hook: "HookPoint") -> torch.Tensor:
        out = act.clone()  # never write into a tensor the model may hold elsewhere
        out[:, :, idx] = torch.as_tensor(new(act[:, :, idx]), dtype=act.dtype)
        return out

    return hook_fn


class lesion(_UnitIntervention):
    """Silence units: set them to zero, to their reference mean, or to a resampled value.

    Args:
        units: a site (``"mlp.1"``, with ``indices``), a ``(site, indices)`` pair, a list of
            pairs, or a table indexed by ``(site, unit)`` (see :mod:`llmscope.sites`).
        indices: unit indices of the site named by ``units`` (None = all its units).
        mode: ``"zero"``; ``"mean"`` (each unit's mean over the reference tokens); or
            ``"resample"`` (at every position, all lesioned units of a site take their values
            from one random reference token; the draw is seeded at each ``with`` entry).
        reference: a Recording (holding the sites) or Stimuli (recorded once); required by
            ``"mean"`` and ``"resample"``, read once per model and remembered.
        seed: random seed of ``"resample"``.

    Example:
        >>> import llmscope
        >>> from llmscope import intervene, lesion
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> with intervene(model, lesion("mlp.1", [3], mode="mean", reference=stim)):
        ...     logits = model(stim.ids)
    """

    MODES = ("zero", "mean", "resample")

    def __init__(self, units: UnitsLike, indices: Any = None, *, mode: str = "zero", reference: Any = None,
                 seed: int = 0):
        super().__init__(units, indices)
        choice(mode, "lesion mode", self.MODES, InterventionError)
        if (mode == "zero") != (reference is None):
            need = "takes no reference" if mode == "zero" else "needs reference=Recording or Stimuli"
            raise InterventionError(f"lesion mode {mode!r} {need}.")
        self.mode, self.reference, self.seed = mode, reference, checks.seed(seed, "seed", InterventionError)
        self._ref = _PerModel()

    def _value_fns(self, model, resolved):
        if self.mode == "zero":
            return [lambda x: 0.0 for _ in resolved]
        pools = self._ref.get(model, lambda: reference_pools(model, self.reference, resolved))
        pools = {hook: pool.to(model.cfg.device) for hook, pool in pools.items()}
        if self.mode == "mean":
            return [_constant(pools[s.hook].mean(0)) for s, _ in resolved]
        gen = torch.Generator().manual_seed(self.seed)
        return [_resampler(pools[s.hook], gen) for s, _ in resolved]

    def __repr__(self) -> str:
        extra = "" if self.mode == "zero" else f", mode={self.mode!r}, reference=<{type(self.reference).__name__}>"
        return f"lesion({self._units_repr()}{extra})"


def _constant(value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: value


def _resampler(pool: torch.Tensor, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: pool[torch.randint(len(pool), x.shape[:2], generator=gen)]


class gain(_UnitIntervention):
    """Multiply units' activations by ``factor`` (``0`` = zero lesion, ``> 1`` = microstimulation).

    ``factor`` may be changed between forward passes, even inside the ``with`` block; a value
    that is not a finite number is refused when it is set.

    Example:
        >>> import llmscope
        >>> from llmscope import gain, intervene
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> g = gain("mlp.1", range(10), factor=2.0)
        >>> with intervene(model, g):
        ...     g.factor = 3.0
        ...     logits = model(stim.ids)
    """

    def __init__(self, units: UnitsLike, indices: Any = None, *, factor: float = 1.0):
        super().__init__(units, indices)
        self.factor = factor

    @property
    def factor(self) -> float:
        """The gain: 0 silences, 1 leaves intact, above 1 stimulates."""
        return self._factor

    @factor.setter
    def factor(self, value: float) -> None:
        self._factor = number(value, "gain factor", error=InterventionError)

    def _value_fns(self, model, resolved):
        return [lambda x: x * self.factor for _ in resolved]

    def __repr__(self) -> str:
        return f"gain({self._units_repr()}, factor={self.factor})"


# ---------------------------------------------------------------- steering and patching


class steer(Intervention):
    """Add ``alpha * vector`` to a site's activation at every position.

    Args:
        site: e.g. ``"resid.3"``; ``vector`` has the site's per-token shape (``d_model`` for a
            residual site, ``(n_heads, d_head)`` for ``attn.L``).
        vector: array-like of that shape.
        alpha: scale; may be changed between forward passes.

    Example:
        >>> import torch
        >>> import llmscope
        >>> from llmscope import intervene, steer
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> direction = torch.randn(model.cfg.d_model)
        >>> with intervene(model, steer("resid.1", direction, alpha=4.0)):
        ...     logits = model(stim.ids)
    """

    def __init__(self, site: str | Site, vector: Any, alpha: float = 1.0):
        self.site = site
        try:
            raw = vector.detach().cpu() if isinstance(vector, torch.Tensor) else vector
            self.vector = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        except (TypeError, ValueError):
            raise InterventionError.Type(f"a steering vector is an array of numbers, got {type(vector).__name__} "
                                         f"{str(vector)[:40]!r}.") from None
        self.alpha = alpha
        finite(self.vector.numpy()[None], "the steering vector", error=InterventionError,
               fix="give a vector of finite numbers")

    @property
    def alpha(self) -> float:
        """The steering strength; may be changed between forward passes (finite numbers only)."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self._alpha = number(value, "steering alpha", error=InterventionError)

    def fwd_hooks(self, model):
        s = site(model, self.site)
        if tuple(self.vector.shape) != s.shape:
            raise InterventionError(
                f"steering vector has shape {tuple(self.vector.shape)} but {s.name} has per-token shape {s.shape}."
            )
        vector = self.vector.to(model.cfg.device)

        def hook_fn(act: torch.Tensor, hook: "HookPoint") -> torch.Tensor:
            return act + (self.alpha * vector).to(act.dtype)

        return [(s.hook, hook_fn)]

    def __repr__(self) -> str:
        name = getattr(self.site, "name", self.site)
        return f"steer({name!r}, <vector {tuple(self.vector.shape)}>, alpha={self.alpha})"


Source = Union[str, Sequence[str], torch.Tensor, Stimuli, Mapping[str, torch.Tensor], "ActivationCache"]


class patch(Intervention):
    """Activation patching: the target run takes the source run's activations at ``sites``.

    Args:
        source: the run to copy from: a prompt or prompts, a ``[batch, pos]`` token tensor,
            Stimuli, or an activation cache (``hook name -> [batch, pos, ...]``) already run.
            Tokens are run once per model (``run_with_cache``) and remembered.
        sites: one site or a list (``"resid.3"``, ``["attn.1", "mlp.1"]``).
        positions: token positions to patch (negative counts from the source's end); None =
            all, and then target and source must have the same length. The target batch must
            match the source batch, or the source has batch 1 and is broadcast.

    Example:
        >>> import llmscope
        >>> from llmscope import intervene, patch
        >>> model = llmscope.load("grammar-2l")
        >>> with intervene(model, patch("the dog runs", "resid.2", positions=[2])):
        ...     logits = model(model.to_tokens("the dogs runs"))
    """

    def __init__(self, source: Source, sites: str | Site | Sequence[str | Site],
                 positions: int | Sequence[int] | None = None):
        self.source = source
        self.sites = sites
        self.positions = None if positions is None else np.atleast_1d(np.asarray(positions, dtype=object))
        pos = self.positions
        if pos is not None:
            if pos.size == 0 or pos.ndim != 1 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                                         for i in pos):
                raise InterventionError.Type(f"positions must be None or integer token positions, got {positions!r}.")
            self.positions = pos.astype(np.int64)
        self._acts = _PerModel()

    def _source_acts(self, model: "TransformerBridge", resolved: list[Site]) -> dict[str, torch.Tensor]:
        from transformer_lens import ActivationCache

        src = self.source
        if isinstance(src, (Mapping, ActivationCache)):
            return _cached(model, src, resolved)
        ids = as_stimuli(model, src, "patch's source").ids if isinstance(src, Stimuli) else tokenize(model, src)
        hooks = [s.hook for s in resolved]
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=hooks)
        return {h: cache[h] for h in hooks}

    def fwd_hooks(self, model):
        resolved = sites(model, self.sites)
        acts = self._acts.get(model, lambda: self._source_acts(model, resolved))
        return [(s.hook, self._patcher(s.name, acts[s.hook])) for s in resolved]

    def _patcher(self, name: str, src: torch.Tensor) -> HookFn:
        n_src, whole = src.shape[1], self.positions is None
        if whole:
            pos: slice | torch.Tensor = slice(None)
        else:
            bad = self.positions[(self.positions < -n_src) | (self.positions >= n_src)]
            if bad.size:
                raise InterventionError.Range(f"patch positions {bad.tolist()} are outside the source's 0..{n_src - 1}.")
            pos = torch.as_tensor(self.positions % n_src)

        def hook_fn(act: torch.Tensor, hook: "HookPoint") -> torch.Tensor:
            short = act.shape[1] != n_src if whole else act.shape[1] <= int(pos.max())
            if short or src.shape[0] not in (1, act.shape[0]):
                raise InterventionError(
                    f"cannot patch {name}: source activations are [batch {src.shape[0]}, pos {n_src}], "
                    f"the target run is [batch {act.shape[0]}, pos {act.shape[1]}]; "
                    "use equal lengths (or choose positions) and equal batches (or a source of batch 1)."
                )
            out = act.clone()
            out[:, pos] = src[:, pos].to(act.dtype)
            return out

        return hook_fn

    def __repr__(self) -> str:
        where = "all positions" if self.positions is None else f"positions={self.positions.tolist()}"
        return f"patch(<{type(self.source).__name__}>, {self.sites!r}, {where})"


def _cached(model: "TransformerBridge", cache: Any, resolved: list[Site]) -> dict[str, torch.Tensor]:
    """A source cache's activations at ``resolved``, checked before any hook: made by a model of
    this shape (an ActivationCache knows its model), present, ``[batch, pos, *site.shape]``, finite."""
    owner = getattr(cache, "model", None)
    if owner is not None and owner is not model:
        identity.check(identity.fingerprint(owner), model, "the source cache", "arch", InterventionError,
                       "Run the source through this model (pass the tokens or Stimuli as the source).")
    out = {}
    for s in resolved:
        if s.hook not in cache:
            raise InterventionError.Unknown(f"the source cache has no activations for {s.hook} ({s.name}); "
                                            f"cache that hook, e.g. model.run_with_cache(tokens, names_filter=[{s.hook!r}]).")
        act = cache[s.hook]
        if not isinstance(act, torch.Tensor) or act.ndim != 2 + len(s.shape) or tuple(act.shape[2:]) != s.shape:
            got = tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__
            raise InterventionError(f"the source cache's {s.hook} is {got}; this model's {s.name} needs "
                                    f"[batch, pos, {', '.join(map(str, s.shape))}]: was it cached from another model?")
        finite(act.detach().float().reshape(-1, *s.shape).cpu().numpy(), f"the source cache's {s.name}",
               error=InterventionError, fix="cache a run of this model with finite activations")
        out[s.hook] = act
    return out


# ---------------------------------------------------------------- applying


def _flatten(interventions: Iterable[Any]) -> list[Intervention]:
    out: list[Intervention] = []
    for iv in interventions:
        if isinstance(iv, Intervention):
            out.append(iv)
        elif isinstance(iv, (list, tuple)):
            out.extend(_flatten(iv))
        else:
            raise InterventionError.Type(
                f"intervene takes lesion(...), gain(...), steer(...) or patch(...) objects; got {type(iv).__name__}."
            )
    return out


@contextmanager
def intervene(model: "TransformerBridge",
              *interventions: Intervention | Sequence[Intervention]) -> Iterator["TransformerBridge"]:
    """Apply interventions to ``model`` inside a ``with`` block; the model is restored on exit.

    All interventions are validated (sites, units, references, sources) before any hook is
    attached, so a bad one leaves the model untouched. Several interventions compose in the
    order given; two on one site apply one after the other. Hooks are removed on exit, even
    when the block raises.

    Example:
        >>> import torch
        >>> import llmscope
        >>> from llmscope import intervene, lesion, steer
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> with intervene(model, lesion("mlp.0", [1, 2]), steer("resid.1", torch.ones(128), 2.0)) as m:
        ...     logits = m(stim.ids)
    """
    hooks = [pair for iv in _flatten(interventions) for pair in iv.fwd_hooks(model)]
    with model.hooks(fwd_hooks=hooks):
        yield model


__all__ = ["Intervention", "InterventionError", "intervene", "lesion", "gain", "steer", "patch", "reference_pools"]
