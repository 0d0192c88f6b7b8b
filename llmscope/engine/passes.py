"""Partial forward passes of a TransformerLens bridge: start at a block, stop before the unembedding.

Experiments that run the model many times (lesions, key-neuron attribution) spend most of a
plain pass on work that cannot change: the blocks below the first one a lesion or an attribution
touches, and the unembedding of rows nobody scores. These pieces let them skip it, exactly;
:mod:`llmscope.engine.routes` checks each once per model against a plain pass, and the engine
takes the plain way where one does not reproduce it.

* :func:`from_block` runs only blocks ``layer..`` (TransformerLens's ``start_at_layer`` swaps
  the given residual in, but the bridge still runs the blocks below it on the input);
* :func:`run_from` runs one pass from the tokens or from the residual entering a block, with
  hooks, and returns the residual entering ``ln_final`` (``stop=True``) or the logits;
* :func:`readout` maps that residual to logits, position by position, so a caller unembeds only
  the rows it reads;
* :func:`rank_one_readout` gives the logits of many copies of that residual, each with one
  direction taken out (a lesioned neuron of the last block), unembedding the rows once;
* :func:`fused_activations` runs HF's five-op tanh GELU (GPT-2's) as torch's fused one.

Example:
    >>> import torch
    >>> import llmscope
    >>> from llmscope.engine.passes import readout, run_from
    >>> model = llmscope.load("grammar-2l")
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


TANH_GELUS = ("NewGELUActivation", "FastGELUActivation")  # transformers' tanh GELUs written out in Python


@contextmanager
def fused_activations(model: "TransformerBridge") -> Iterator[int]:
    """For the duration, every tanh-approximation GELU that transformers writes out in Python
    (:data:`TANH_GELUS`: ``gelu_new``, GPT-2's, and ``gelu_fast``; five elementwise passes) runs
    as ``torch.nn.GELU(approximate="tanh")``: the same function in one pass, equal to float
    rounding (2.4e-7 on standard normal inputs) and twice as fast, which is a sixth of an MLP
    block on a small model. Yields how many were swapped; a module with PyTorch hooks of its
    own is left alone. Always put back, even on error.

    Example:
        >>> import torch
        >>> import llmscope
        >>> from llmscope.engine.passes import fused_activations
        >>> model = llmscope.load("grammar-2l")
        >>> ids = torch.tensor([[1, 5, 9, 4]])
        >>> with torch.no_grad():
        ...     plain = model(ids)
        ...     with fused_activations(model) as n:
        ...         fused = model(ids)
        >>> n == model.cfg.n_layers, torch.allclose(plain, fused, atol=1e-4)
        (True, True)
    """
    swapped = []
    for parent in model.original_model.modules():
        for name, child in parent.named_children():
            if type(child).__name__ in TANH_GELUS and not (child._forward_hooks or child._forward_pre_hooks):
                swapped.append((parent, name, child))
    try:
        for parent, name, _ in swapped:
            setattr(parent, name, torch.nn.GELU(approximate="tanh"))
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def readout(model: "TransformerBridge") -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Residual entering ``ln_final`` -> logits, position by position, or None for a model
    without that hook (its passes can only return logits)."""
    if FINAL not in model.hook_dict or not hasattr(model, "ln_final") or not hasattr(model, "unembed"):
        return None
    return lambda resid: model.unembed(model.ln_final(resid))


def _final_norm(ln: Any) -> tuple[bool, torch.Tensor, torch.Tensor | None, float] | None:
    """(centres, weight, bias or None, eps) of the final norm as the bridge runs it: its own
    LayerNorm/RMSNorm in Python, or the HF module's (``torch.nn.LayerNorm``, or an RMSNorm with
    ``variance_epsilon`` as Llama's); None for any other."""
    hf, config = getattr(ln, "original_component", None), getattr(ln, "config", None)
    if not getattr(ln, "use_native_layernorm_autograd", False) and not getattr(config, "layer_norm_folding", False):
        if not all(hasattr(ln, a) for a in ("uses_rms_norm", "uses_weight_offset", "weight")):
            return None
        rms = bool(ln.uses_rms_norm)
        weight = (1.0 + ln.weight) if ln.uses_weight_offset else ln.weight
        return not rms, weight, None if rms else getattr(hf, "bias", None), float(getattr(config, "eps", 1e-5))
    if isinstance(hf, torch.nn.LayerNorm):
        return True, hf.weight, hf.bias, float(hf.eps)
    if hasattr(hf, "variance_epsilon") and isinstance(getattr(hf, "weight", None), torch.Tensor):
        return False, hf.weight, None, float(hf.variance_epsilon)
    return None


def rank_one_readout(model: "TransformerBridge") -> Callable[[torch.Tensor], Callable] | None:
    """Logits of many copies of residuals entering ``ln_final``, each with one direction taken
    out, without an unembedding per copy: ``prepare(r [..., d])`` returns
    ``read(at, a [k, n], w [k, d]) -> logits [k, n, d_vocab]``, the logits of the rows
    ``r[at]`` (``n`` of them) less ``a[j][:, None] * w[j]`` in copy ``j``.

    The final norm's centring and weight and the unembedding are linear, so the logits are
    ``(P - a * Q) / scale + c``, with ``P`` the unembedded rows of ``r`` (computed once, by
    ``prepare``) and ``Q`` those of ``w``; only the norm's scale depends on ``a``, and it has a
    closed form. None for a model whose ``ln_final`` is not a LayerNorm or an RMSNorm
    :func:`_final_norm` knows (a caller checks the result against :func:`readout` once, as for
    every shortcut here).

    Example:
        >>> import torch
        >>> import llmscope
        >>> from llmscope.engine.passes import rank_one_readout, readout
        >>> model = llmscope.load("grammar-2l")
        >>> r, w, a = torch.randn(4, model.cfg.d_model), torch.randn(2, model.cfg.d_model), torch.randn(2, 4)
        >>> with torch.no_grad():
        ...     got = rank_one_readout(model)(r)(torch.arange(4), a, w)
        ...     want = torch.stack([readout(model)(r - a[j][:, None] * w[j]) for j in range(2)])
        >>> torch.allclose(got, want, atol=1e-4)
        True
    """
    norm = _final_norm(getattr(model, "ln_final", None))
    if readout(model) is None or norm is None:
        return None
    centre, weight, bias, eps = norm
    unembed = model.unembed

    def prepare(r: torch.Tensor) -> Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]:
        r = r.float()
        zero = unembed(torch.zeros_like(r.reshape(-1, r.shape[-1])[:1]))
        shift = zero if bias is None else unembed(bias.float()[None])
        if centre:
            r = r - r.mean(-1, keepdim=True)
        p, r_squared = unembed(r * weight) - zero, (r * r).sum(-1)

        def read(at: Any, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            rows, a, w = r[at], a.float(), w.float()
            if centre:
                w = w - w.mean(-1, keepdim=True)
            q = unembed(w * weight) - zero  # [k, V]
            square = (r_squared[at] - 2 * a * (w @ rows.T) + a * a * (w * w).sum(-1, keepdim=True)) / r.shape[-1]
            out = torch.addcmul(p[at], a[..., None], q[:, None], value=-1.0)  # [k, n, V]: P - a Q, one pass
            return out.div_((square + eps).sqrt_()[..., None]).add_(shift)

        return read

    return prepare


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


__all__ = ["FINAL", "TANH_GELUS", "layer_list", "from_block", "fused_activations", "readout", "rank_one_readout",
           "run_from"]
