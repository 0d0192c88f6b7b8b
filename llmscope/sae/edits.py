"""Interventions on features: lesion, gain and steer an SAE's features, or splice the SAE in.

A feature edit changes the site's activation only along the edited features' decoder rows,
and keeps the SAE's reconstruction error:

    x' = decode(f') + (x - decode(f)) = x + (f' - f) @ W_dec

where ``f = encode(x)`` and ``f'`` is ``f`` with the edited features changed (``0`` for a
lesion, ``factor * f_i`` for a gain, ``f_i + alpha`` for steering). Only the difference is
added, so a feature that is not changed (gain 1, steer 0, a lesioned feature that is silent at
a token) leaves ``x`` bit for bit as it was. :class:`splice` is the other thing: the site's
activation *replaced* by the SAE's reconstruction (error dropped), as in CE loss recovered.

The first ``n_bos`` positions of every sequence (the BOS llmscope's stimuli begin with) are
left as they are: SAEs are trained without BOS rows.

Features are units: an edit takes them as any unit intervention does (``lesion(units, indices)``),
named by the features' site ``"sae:<site>"`` — ``("sae:mlp.0", [3, 7])``, ``"sae:mlp.0", [3, 7]``,
or a unit table such as ``tuning(features_recording, "sae:mlp.0", "pos_tag").top(3)`` — or as bare
feature indices (``[3, 7]``).

Each is an :class:`~llmscope.interventions.Intervention`: apply it with ``intervene``.

Example:
    >>> import llmscope
    >>> from llmscope import intervene
    >>> from llmscope.sae import gain_features, lesion_features
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> from llmscope.sae.train import train_sae
    >>> sae = train_sae(rec, "mlp.0", width=1024, k=8, epochs=1, progress=False)
    >>> with intervene(model, lesion_features(sae, [3, 7]), gain_features(sae, "sae:mlp.0", [5], factor=2.0)):
    ...     logits = model(stim.ids)
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, Callable

import torch

import numpy as np

from llmscope import identity
from llmscope.checks import count, number
from llmscope.errors import InterventionError, SiteError
from llmscope.interventions import Intervention
from llmscope.sae.model import SAE
from llmscope.sites import Site, UnitsLike, bound_model, parse_units
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge import TransformerBridge


class _Setting:
    """A finite number an edit reads at each pass, settable between passes (a slider's value)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj: Any, value: float) -> None:
        setattr(obj, self.attr, number(value, self.what, error=InterventionError))


class _SAEIntervention(Intervention):
    """An intervention at an SAE's site, checked against the model before any hook."""

    def __init__(self, sae: SAE, n_bos: int = 1):
        if not isinstance(sae, SAE):
            raise InterventionError.Type(f"feature interventions take an llmscope SAE; got {type(sae).__name__}.")
        self.sae, self.bos = sae, count(n_bos, "n_bos", 0, None, InterventionError)
        self.bound = None  # the model a unit table of features was measured on, if it says

    def _hook(self, model: "TransformerBridge") -> str:
        self.sae._check_model(model, InterventionError)
        identity.check(self.bound, model, "these features", "arch", InterventionError,
                       "Take the features from an analysis of this model's recording.")
        if self.sae.hook not in model.hook_dict:
            raise InterventionError.Unknown(f"the SAE's hook {self.sae.hook!r} is not a hook of this model.")
        return self.sae.hook

    def _edited(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        """A hook applying ``fn`` to the positions after the first ``bos``."""
        bos = self.bos

        def hook_fn(act: torch.Tensor, hook: "HookPoint") -> torch.Tensor:
            if act.shape[-1] != self.sae.d_in:
                raise InterventionError(f"the SAE reads {self.sae.d_in} values per token; {hook.name} "
                                        f"gives {act.shape[-1]}.")
            if bos == 0:
                return fn(act)
            out = act.clone()  # never write into a tensor the model may hold elsewhere
            out[:, bos:] = fn(act[:, bos:])
            return out

        return hook_fn


def _is_indices(units: Any) -> bool:
    """Bare feature indices: an int, or a flat list / array of ints."""
    if isinstance(units, bool) or not isinstance(units, (int, np.integer, list, np.ndarray, torch.Tensor)):
        return False
    try:
        a = np.asarray(units)
    except ValueError:  # a ragged list: units of sites
        return False
    return a.dtype.kind in "iu" and a.ndim <= 1


def feature_indices(sae: SAE, units: UnitsLike, indices: Any = None) -> np.ndarray:
    """The SAE's feature indices named by ``units`` (and ``indices``): bare indices, or units of the
    site ``sae.name`` in any form a unit intervention takes; a SiteError otherwise."""
    if _is_indices(units):
        if indices is not None:
            raise SiteError.Type(f"feature indices are given once: as units ({units!r}) or after the site "
                                 f"{sae.name!r} as indices, not both.")
        return sae._indices(units)
    picked = []
    for spec, idx in parse_units(units, indices):
        name = spec.name if isinstance(spec, Site) else spec
        if name != sae.name:
            raise SiteError.Unknown(f"this SAE's features are the site {sae.name!r}; got units of {name!r}. Take "
                                    f"units from an analysis of its features (record_features), or give feature indices.")
        picked.append(sae._indices(idx))
    return np.unique(np.concatenate(picked))


class _FeatureEdit(_SAEIntervention):
    """Change some features' activations; the site moves by ``(f' - f) @ W_dec[features]``."""

    def __init__(self, sae: SAE, units: UnitsLike, indices: Any = None, n_bos: int = 1):
        super().__init__(sae, n_bos)
        try:
            self.features = torch.as_tensor(feature_indices(sae, units, indices))
        except SiteError as exc:  # the same message, in the intervention's class and kind
            kind = (InterventionError.Range if isinstance(exc, IndexError) else
                    InterventionError.Type if isinstance(exc, TypeError) else
                    InterventionError.Unknown if isinstance(exc, KeyError) else InterventionError)
            raise kind(str(exc)) from None
        self.bound = bound_model(units)

    @abstractmethod
    def _change(self, f: torch.Tensor) -> torch.Tensor:
        """``f' - f`` for the selected features ``f [..., n_sel]`` (each edit defines it)."""

    def fwd_hooks(self, model):
        hook = self._hook(model)
        w = self.sae.W_dec.detach()[self.features]
        sae, idx = self.sae, self.features

        def edit(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                f = sae.encode(x)[..., idx]
            return x + (self._change(f) @ w).to(x.dtype)

        return [(hook, self._edited(edit))]

    def _name(self) -> str:
        return f"{self.sae.name}, {self.features.tolist()}"


class lesion_features(_FeatureEdit):
    """Silence features: each one's contribution ``f_i W_dec[i]`` is taken out of the site.

    Args:
        sae: the SAE whose features are edited.
        units: the features: ``"sae:<site>"`` with ``indices``, a unit table of that site (such as
            ``tuning(...).top(3)`` on a recording of the features), or bare feature indices.
        indices: feature indices after the site name.
        n_bos: leading positions of each sequence left as they are (the BOS).
    """

    @renamed(features="units", bos="n_bos")
    def __init__(self, sae: SAE, units: UnitsLike, indices: Any = None, *, n_bos: int = 1):
        super().__init__(sae, units, indices, n_bos)

    def _change(self, f):
        return -f

    def __repr__(self) -> str:
        return f"lesion_features({self._name()})"


class gain_features(_FeatureEdit):
    """Multiply features by ``factor`` (0 = lesion, 1 = intact, > 1 = stimulate); settable
    between passes, like :class:`~llmscope.gain`'s."""

    factor = _Setting("gain factor")

    @renamed(features="units", bos="n_bos")
    def __init__(self, sae: SAE, units: UnitsLike, indices: Any = None, *, factor: float = 1.0, n_bos: int = 1):
        super().__init__(sae, units, indices, n_bos)
        self.factor = factor

    def _change(self, f):
        return f * (self.factor - 1.0)

    def __repr__(self) -> str:
        return f"gain_features({self._name()}, factor={self.factor})"


class steer_features(_FeatureEdit):
    """Add ``alpha`` to features' activations at every position: ``alpha * W_dec[i]`` is added
    to the site (alpha in the feature's own units, as if it fired that much more)."""

    alpha = _Setting("steering alpha")

    @renamed(features="units", bos="n_bos")
    def __init__(self, sae: SAE, units: UnitsLike, indices: Any = None, *, alpha: float = 1.0, n_bos: int = 1):
        super().__init__(sae, units, indices, n_bos)
        self.alpha = alpha

    def _change(self, f: torch.Tensor) -> torch.Tensor:
        return torch.full_like(f, self.alpha)

    def fwd_hooks(self, model):  # no encoding needed: the change does not depend on f
        hook = self._hook(model)
        direction = self.sae.W_dec.detach()[self.features].sum(0)
        return [(hook, self._edited(lambda x: x + (self.alpha * direction).to(x.dtype)))]

    def __repr__(self) -> str:
        return f"steer_features({self._name()}, alpha={self.alpha})"


class splice(_SAEIntervention):
    """Replace the site's activation by the SAE's reconstruction ``decode(encode(x))``."""

    @renamed(bos="n_bos")
    def __init__(self, sae: SAE, *, n_bos: int = 1):
        super().__init__(sae, n_bos)

    def fwd_hooks(self, model):
        hook = self._hook(model)
        sae = self.sae

        def reconstruct(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return sae(x).to(x.dtype)

        return [(hook, self._edited(reconstruct))]

    def __repr__(self) -> str:
        return f"splice({self.sae.name})"


__all__ = ["lesion_features", "gain_features", "steer_features", "splice", "feature_indices"]
