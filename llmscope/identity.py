"""Which model an object belongs to: a fingerprint of the model, and the one check that uses it.

Everything model-bound (a :class:`~llmscope.sites.Site`, :class:`~llmscope.stimuli.Stimuli`, a
recording, a mean-lesion reference, an activation cache, a result that carries units) keeps the
:class:`Fingerprint` of the model it was made with, and every entry point compares it with the
model it is given, at the level that matters:

==========  ============================================  ==========================================
level       what must agree                               who needs it
==========  ============================================  ==========================================
``arch``    layers, widths, heads, vocabulary size, ctx   sites, unit tables (shapes must fit)
``vocab``   the tokenizer's id -> string map              stimuli, batteries (ids must mean the same)
``weights`` a strided sample of every parameter tensor    recordings, references, caches (values)
==========  ============================================  ==========================================

The weight hash samples at most ``SAMPLE`` evenly spaced values of every distinct parameter
storage, in the order the model's modules hold them (a view such as the bridge's split q/k/v of
GPT-2's fused ``c_attn`` is hashed once, as its whole storage), so the same weights give the same
print through another back end that holds the Hugging Face modules (nnsight), two training
checkpoints of one model differ, and any change to a whole tensor is seen. It is cached on the
model and recomputed when a parameter is modified in place (PyTorch's version counters: an
optimizer step, ``copy_``, ``load_state_dict``).

Example:
    >>> import llmscope
    >>> from llmscope.identity import check, fingerprint
    >>> model = llmscope.load("grammar-2l")
    >>> fp = fingerprint(model)
    >>> fp.name, fp == fingerprint(model)
    ('grammar-2l', True)
    >>> check(fp, model, "this recording", "weights")  # same model: no error
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from llmscope.errors import LLMScopeError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SAMPLE = 4096  # values hashed per parameter storage
DIMS = ("n_layers", "d_model", "d_mlp", "n_heads", "d_head", "d_vocab", "n_ctx")
Level = Literal["arch", "vocab", "weights"]
LEVELS: tuple[str, ...] = ("arch", "vocab", "weights")


@dataclass(frozen=True)
class Fingerprint:
    """Who a model is, at three levels (each a short hex digest) plus its zoo name.

    Attributes:
        name: the model's name (``model.cfg.model_name``: ``"grammar-2l"``, ``"smollm2-135m"``).
        arch: a hash of its dimensions (``DIMS``).
        vocab: a hash of its tokenizer's vocabulary.
        weights: a hash of a strided sample of every parameter tensor.
    """

    name: str
    arch: str
    vocab: str
    weights: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict (stored in recordings and saved results)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Fingerprint | None":
        """The fingerprint stored as ``data``, or None if ``data`` is not one (an older format)."""
        if isinstance(data, dict) and all(isinstance(data.get(k), str) for k in ("name", *LEVELS)):
            return cls(**{k: data[k] for k in ("name", *LEVELS)})
        return None

    def short(self) -> str:
        return f"{self.name} (weights {self.weights[:8]})"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:16]


def _module(model: Any) -> torch.nn.Module:
    """The module that holds the weights: the bridge's original HF model, or the model itself."""
    return getattr(model, "original_model", model)


def _storages(module: torch.nn.Module) -> list[torch.Tensor]:
    """One tensor per distinct parameter storage, the largest view of it, in first-seen order."""
    best: dict[int, torch.Tensor] = {}
    for p in module.parameters():
        key = p.untyped_storage().data_ptr()
        if key not in best or p.numel() > best[key].numel():
            best[key] = p
    return list(best.values())


def _weights_hash(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for t in tensors:
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // SAMPLE)
            sample = flat[::step][:SAMPLE].to("cpu", torch.float32).contiguous().numpy()
            h.update(np.asarray(t.shape, dtype=np.int64).tobytes())
            h.update(sample.tobytes())
    return h.hexdigest()[:16]


def _vocab_hash(model: Any) -> str:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return "none"
    items = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return _digest("\x00".join(f"{i}\x01{s}" for s, i in items).encode("utf-8", "surrogatepass"))


def fingerprint(model: "TransformerBridge") -> Fingerprint:
    """The model's :class:`Fingerprint`, cached on it until a parameter is modified in place.

    Example:
        >>> import llmscope
        >>> from llmscope.identity import fingerprint
        >>> model = llmscope.load("grammar-2l")
        >>> fingerprint(model).arch == fingerprint(llmscope.load("grammar-2l")).arch
        True
    """
    memo = model.__dict__.get("_llmscope_fingerprint")
    if memo is not None and tuple(t._version for t in memo[0]) == memo[1]:
        return memo[2]
    tensors = _storages(_module(model))
    cfg = model.cfg
    dims = np.asarray([int(getattr(cfg, k)) for k in DIMS], dtype=np.int64)
    vocab = memo[2].vocab if memo is not None else _vocab_hash(model)
    fp = Fingerprint(str(cfg.model_name), _digest(dims.tobytes()), vocab, _weights_hash(tensors))
    model.__dict__["_llmscope_fingerprint"] = (tensors, tuple(t._version for t in tensors), fp)
    return fp


_LEVEL_TEXT = {"arch": "a model of another shape", "vocab": "a model with another vocabulary",
               "weights": "a model with other weights"}


def check(bound: "Fingerprint | None", model: "TransformerBridge | Fingerprint", what: str, level: Level,
          error: type[LLMScopeError] = LLMScopeError, remedy: str = "") -> None:
    """Raise ``error`` when ``what`` (made with the model printed ``bound``) cannot be used with
    ``model`` (a model, or the fingerprint of the one another object belongs to) because they
    differ at ``level``: the architecture (sites, units), the vocabulary (token ids) or the weights
    (activations). ``bound=None`` (an object that does not know its model) passes.

    Example:
        >>> import llmscope
        >>> from llmscope import LLMScopeError
        >>> from llmscope.identity import check, fingerprint
        >>> model = llmscope.load("grammar-2l")
        >>> smol = llmscope.load("smollm2-135m")
        >>> smol_fp = fingerprint(smol)
        >>> try:
        ...     check(smol_fp, model, "these stimuli", "vocab")
        ... except LLMScopeError as exc:
        ...     print(str(exc)[:66])
        these stimuli were made for smollm2-135m; this model is grammar-2l
    """
    if bound is None:
        return
    here = model if isinstance(model, Fingerprint) else fingerprint(model)
    if getattr(bound, level) == getattr(here, level):
        return
    differ = [lv for lv in LEVELS if getattr(bound, lv) != getattr(here, lv)]
    same_name = bound.name == here.name
    this = f"this model is {here.short() if same_name else here.name}"
    was = bound.short() if same_name else bound.name
    verb = "were" if what.split()[0] in ("these", "those") or what.endswith("s") else "was"
    why = _LEVEL_TEXT[differ[0] if level == "weights" else level]
    raise error(f"{what} {verb} made for {was}; {this} ({why}). "
                + (remedy or "Make them again with this model, or pass the model they were made with."))


__all__ = ["Fingerprint", "fingerprint", "check", "LEVELS", "SAMPLE"]
