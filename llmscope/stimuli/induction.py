"""Induction stimuli: a random token sequence shown twice, so its second half is predictable.

Each sequence is ``BOS + r + r`` where ``r`` holds ``half_len`` distinct tokens drawn at
random from the model's ordinary vocabulary (special and added tokens excluded). Only a model
that copies from context can predict the second ``r``: induction heads do.

Trial-table columns added by :func:`induction`:

* ``half``: 0 on BOS, 1 on the first copy, 2 on the second;
* ``is_repeat``: True on the second copy; ``repeat_onset``: True on its first token;
* ``half_pos``: position within the half (-1 on BOS);
* ``repeat_of``: for a repeated token, the position of its first occurrence (-1 otherwise).

Example:
    >>> import llmscope
    >>> from llmscope.stimuli import induction
    >>> model = llmscope.load("grammar-2l")
    >>> stim = induction(model, n_seqs=8, half_len=10, seed=0)
    >>> stim.tokens.groupby("half").size().tolist()
    [8, 80, 80]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmscope import checks
from llmscope.checks import count
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.subwords import prefix_ids
from llmscope.errors import PromptError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def ordinary_vocab(model: "TransformerBridge") -> np.ndarray:
    """Ids of the model's vocabulary that are neither special nor added tokens."""
    tok = model.tokenizer
    n = min(model.cfg.d_vocab, len(tok))
    special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}))
    return np.array([i for i in range(n) if i not in special], dtype=np.int64)


def induction(model: "TransformerBridge", n_seqs: int = 32, half_len: int = 20, seed: int = 0) -> Stimuli:
    """``n_seqs`` sequences of BOS + ``half_len`` random tokens + the same tokens again.

    Args:
        model: any model; tokens are drawn from its ordinary vocabulary.
        n_seqs: number of sequences.
        half_len: tokens in each half (distinct within a sequence).
        seed: seeds the draw; the same seed gives the same stimuli.

    Raises:
        PromptError: ``n_seqs`` or ``half_len`` < 1, more distinct tokens than the vocabulary
            has, or sequences longer than the context.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import induction
        >>> model = llmscope.load("grammar-2l")
        >>> stim = induction(model, n_seqs=4, half_len=5, seed=1)
        >>> stim.ids.shape
        torch.Size([4, 11])
    """
    count(n_seqs, "n_seqs", error=PromptError)
    count(half_len, "half_len", error=PromptError)
    seed = checks.seed(seed, "seed", PromptError)
    vocab = ordinary_vocab(model)
    if half_len > vocab.size:
        raise PromptError.Range(f"half_len {half_len} exceeds the {vocab.size} ordinary tokens of this model.")
    rng = np.random.default_rng(seed)
    bos = prefix_ids(model)
    halves = [rng.choice(vocab, size=half_len, replace=False) for _ in range(n_seqs)]
    seqs = [bos + h.tolist() * 2 for h in halves]
    n_pre = len(bos)
    half = np.repeat([0, 1, 2], [n_pre, half_len, half_len])
    half_pos = np.concatenate([np.full(n_pre, -1), np.arange(half_len), np.arange(half_len)])
    repeat_of = np.where(half == 2, np.arange(half.size) - half_len, -1)
    one = pd.DataFrame({"half": half, "is_repeat": half == 2, "repeat_onset": (half == 2) & (half_pos == 0),
                        "half_pos": half_pos, "repeat_of": repeat_of})
    return Stimuli.from_ids(model, seqs, pd.concat([one] * n_seqs, ignore_index=True), name="induction",
                            n_bos=n_pre)
