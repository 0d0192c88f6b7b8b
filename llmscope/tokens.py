"""Prompts -> token batches, with the checks every entry point shares.

Example:
    >>> import llmscope
    >>> from llmscope.tokens import tokenize
    >>> smol = llmscope.load("smollm2-135m")
    >>> tokens = tokenize(smol, ["The cat sat", "A dog ran"])
    >>> tokens.shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Sequence

import torch

from llmscope.checks import flag
from llmscope.errors import PromptError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def check_tokens(model: "TransformerBridge", tokens: torch.Tensor, truncate: bool | None = None) -> torch.Tensor:
    """Validate a ``[batch, pos]`` token tensor against ``model``'s vocabulary and context.

    ``truncate`` is the caller's own option: with ``True`` a sequence longer than the context
    keeps its *last* ``n_ctx`` tokens (the ones nearest the prediction) and a warning says how
    many were dropped; ``False`` refuses it and the message offers ``truncate=True``; ``None``
    (a caller without that option) refuses it and says to shorten the input.

    Example:
        >>> import torch
        >>> import llmscope
        >>> from llmscope.tokens import check_tokens
        >>> model = llmscope.load("grammar-2l")
        >>> check_tokens(model, torch.tensor([[1, 5, 6]])).shape
        torch.Size([1, 3])
    """
    if not isinstance(tokens, torch.Tensor):
        raise PromptError.Type(f"tokens are a [batch, pos] tensor of integer ids, got {type(tokens).__name__}.")
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise PromptError.Type(f"token ids must be an integer tensor, got {tokens.dtype}: ids are not "
                               "rounded or cast; build them with model.to_tokens or tokenize(...).")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise PromptError(f"empty prompt: expected tokens of shape [batch, pos] with pos >= 1, got {tuple(tokens.shape)}.")
    n_ctx, n_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    bad = (tokens < 0) | (tokens >= n_vocab)
    if bad.any():
        seq, pos = (int(i) for i in bad.nonzero()[0])
        raise PromptError.Range(
            f"token id {int(tokens[seq, pos])} at sequence {seq}, position {pos} is not in this model's "
            f"vocabulary (ids 0..{n_vocab - 1}; {int(bad.sum())} bad id(s) in all): were these ids made by "
            f"another model's tokenizer? Tokenize the text with this model ({model.cfg.model_name}).")
    if tokens.shape[1] > n_ctx:
        if not truncate:
            fix = ("shorten it, or pass truncate=True to keep the last n_ctx tokens" if truncate is False
                   else "shorten it (or split it into several sequences)")
            raise PromptError.Range(f"a sequence is {tokens.shape[1]} tokens but the model's context is {n_ctx}: {fix}.")
        warnings.warn(f"prompt truncated to its last {n_ctx} of {tokens.shape[1]} tokens (the model's context).")
        tokens = tokens[:, -n_ctx:]
    return tokens


def tokenize(
    model: "TransformerBridge",
    prompt: str | Sequence[str] | torch.Tensor,
    truncate: bool = False,
    prepend_bos: bool | None = None,
) -> torch.Tensor:
    """Turn one prompt or a list of prompts into a checked ``[batch, pos]`` LongTensor.

    Prompts of different lengths are right-padded by the tokenizer. A tensor passes through
    :func:`check_tokens` unchanged. Empty prompts and prompts longer than the context raise
    :class:`PromptError` (or, with ``truncate=True``, keep their last ``n_ctx`` tokens).
    """
    truncate = flag(truncate, "truncate", PromptError)
    if prepend_bos is not None:
        flag(prepend_bos, "prepend_bos", PromptError)
    if isinstance(prompt, torch.Tensor):
        return check_tokens(model, prompt, truncate)
    if not isinstance(prompt, (str, list, tuple)):
        raise PromptError.Type(f"a prompt is a string, a list of strings or a token tensor; got {type(prompt).__name__}.")
    texts = [prompt] if isinstance(prompt, str) else list(prompt)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise PromptError.Type(f"prompts must be strings; got {type(bad[0]).__name__} {bad[0]!r}.")
    if not texts or any(not t.strip() for t in texts):
        raise PromptError("empty prompt: give at least one non-blank string.")
    tokens = model.to_tokens(texts, prepend_bos=prepend_bos, truncate=False)
    return check_tokens(model, tokens, truncate)
