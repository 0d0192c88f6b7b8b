"""The one per-model cache: what the engine learns about a model once, kept while its weights stay.

Route verdicts, an MLP's output weights, hook names, attention scales: each is worked out on
first use and kept for the model under a name (:func:`memo`). The cache is keyed by the model
object itself (a ``WeakKeyDictionary``: nothing is kept alive for a model that is gone) and tied
to its weights: when :func:`llmscope.identity.fingerprint` reports other weights (a parameter
changed in place), everything kept for the model is dropped and worked out again.

Example:
    >>> import llmscope
    >>> from llmscope.engine import forget, memo
    >>> model = llmscope.load("grammar-2l")
    >>> kept = memo(model, "example")
    >>> kept["answer"] = 42
    >>> memo(model, "example")["answer"]
    42
    >>> forget(model)
    >>> "answer" in memo(model, "example")
    False
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from llmscope import identity

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_KEPT: "weakref.WeakKeyDictionary[Any, tuple[str, dict[str, dict]]]" = weakref.WeakKeyDictionary()


def memo(model: "TransformerBridge", name: str) -> dict:
    """The dict kept for ``model`` under ``name``, empty at first and again after the model's
    weights change."""
    weights = identity.fingerprint(model).weights
    held = _KEPT.get(model)
    if held is None or held[0] != weights:
        held = _KEPT[model] = (weights, {})
    return held[1].setdefault(name, {})


def forget(model: "TransformerBridge") -> None:
    """Drop everything kept for ``model`` (the next use works it out again)."""
    _KEPT.pop(model, None)


__all__ = ["memo", "forget"]
