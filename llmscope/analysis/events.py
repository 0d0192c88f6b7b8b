"""Events in token time: the trial-table rows an event picks, its shuffled control, and the
weights that average any per-token signal at offsets around it.

Events are the rows ``where`` selects: a boolean trial-table column (``"is_onset"``) or a query on
the table (``"pos_tag == 'NOUN'"``); :func:`rows` turns it into a mask of the analysed rows. A
window around them is an int ``n`` (``n`` tokens before and after) or ``(before, after)``
(:func:`span`). The control moves each sequence's events to as many random distinct positions
of the same sequence (:func:`shuffled`). :func:`weights` builds, for the real events and
``n_controls`` shuffles of them, one sparse row per offset marking the tokens at that offset
from the events, within their own sequences: ``weights @ signal`` sums any ``[n_tokens, ...]``
signal there, and dividing by the counts gives the peri-event average. :func:`~llmscope.analysis.spikes.psth` (spikes or
responses of units) and :func:`~llmscope.analysis.lfp.event_average` (field potentials) both
rest on it.

Example:
    >>> import numpy as np
    >>> import pandas as pd
    >>> from llmscope.analysis.events import rows, weights
    >>> tokens = pd.DataFrame({"seq": [0, 0, 0, 1, 1], "pos": [0, 1, 2, 0, 1],
    ...                        "noun": [False, True, False, True, False]})
    >>> w, counts = weights(tokens, rows(tokens, "noun"), window=1, n_controls=0, seed=0)
    >>> counts.tolist()  # offsets -1, 0, +1: the event at pos 0 has no token before it
    [[1, 2, 2]]
    >>> (w @ np.arange(5.0)).tolist()  # sums of the signal 0..4 at each offset
    [0.0, 4.0, 6.0]
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd
from scipy import sparse

from llmscope.checks import count, draws
from llmscope.errors import AnalysisError, ColumnError


def rows(tokens: pd.DataFrame, where: Any) -> np.ndarray:
    """Boolean mask ``[n_tokens]`` of the event rows ``where`` selects in ``tokens``.

    Args:
        tokens: the analysed rows of a trial table.
        where: a boolean column's name or a query on the table (``"pos_tag == 'NOUN'"``).

    Raises:
        AnalysisError: not a non-empty string, a query that is invalid or does not select
            rows (not boolean), an event matching no row.
        ColumnError: a query naming a column the table lacks.

    Example:
        >>> import pandas as pd
        >>> from llmscope.analysis.events import rows
        >>> rows(pd.DataFrame({"pos_tag": ["DET", "NOUN", "VERB"]}), "pos_tag == 'NOUN'").tolist()
        [False, True, False]
    """
    if not isinstance(where, str) or not where.strip():
        raise AnalysisError.Type(f"the events (where=) are a boolean column name or a query string such as "
                                 f"\"pos_tag == 'NOUN'\", got {where!r}.")
    if where in tokens.columns:
        mask = tokens[where]
    else:
        try:
            mask = tokens.eval(where)
        except pd.errors.UndefinedVariableError as exc:
            raise ColumnError(f"the event {where!r} names a column the trial table lacks ({exc}); "
                              f"its columns are {list(tokens.columns)}.") from None
        except Exception as exc:  # a syntax error or a query pandas cannot evaluate
            raise AnalysisError(f"the event {where!r} is not a valid query on the trial table "
                                f"({type(exc).__name__}: {exc}).") from None
    if not isinstance(mask, pd.Series) or not pd.api.types.is_bool_dtype(mask):
        raise AnalysisError.Type(f"the event {where!r} must select rows (a boolean column or a comparison "
                                 f"such as \"pos_tag == 'NOUN'\"), but it gives {getattr(mask, 'dtype', mask)!r}.")
    mask = mask.astype("boolean").fillna(False).to_numpy(dtype=bool)
    if not mask.any():
        raise AnalysisError(f"the event {where!r} matches none of the {len(tokens)} tokens analysed.")
    return mask


def span(window: Any, baseline: bool = False) -> tuple[int, int]:
    """``(before, after)`` of a window around events: an int ``n`` (>= 1) is ``(n, n)``; a pair
    ``(before, after)`` counts each side (>= 0, not both 0). With ``baseline``, ``before`` must
    be >= 1: the tokens before the event are the baseline.

    Raises:
        AnalysisError: anything else (the message names the bad value).

    Example:
        >>> from llmscope.analysis.events import span
        >>> span(3), span((2, 0))
        ((3, 3), (2, 0))
    """
    if isinstance(window, (tuple, list)) and len(window) == 2:
        before = count(window[0], "window's before (tokens before the event)", minimum=int(baseline))
        after = count(window[1], "window's after (tokens after the event)", minimum=0)
        if before + after == 0:
            raise AnalysisError.Range(f"the window {window!r} holds only the event; give it tokens before or after.")
        return before, after
    n = count(window, "window")
    return n, n


def shuffled(seq: np.ndarray, events: np.ndarray, n_controls: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The control: ``n_controls`` times, the event rows moved to as many random distinct rows of
    their own sequences, as sorted row numbers.

    Args:
        seq: the sequence of each row ``[n_tokens]``, rows grouped by sequence (as a trial table is).
        events: boolean mask ``[n_tokens]`` of the real events (from :func:`rows`).
        n_controls: how many shuffles to yield (0: none).
        rng: the generator that draws them.

    Example:
        >>> import numpy as np
        >>> from llmscope.analysis.events import shuffled
        >>> seq, events = np.array([0, 0, 0, 1, 1]), np.array([True, False, False, True, False])
        >>> [np.bincount(seq[d]).tolist() for d in shuffled(seq, events, 3, np.random.default_rng(0))]
        [[1, 1], [1, 1], [1, 1]]
    """
    _, code = np.unique(seq, return_inverse=True)
    starts = np.concatenate([[0], np.cumsum(np.bincount(code))])[:-1]
    per_seq = np.bincount(code[events], minlength=len(starts))
    rank = np.arange(len(seq)) - starts[code]  # a row's place in its sequence: rows are grouped by sequence
    for _ in range(n_controls):
        perm = np.argsort(code + rng.random(len(seq)))  # each sequence's rows, in random order
        yield np.sort(perm[rank < per_seq[code]])


def weights(tokens: pd.DataFrame, events: np.ndarray, window: Any, n_controls: int,
            seed: int) -> tuple[sparse.csc_matrix, np.ndarray]:
    """Peri-event weights of the real events (set 0) and ``n_controls`` shuffles of them (sets 1..).

    Args:
        tokens: the analysed rows of a trial table (``seq``, ``pos``), in ``(seq, pos)`` order.
        events: boolean mask ``[n_tokens]`` of the events (from :func:`rows`).
        window: offsets ``-before..+after`` tokens (:func:`span`; K = ``before + after + 1`` of them).
        n_controls: shuffled event sets (:func:`shuffled`) after the real one (>= 0).
        seed: seeds the shuffles.

    Returns:
        ``(w, counts)``: ``w`` sparse float32 ``[n_sets * K, n_tokens]`` whose row ``set * K + k``
        is 1 on the tokens at offset ``k - before`` from that set's events, within their
        sequences (an offset leaving its sequence marks nothing); ``counts [n_sets, K]``, the
        number of such tokens. CSC: a block of token columns is a cheap slice, and the product
        with a block of responses keeps the output rows in cache.

    Raises:
        AnalysisError: rows not in ``(seq, pos)`` order, one per token.
    """
    (before, after), n_controls = span(window), draws(n_controls, "n_controls", "resample", minimum=0)
    seq, pos = tokens["seq"].to_numpy(np.int64), tokens["pos"].to_numpy(np.int64)
    key = seq * (int(pos.max()) + max(before, after) + 1) + pos  # offsets never reach another sequence's keys
    if np.any(np.diff(key) <= 0):
        raise AnalysisError("the trial table is not in (seq, pos) order, one row per token; peri-event "
                            "averages need the rows as a recording stores them.")
    sets = [np.flatnonzero(events), *shuffled(seq, events, n_controls, np.random.default_rng(seed))]
    offsets = np.arange(-before, after + 1)[:, None]
    targets = []
    for ev in sets:
        want = key[ev][None, :] + offsets  # [n_offsets, n_events]
        at = np.minimum(np.searchsorted(key, want), len(key) - 1)
        hit = key[at] == want
        targets += [row[h] for row, h in zip(at, hit)]  # ascending, since the events are
    counts = np.array([len(t) for t in targets])
    indices = np.concatenate(targets)
    w = sparse.csr_matrix((np.ones(len(indices), np.float32), indices, np.concatenate([[0], np.cumsum(counts)])),
                          shape=(len(targets), len(tokens)))
    return w.tocsc(), counts.reshape(len(sets), len(offsets))


__all__ = ["rows", "span", "shuffled", "weights"]
