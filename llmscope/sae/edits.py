"""Interventions on features: lesion, gain and steer an SAE's features, or splice the SAE in.

A feature edit changes the site's activation only along the edited features' decoder rows,
and keeps the SAE's reconstruction error:

    x' = decode(f') + (x - decode(f)) = x + (f' - f) @ W_dec

where ``f = encode(x)`` and ``f'`` is ``f`` with the edited features changed (``0`` for a
lesion, ``factor * f_i`` for a gain, ``f_i + alpha`` for steering). Only the difference is
added, so a feature that is not changed (gain 1, steer 0, a lesioned feature that is silent at
a token) leaves ``x`` bit for bit as it was. :class:`splice` is the other thing: the site's
activation *replaced* by the SAE's reconstruction (error dropped), as in CE loss recovered.

The first ``bos`` positions of every sequence (the BOS llmscope's stimuli begin with) are left
as they are: SAEs are trained without BOS rows.

Each is an :class:`~llmscope.interventions.Intervention`: apply it with ``intervene``.

Example:
    >>> from llmscope.sae.train import train_sae
    >>> sae = train_sae(rec, "mlp.0", width=1024, k=8, epochs=1, progress=False)
    >>> with intervene(model, lesion_features(sae, [3, 7]), gain_features(sae, [5], factor=2.0)):
    ...     logits = model(stim.ids)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from llmscope.checks import count, number
from llmscope.errors import InterventionError, SiteError
from llmscope.interventions import Intervention
from llmscope.sae.model import SAE

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

    def __init__(self, sae: SAE, bos: int = 1):
        if not isinstance(sae, SAE):
            raise InterventionError.Type(f"feature interventions take an llmscope SAE; got {type(sae).__name__}.")
        self.sae, self.bos = sae, count(bos, "bos", 0, None, InterventionError)

    def _hook(self, model: "TransformerBridge") -> str:
        self.sae.check_model(model, InterventionError)
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


class _FeatureEdit(_SAEIntervention):
    """Change some features' activations; the site moves by ``(f' - f) @ W_dec[features]``."""

    def __init__(self, sae: SAE, features: Any, bos: int = 1):
        super().__init__(sae, bos)
        try:
            self.features = torch.as_tensor(sae.check_features(features))
        except SiteError as exc:  # the same message, in the intervention's class and kind
            kind = (InterventionError.Range if isinstance(exc, IndexError) else
                    InterventionError.Type if isinstance(exc, TypeError) else InterventionError)
            raise kind(str(exc)) from None

    def _change(self, f: torch.Tensor) -> torch.Tensor:
        """``f' - f`` for the selected features ``f [..., n_sel]``."""
        raise NotImplementedError

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
    """Silence features: each one's contribution ``f_i W_dec[i]`` is taken out of the site."""

    def _change(self, f):
        return -f

    def __repr__(self) -> str:
        return f"lesion_features({self._name()})"


class gain_features(_FeatureEdit):
    """Multiply features by ``factor`` (0 = lesion, 1 = intact, > 1 = stimulate); settable
    between passes, like :class:`~llmscope.gain`'s."""

    factor = _Setting("gain factor")

    def __init__(self, sae: SAE, features: Any, factor: float = 1.0, bos: int = 1):
        super().__init__(sae, features, bos)
        self.factor = factor

    def _change(self, f):
        return f * (self.factor - 1.0)

    def __repr__(self) -> str:
        return f"gain_features({self._name()}, factor={self.factor})"


class steer_features(_FeatureEdit):
    """Add ``alpha`` to features' activations at every position: ``alpha * W_dec[i]`` is added
    to the site (alpha in the feature's own units, as if it fired that much more)."""

    alpha = _Setting("steering alpha")

    def __init__(self, sae: SAE, features: Any, alpha: float = 1.0, bos: int = 1):
        super().__init__(sae, features, bos)
        self.alpha = alpha

    def fwd_hooks(self, model):  # no encoding needed: the change does not depend on f
        hook = self._hook(model)
        direction = self.sae.W_dec.detach()[self.features].sum(0)
        return [(hook, self._edited(lambda x: x + (self.alpha * direction).to(x.dtype)))]

    def __repr__(self) -> str:
        return f"steer_features({self._name()}, alpha={self.alpha})"


class splice(_SAEIntervention):
    """Replace the site's activation by the SAE's reconstruction ``decode(encode(x))``."""

    def fwd_hooks(self, model):
        hook = self._hook(model)
        sae = self.sae

        def reconstruct(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return sae(x).to(x.dtype)

        return [(hook, self._edited(reconstruct))]

    def __repr__(self) -> str:
        return f"splice({self.sae.name})"


__all__ = ["lesion_features", "gain_features", "steer_features", "splice"]
