"""Partial forward passes of a TransformerLens bridge: start at a block, stop before the unembedding.

Experiments that run the model many times (the lesion atlas, key-neuron attribution) spend most
of a plain pass on work that cannot change: the blocks below the first one a lesion or an
attribution touches, and the unembedding of rows nobody scores. These three pieces let them skip
it, exactly; each caller checks once, against a plain pass, that the shortcut reproduces it on
its model, and falls back to plain passes where it does not.

* :func:`from_block` runs only blocks ``layer..`` (TransformerLens's ``start_at_layer`` swaps
  the given residual in, but the bridge still runs the blocks below it on the input);
* :func:`run_from` runs one pass from the tokens or from the residual entering a block, with
  hooks, and returns the residual entering ``ln_final`` (``stop=True``) or the logits;
* :func:`readout` maps that residual to logits, position by position, so a caller unembeds only
  the rows it reads.

Example:
    >>> ids = torch.tensor([[1, 5, 9, 4]])
    >>> with torch.no_grad():
    ...     logits, cache = model.run_with_cache(ids, names_filter="blocks.1.hook_resid_pre")
    ...     resumed = run_from(model, cache["blocks.1.hook_resid_pre"], 1, [], stop=True)
    ...     same = torch.allclose(readout(model)(resumed), logits, atol=1e-5)
    >>> same
    True
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FINAL = "ln_final.hook_in"  # where a stopped pass ends: the residual the unembedding reads


class _Stopped(Exception):
    """Raised by the hook on ``ln_final``'s input: the pass ends there (the bridge's own
    ``stop_at_layer`` stops blocks the same way)."""


def layer_list(model: "TransformerBridge") -> tuple[torch.nn.Module, str] | None:
    """The HF module and attribute holding the model's blocks (``transformer.h``, ``model.layers``...),
    or None when no module list of the HF model holds exactly the bridge's blocks."""
    blocks = list(model.blocks)
    for name, mod in model.original_model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == len(blocks) and all(a is b for a, b in zip(mod, blocks)):
            parent, _, attr = name.rpartition(".")
            return model.original_model.get_submodule(parent), attr
    return None


@contextmanager
def from_block(model: "TransformerBridge", layer: int) -> Iterator[None]:
    """Run only blocks ``layer..`` of the HF model for the duration: the layer list is cut, and
    always put back."""
    parent, attr = layer_list(model)
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(full)[layer:]))
    try:
        yield
    finally:
        setattr(parent, attr, full)


def readout(model: "TransformerBridge") -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Residual entering ``ln_final`` -> logits, position by position, or None for a model
    without that hook (its passes can only return logits)."""
    if FINAL not in model.hook_dict or not hasattr(model, "ln_final") or not hasattr(model, "unembed"):
        return None
    return lambda resid: model.unembed(model.ln_final(resid))


def run_from(model: "TransformerBridge", x: torch.Tensor, layer: int, hooks: list, stop: bool) -> torch.Tensor:
    """One pass with ``hooks`` (``(name, fn)`` pairs, removed on exit, even on error): from the
    tokens ``x`` (``layer`` 0) or resumed at block ``layer`` from the residual ``x`` entering it
    (``layer == n_layers``: ``x`` is already the last residual and is returned as it is).
    Returns the residual entering ``ln_final`` if ``stop``, else the logits."""
    if layer == model.cfg.n_layers:
        return x
    held: list[torch.Tensor] = []

    def grab(act: torch.Tensor, hook: Any) -> None:
        held.append(act)
        raise _Stopped

    try:
        with model.hooks(fwd_hooks=[*hooks, *([(FINAL, grab)] if stop else [])]):
            if layer == 0:
                return model(x, return_type="logits")
            with from_block(model, layer):
                return model(x, start_at_layer=layer, return_type="logits")
    except _Stopped:
        return held[0]


__all__ = ["FINAL", "layer_list", "from_block", "readout", "run_from"]
