"""Rank sums of float16 responses by counting, not sorting: the kernel under :func:`~llmscope.analysis.tuning`.

A float16 takes at most 65,536 values, so a unit's midranks come from a table of counts over
its range of values: each response becomes an order-preserving 16-bit key, the keys are counted,
and a running sum over the table gives every value's midrank and the tie term. The tokens are
read in an order that groups them by a category code (one segment per code), so each category's
sums (of doubled midranks, exact in integers; of the responses and their squares, float64) are
sums over a segment.

The loops are compiled by numba (``cache=True``: once per machine, in the package's
``__pycache__``): in numpy each of them is a pass over memory of its own (keys, bins, counts,
running sums, gathers, segment sums: ten or so per response), in numba one pass per step
with the unit's data in cache, and no index arrays the size of the data.

Example:
    >>> import numpy as np
    >>> from llmscope.analysis.counting import segment_sums
    >>> part = np.array([[0.5], [-1.0], [0.5], [2.0]], dtype=np.float16)
    >>> doubled, sums, squares, ties = segment_sums(part, np.arange(4), np.array([0, 2, 4]), "mlp.0")
    >>> doubled.tolist(), sums.tolist(), ties.tolist()  # midranks 2.5, 1 | 2.5, 4; one tie of 2
    ([[7, 13]], [[-0.5, 2.5]], [6.0])
"""

from __future__ import annotations

import numpy as np
from numba import njit

from llmscope.errors import AnalysisError

BLOCK = 64  # units copied out of the part at once: their rows are read in whole cache lines, once
TILE = 32  # rows copied at once: 64 bytes of each unit's row
MAX_ROWS = (1 << 21) - 1  # up to here a unit's tie term sum(t**3 - t) <= n**3 is an exact int64 sum
NEG_INF, POS_INF = 0x0400, 0xFC00  # the keys of -inf and +inf: a key outside them is a NaN's
VALUES = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)  # bit pattern -> value


@njit(cache=True, nogil=True)
def key16(bits: int) -> int:
    """The order-preserving key of a float16 bit pattern: ``0x8000 + |x|`` bits for a positive,
    ``0x8000 - |x|`` bits for a negative, so -0.0 and 0.0 tie, -inf is 0x0400 and +inf 0xFC00."""
    b = np.int32(bits)
    sign = b >> 15
    return (((sign * 0x7FFF) | 0x8000) ^ b) + sign


@njit(cache=True, nogil=True)
def _kernel(bits, rows, starts, values, exact, doubled, sums, squares, ties):  # pragma: no cover - compiled
    n_units, n, n_segments = bits.shape[1], rows.size, starts.size - 1
    block = np.empty((BLOCK, n), np.uint16)
    keys = np.empty(n, np.int32)
    table = np.empty(1 << 16, np.int32)
    for first in range(0, n_units, BLOCK):
        width = min(BLOCK, n_units - first)
        for tile in range(0, n, TILE):  # the block's rows in the order asked, one unit per row of ``block``:
            end = min(tile + TILE, n)     # a tile of rows at a time, so each write fills a cache line
            for j in range(width):
                for i in range(tile, end):
                    block[j, i] = bits[rows[i], first + j]
        for j in range(width):
            unit = block[j]
            low, high = 0xFFFF, 0
            for i in range(n):
                key = key16(unit[i])
                keys[i] = key
                low = min(low, key)
                high = max(high, key)
            if low < NEG_INF or high > POS_INF:
                return first + j
            span = high - low + 1
            table[:span] = 0
            for i in range(n):
                keys[i] -= low
                table[keys[i]] += 1
            below, tie, rough = 0, 0, 0.0
            for v in range(span):  # t values at ranks below+1..below+t: midrank below + (t + 1) / 2
                t = np.int64(table[v])
                table[v] = 2 * below + t + 1
                if exact:
                    tie += t * t * t - t  # an integer sum: a float one would wait on each add
                else:
                    rough += np.float64(t) ** 3 - t
                below += t
            ties[first + j] = tie if exact else rough
            for s in range(n_segments):
                twice, total, square = 0, 0.0, 0.0
                for i in range(starts[s], starts[s + 1]):
                    twice += table[keys[i]]
                    x = np.float64(values[unit[i]])
                    total += x
                    square += x * x
                doubled[first + j, s] = twice
                sums[first + j, s] = total
                squares[first + j, s] = square
    return -1


def segment_sums(part: np.ndarray, rows: np.ndarray, starts: np.ndarray,
                 name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per unit of the float16 ``part [n_rows, n_units]`` (as stored), over its rows ``rows`` read
    in that order and split into segments at ``starts`` (ascending, from 0, ``len(rows)`` last):
    each segment's sum of doubled midranks (int64, exact), of the responses and of their squares
    (float64), each ``[n_units, n_segments]``; and each unit's tie term ``sum(t**3 - t)`` over its
    groups of ``t`` equal values (float64; summed exactly in int64 up to ``MAX_ROWS`` rows, in
    float64 beyond).

    Raises:
        AnalysisError: a NaN response (the recording is damaged), naming ``name``.
    """
    n_units, n_segments = part.shape[1], len(starts) - 1
    doubled = np.empty((n_units, n_segments), np.int64)
    sums, squares = np.empty((n_units, n_segments)), np.empty((n_units, n_segments))
    ties = np.empty(n_units)
    bad = _kernel(np.ascontiguousarray(part).view(np.uint16), np.asarray(rows, np.intp), np.asarray(starts, np.intp),
                  VALUES, len(rows) <= MAX_ROWS, doubled, sums, squares, ties)
    if bad >= 0:
        raise AnalysisError(f"{name} has NaN responses: the recording is damaged; record it again.")
    return doubled, sums, squares, ties.astype(np.float64)


def load() -> None:
    """Compile the kernel, or load it from numba's cache, in this process now (a second call costs
    nothing): worker processes forked afterwards inherit it instead of each loading it again."""
    segment_sums(np.zeros((1, 1), np.float16), np.zeros(1, np.intp), np.array([0, 1]), "load")


__all__ = ["segment_sums", "key16", "load"]
