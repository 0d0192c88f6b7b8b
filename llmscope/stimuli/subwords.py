"""Words -> subword tokens: how word-level labels land on the tokens a model sees.

One policy serves every English paradigm (free text tagged by spaCy, templates with gold
tags, IOI names):

* the ids are exactly what ``model.to_tokens(text)`` gives, BOS (or whatever the model
  prepends) included; the prepended tokens belong to no word;
* every other token takes the word its characters overlap most, the first such word on a
  tie; a byte-level token's leading space overlaps no word, so ``" quick"`` is the word
  ``quick``;
* a token that overlaps no word at all (a lone ``" "`` before a digit, a newline) belongs to
  no word;
* the first token of each word is its ``word_start``.

Example:
    >>> import llmscope
    >>> from llmscope.stimuli.subwords import encode_words
    >>> smol = llmscope.load("smollm2-135m")
    >>> ids, n_pre, word_of = encode_words(smol, "The cat sat", [(0, 3), (4, 7), (8, 11)])
    >>> word_of
    array([-1,  0,  1,  2])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from llmscope.errors import PromptError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def _tokenize(model: "TransformerBridge", text: str, bos: bool = True) -> tuple[list[int], int, list[tuple[int, int]]]:
    """``model.to_tokens`` ids, how many of them the model prepends, and the others' offsets
    (with ``bos=False``, the ids without the prepended tokens, and 0)."""
    if not text.strip():
        raise PromptError("empty text: every text must hold at least one non-blank character.")
    full = model.to_tokens(text, truncate=False)[0].tolist()
    body = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    n_pre = len(full) - len(body["input_ids"])
    if n_pre < 0 or full[n_pre:] != list(body["input_ids"]):
        raise ValueError(
            f"the tokenizer of this model splits {text[:40]!r} differently with offsets than "
            "model.to_tokens does, so labels cannot be placed on its tokens."
        )
    if not bos:
        return full[n_pre:], 0, body["offset_mapping"]
    return full, n_pre, body["offset_mapping"]


def encode_words(
    model: "TransformerBridge", text: str, spans: Sequence[tuple[int, int]], bos: bool = True
) -> tuple[list[int], int, np.ndarray]:
    """Token ids of ``text`` (as ``model.to_tokens`` gives them) and each token's word.

    Args:
        model: the model whose tokenizer splits the text.
        text: one string.
        spans: ``(start, end)`` character spans of the words, sorted and not overlapping.
        bos: keep the tokens the model prepends (BOS); False drops them.

    Returns:
        ``(ids, n_pre, word_of)``: the ids; how many of them the model prepends (BOS); for
        each token the index into ``spans`` of its word, or -1 for a token of no word (the
        prepended ones, pure whitespace).

    Raises:
        PromptError: a blank text.
        ValueError: the tokenizer's offsets disagree with ``model.to_tokens``.
    """
    full, n_pre, offsets = _tokenize(model, text, bos)
    starts = np.asarray([s for s, _ in spans], dtype=np.int64)
    ends = np.asarray([e for _, e in spans], dtype=np.int64)
    word_of = np.full(len(full), -1, dtype=np.int64)
    for i, (s, e) in enumerate(offsets, start=n_pre):
        lo = int(np.searchsorted(ends, s, side="right"))  # first word ending after s
        hi = int(np.searchsorted(starts, e, side="left"))  # words starting before e
        if hi > lo:
            overlap = np.minimum(ends[lo:hi], e) - np.maximum(starts[lo:hi], s)
            if overlap.max() > 0:
                word_of[i] = lo + int(np.argmax(overlap))
    return full, n_pre, word_of


def word_starts(word_of: np.ndarray) -> np.ndarray:
    """True on the first token of each word (``word_of`` from :func:`encode_words`)."""
    prev = np.concatenate([[-1], word_of[:-1]])
    return (word_of >= 0) & (word_of != prev)


def prefix_ids(model: "TransformerBridge") -> list[int]:
    """The ids ``model.to_tokens`` puts before any text (``[bos_id]`` for most models)."""
    full, n_pre, _ = _tokenize(model, "a")
    return full[:n_pre]


def single_token_id(model: "TransformerBridge", word: str) -> int | None:
    """The id of ``word`` if the tokenizer makes it exactly one token, else None.

    Pass ``" Mary"`` (leading space) for a word in the middle of a sentence.
    """
    ids = model.tokenizer(word, add_special_tokens=False)["input_ids"]
    unk = model.tokenizer.unk_token_id
    return int(ids[0]) if len(ids) == 1 and ids[0] != unk else None


def word_labels(word_of: np.ndarray, values: Sequence, none: object) -> list:
    """Per-token values of a word-level label: ``values[word]``, or ``none`` off words."""
    return [values[w] if w >= 0 else none for w in word_of]
