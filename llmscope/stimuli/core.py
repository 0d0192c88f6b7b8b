"""Stimuli: token batches plus a trial table with one row per token.

The trial table (``Stimuli.tokens``) has the columns ``seq`` (which sequence), ``pos`` (position
in it, as the model sees it, BOS included), ``token`` (id), ``text`` (the token's string),
``is_bos`` (true on the tokens the model prepends, such as ``<|im_start|>``: analyses and
metrics leave those rows out unless asked) and any label columns a paradigm adds
(``pos_tag``, ``number``, ``is_repeat``...). Its rows are in
``(seq, pos)`` order, and every recording made from these stimuli is aligned to them row for row.

``Stimuli.ids`` holds the sequences as one right-padded ``[n_seqs, max_len]`` LongTensor; a
padded position has no row in the table. Right padding never changes a real token's
activations in a causal model.

Example:
    >>> import llmscope
    >>> from llmscope import Stimuli
    >>> model = llmscope.load("grammar-2l")
    >>> stim = Stimuli.from_ids(model, [[1, 5, 6], [1, 7]], labels={"kind": list("aaabb")}, n_bos=1)
    >>> stim.tokens.columns.tolist()
    ['seq', 'pos', 'token', 'text', 'is_bos', 'kind']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from llmscope import identity
from llmscope.checks import count
from llmscope.errors import PromptError
from llmscope.identity import Fingerprint
from llmscope.tokens import check_tokens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def token_texts(model: "TransformerBridge", ids: Sequence[int] | np.ndarray) -> list[str]:
    """Each token id decoded on its own, as plain text (``" Paris"``, not ``"ĠParis"``)."""
    return model.tokenizer.batch_decode([[int(i)] for i in ids], clean_up_tokenization_spaces=False)


def token_table(model: "TransformerBridge", ids: Sequence[int] | torch.Tensor, **columns) -> pd.DataFrame:
    """A small table of token ids, their text, and any extra per-token columns.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import token_table
        >>> model = llmscope.load("grammar-2l")
        >>> top = model(model.to_tokens("the dog"))[0, -1].softmax(-1).topk(3)
        >>> token_table(model, top.indices, probability=top.values).columns.tolist()
        ['token', 'text', 'probability']
    """
    ids = np.asarray(torch.as_tensor(ids).detach().cpu()).ravel()
    extra = {k: np.asarray(torch.as_tensor(v).detach().cpu()).ravel() for k, v in columns.items()}
    return pd.DataFrame({"token": ids, "text": token_texts(model, ids), **extra})


def onsets(flags: Sequence[bool] | np.ndarray, seq: Sequence[int] | np.ndarray) -> np.ndarray:
    """True where ``flags`` turns on within a sequence (the first token of each flagged span).

    Example:
        >>> from llmscope.stimuli.core import onsets
        >>> onsets([False, True, True, False, True], [0, 0, 0, 0, 1]).tolist()
        [False, True, False, False, True]
    """
    flags, seq = np.asarray(flags, dtype=bool), np.asarray(seq)
    before = np.concatenate([[False], flags[:-1] & (seq[1:] == seq[:-1])])
    return flags & ~before


def as_stimuli(model: "TransformerBridge", source: Any, what: str = "stimuli") -> "Stimuli":
    """``source`` as Stimuli checked for ``model``: Stimuli as they are, a string or a list of
    strings as free text (one sequence each, untagged, BOS as the model prepends it).

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli.core import as_stimuli
        >>> model = llmscope.load("grammar-2l")
        >>> as_stimuli(model, "the dog runs .").n_seqs
        1
    """
    if isinstance(source, str) or (isinstance(source, (list, tuple)) and source
                                   and all(isinstance(t, str) for t in source)):
        from llmscope.stimuli.english import from_texts

        source = from_texts(model, source, tag=False)
    if not isinstance(source, Stimuli):
        raise PromptError.Type(f"{what} are Stimuli (built by a paradigm of llmscope.stimuli or Stimuli.from_ids), "
                               f"a string or a list of strings; got {type(source).__name__}.")
    return source.check(model)


class Stimuli:
    """Token sequences shown to a model, with a per-token trial table.

    Attributes:
        ids: ``[n_seqs, max_len]`` LongTensor, right-padded with ``pad_id``.
        lengths: ``[n_seqs]`` number of real tokens in each sequence.
        tokens: the trial table, one row per real token (see module docstring).
        name: the paradigm that made these stimuli.
        model: the :class:`~llmscope.identity.Fingerprint` of the model whose tokenizer made the
            ids (None when unknown); a model with another vocabulary refuses them.
        corrupt: the corrupted twin of these stimuli (same lengths and labels, the answer-giving
            token changed), as paradigms build it with ``corrupt=True`` for
            :func:`llmscope.patching`; None otherwise.
    """

    def __init__(self, ids: torch.Tensor, lengths: Sequence[int], tokens: pd.DataFrame,
                 name: str = "stimuli", pad_id: int = 0, model: Fingerprint | None = None,
                 corrupt: "Stimuli | None" = None):
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or not isinstance(tokens, pd.DataFrame):
            raise PromptError.Type("Stimuli take ids as a [n_seqs, max_len] LongTensor and a trial table as a "
                                   "DataFrame; build them with a paradigm (llmscope.stimuli) or Stimuli.from_ids.")
        self.ids = ids
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(tokens) != int(self.lengths.sum()) or len(self.lengths) != ids.shape[0]:
            raise PromptError(f"the trial table has {len(tokens)} rows but the {ids.shape[0]} sequences "
                              f"have {int(self.lengths.sum())} tokens ({len(self.lengths)} lengths given).")
        self.tokens = tokens
        self.name = name
        self.pad_id = pad_id
        self.model = model
        if corrupt is not None and (not isinstance(corrupt, Stimuli) or not np.array_equal(corrupt.lengths, self.lengths)):
            raise PromptError("a corrupted twin is Stimuli with the same sequence lengths as the clean ones.")
        self.corrupt = corrupt

    @classmethod
    def from_ids(
        cls,
        model: "TransformerBridge",
        seqs: Sequence[Sequence[int]],
        labels: pd.DataFrame | Mapping[str, Sequence] | None = None,
        name: str = "stimuli",
        n_bos: int = 0,
    ) -> "Stimuli":
        """Build stimuli from token-id sequences (BOS already included, if wanted).

        Args:
            model: the model the ids belong to (for the vocabulary, context and token text).
            seqs: one list of token ids per sequence.
            labels: optional per-token label columns, one entry per token, in (seq, pos) order.
            name: the paradigm's name, shown in reprs and stored in recordings.
            n_bos: how many leading tokens of each sequence the model prepends (marked ``is_bos``).

        Raises:
            PromptError: no sequences, an empty sequence, or one longer than the context.
        """
        if (isinstance(seqs, (str, bytes)) or not isinstance(seqs, (Sequence, np.ndarray, torch.Tensor))
                or not all(isinstance(s, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(s, (str, bytes))
                           for s in seqs)):
            raise PromptError.Type("stimuli are built from lists of token ids, one list per sequence; "
                                   f"got {type(seqs).__name__}. For text use llmscope.stimuli.from_texts.")
        arrays = [np.asarray(s.detach().cpu() if isinstance(s, torch.Tensor) else s) for s in seqs]
        if any(a.dtype.kind not in "iu" and a.size for a in arrays):
            raise PromptError.Type("token ids must be integers; got "
                                   f"{next(a.dtype for a in arrays if a.dtype.kind not in 'iu' and a.size)}.")
        n_bos = count(n_bos, "n_bos", 0, None, PromptError)
        seqs = [list(map(int, a.ravel())) for a in arrays]
        if not seqs or any(len(s) == 0 for s in seqs):
            raise PromptError("empty stimuli: give at least one sequence of at least one token.")
        lengths = [len(s) for s in seqs]
        pad_id = model.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else int(pad_id)
        ids = torch.full((len(seqs), max(lengths)), pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        check_tokens(model, ids)
        flat = np.concatenate([np.asarray(s) for s in seqs])
        table = pd.DataFrame({
            "seq": np.repeat(np.arange(len(seqs)), lengths),
            "pos": np.concatenate([np.arange(n) for n in lengths]),
            "token": flat,
            "text": token_texts(model, flat),
            "is_bos": np.concatenate([np.arange(n) < n_bos for n in lengths]),
        })
        if labels is not None:
            try:
                labels = pd.DataFrame(labels).reset_index(drop=True)
            except (TypeError, ValueError) as exc:
                raise PromptError.Type(f"labels are a DataFrame or a mapping of column -> one value per token "
                                       f"({len(table)} tokens); pandas could not read them ({exc}).") from None
            if len(labels) != len(table):
                raise PromptError(f"labels have {len(labels)} rows but the stimuli have {len(table)} tokens: "
                                  "give one label per token, BOS included, in (seq, pos) order.")
            clash = set(labels.columns) & set(table.columns)
            if clash:
                raise PromptError(f"label columns {sorted(clash)} clash with the trial table's own columns "
                                  f"{list(table.columns)}; rename them.")
            table = pd.concat([table, labels], axis=1)
        return cls(ids, lengths, table, name=name, pad_id=pad_id, model=identity.fingerprint(model))

    @property
    def n_seqs(self) -> int:
        """Number of sequences."""
        return int(self.ids.shape[0])

    def __len__(self) -> int:
        """Number of tokens (rows of the trial table)."""
        return len(self.tokens)

    def offsets(self) -> np.ndarray:
        """Row of the trial table where each sequence starts (``n_seqs + 1`` entries)."""
        return np.concatenate([[0], np.cumsum(self.lengths)])

    def batches(self, batch_size: int, start_seq: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_seq, ids)`` batches of whole sequences, trimmed to their longest one."""
        count(batch_size, "batch_size", 1, None, PromptError)
        for lo in range(start_seq, self.n_seqs, batch_size):
            hi = min(lo + batch_size, self.n_seqs)
            yield lo, self.ids[lo:hi, : int(self.lengths[lo:hi].max())]

    def select_seqs(self, seqs: Sequence[int] | np.ndarray) -> "Stimuli":
        """A new Stimuli holding only the given sequences, renumbered from 0."""
        raw = np.asarray(seqs.detach().cpu() if isinstance(seqs, torch.Tensor) else seqs)
        if raw.size and (raw.dtype.kind not in "iu" or raw.ndim != 1):
            raise PromptError.Type(f"select_seqs takes a list of sequence indices (integers in 0..{self.n_seqs - 1}), "
                                   f"got {raw.dtype} of shape {raw.shape}.")
        seqs = raw.astype(np.int64)
        if seqs.size == 0:
            raise PromptError("empty selection: choose at least one sequence.")
        bad = seqs[(seqs < 0) | (seqs >= self.n_seqs)]
        if bad.size:
            raise PromptError.Range(f"sequence index {int(bad[0])} out of range: these stimuli have {self.n_seqs} "
                                    f"sequences, 0..{self.n_seqs - 1} (negative indices are not allowed).")
        lengths = self.lengths[seqs]
        off = self.offsets()
        rows = np.concatenate([np.arange(off[q], off[q + 1]) for q in seqs])
        table = self.tokens.iloc[rows].reset_index(drop=True)
        table["seq"] = np.repeat(np.arange(seqs.size), lengths)
        ids = self.ids[torch.as_tensor(seqs)][:, : int(lengths.max())]
        twin = None if self.corrupt is None else self.corrupt.select_seqs(seqs)
        return Stimuli(ids, lengths, table, name=self.name, pad_id=self.pad_id, model=self.model, corrupt=twin)

    def check(self, model: "TransformerBridge") -> "Stimuli":
        """These stimuli, checked for ``model``: made with its vocabulary, consistent, ids valid, no
        sequence longer than its context (a :class:`PromptError` says what to do).

        Example:
            >>> import llmscope
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> stim.check(model) is stim
            True
        """
        identity.check(self.model, model, f"these stimuli ({self.name})", "vocab", PromptError,
                       "Build them again with this model, e.g. the same paradigm called with it.")
        if self.n_seqs == 0 or len(self) == 0:
            raise PromptError("empty stimuli: give at least one sequence of at least one token.")
        if len(self) != int(self.lengths.sum()):
            raise PromptError(f"the trial table has {len(self)} rows but the sequences hold "
                              f"{int(self.lengths.sum())} tokens: the stimuli are inconsistent.")
        check_tokens(model, self.ids)
        return self

    def __repr__(self) -> str:
        labels = [c for c in self.tokens.columns if c not in ("seq", "pos", "token", "text")]
        return (f"Stimuli({self.name!r}: {self.n_seqs} sequences, {len(self)} tokens, "
                f"max length {int(self.lengths.max())}, labels={labels})")

    def _repr_html_(self) -> str:
        head = self.tokens.head(8).to_html(index=False, escape=True)
        return f"<p><b>{self.name}</b>: {self.n_seqs} sequences, {len(self)} tokens</p>{head}"
