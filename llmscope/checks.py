"""Argument checks every layer shares: one rule per kind of argument, one message shape.

Each check returns the value in its canonical type or raises the caller's error class in the
right kind (see :mod:`llmscope.errors`): a wrong type is ``error.Type`` (a ``TypeError``), a
number out of its range ``error.Range`` (an ``IndexError``), a name that is not a choice
``error.Unknown`` (a ``KeyError``). Messages name the argument, the bad value and what is valid.

Control draws (shuffles, permutations, random unit sets) share one cap rule, :func:`draws`:
at most ``MAX_DRAWS[cost]``, where the cost is what one draw redoes: ``"resample"`` (a summary
recomputed from numbers in memory), ``"fit"`` (a model such as a probe refitted), ``"pass"``
(the data re-read or the model run again).

Example:
    >>> from llmscope.checks import choice, count, flag
    >>> count(3, "n_seqs"), flag(True, "include_bos"), choice("zero", "mode", ("zero", "mean"))
    (3, True, 'zero')
    >>> try:
    ...     flag("no", "include_bos")
    ... except TypeError as exc:
    ...     print(exc)
    include_bos must be True or False, got 'no'.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from llmscope.errors import AnalysisError, LLMScopeError

MAX_DRAWS = {"resample": 100_000, "fit": 1_000, "pass": 100}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def count(value: Any, name: str, minimum: int = 1, maximum: int | None = None,
          error: type[LLMScopeError] = AnalysisError) -> int:
    """``value`` as an int in ``minimum..maximum``.

    Example:
        >>> import numpy as np
        >>> from llmscope.checks import count
        >>> count(np.int64(4), "k")
        4
    """
    top = "" if maximum is None else f" and <= {maximum}"
    if not _is_int(value):
        raise error.Type(f"{name} must be an integer >= {minimum}{top}, got {value!r}.")
    if value < minimum or (maximum is not None and value > maximum):
        raise error.Range(f"{name} must be an integer >= {minimum}{top}, got {value!r}.")
    return int(value)


def draws(value: Any, name: str, cost: str, minimum: int = 1, error: type[LLMScopeError] = AnalysisError) -> int:
    """A number of control draws, capped by what one draw costs (``MAX_DRAWS``).

    Example:
        >>> from llmscope.checks import draws
        >>> draws(1000, "n_perm", "resample")
        1000
    """
    return count(value, name, minimum, MAX_DRAWS[cost], error)


def flag(value: Any, name: str, error: type[LLMScopeError] = AnalysisError) -> bool:
    """``value`` as a bool: only ``True`` or ``False`` (no truthy strings or numbers)."""
    if not isinstance(value, (bool, np.bool_)):
        raise error.Type(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def number(value: Any, name: str, low: float | None = None, high: float | None = None,
           error: type[LLMScopeError] = AnalysisError) -> float:
    """``value`` as a finite float in ``[low, high]`` (either bound may be None).

    Example:
        >>> from llmscope.checks import number
        >>> number(2, "factor", 0)
        2.0
    """
    span = (f" in [{low}, {high}]" if low is not None and high is not None else
            f" >= {low}" if low is not None else f" <= {high}" if high is not None else "")
    if not _is_real(value):
        raise error.Type(f"{name} must be a finite number{span}, got {value!r}.")
    if not np.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise error.Range(f"{name} must be a finite number{span}, got {value!r}.")
    return float(value)


def fraction(value: Any, name: str, low: float = 0.0, high: float = 1.0,
             error: type[LLMScopeError] = AnalysisError) -> float:
    """``value`` as a float strictly between ``low`` and ``high``."""
    if not _is_real(value):
        raise error.Type(f"{name} must be a number strictly between {low} and {high}, got {value!r}.")
    if not low < value < high:
        raise error.Range(f"{name} must be a number strictly between {low} and {high}, got {value!r}.")
    return float(value)


def choice(value: Any, name: str, choices: Iterable[Any], error: type[LLMScopeError] = AnalysisError) -> Any:
    """``value`` if it is one of ``choices``; a string compared exactly.

    Example:
        >>> from llmscope.checks import choice
        >>> choice("mean", "mode", ["zero", "mean"])
        'mean'
    """
    options = list(choices)
    kinds = tuple({type(c) for c in options})
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise error.Type(f"{name} must be one of {options}, got {value!r}.")
    if value not in options:
        raise error.Unknown(f"unknown {name} {value!r}; choose one of {options}.")
    return value


def seed(value: Any, name: str = "seed", error: type[LLMScopeError] = AnalysisError) -> int:
    """A random seed: an integer >= 0."""
    return count(value, name, 0, None, error)


RECORD_AGAIN = ("re-record the site (a float16 recording stores values beyond ±65504 as inf: record with "
                "dtype='float32'), or select rows without them")


def finite(values: np.ndarray, what: str, rows: Any = None, units: Any = None,
           error: type[LLMScopeError] = AnalysisError, fix: str = RECORD_AGAIN) -> np.ndarray:
    """``values`` (``[rows, units, ...]``) if every entry is finite, else an error naming the first
    bad row and unit and saying ``fix``. ``rows``/``units`` label the axes (trial-table row
    numbers, unit indices).

    Example:
        >>> import numpy as np
        >>> from llmscope.checks import AnalysisError, finite
        >>> try:
        ...     finite(np.array([[0.0, 1.0], [np.nan, 2.0]]), "the responses of mlp.0")
        ... except AnalysisError as exc:
        ...     print(exc)
        the responses of mlp.0 hold 1 non-finite value (NaN or inf), the first at row 1, unit 0: re-record the site (a float16 recording stores values beyond ±65504 as inf: record with dtype='float32'), or select rows without them.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        return values
    ok = np.isfinite(values)
    if ok.all():
        return values
    bad = np.argwhere(~ok)[0]
    row = bad[0] if rows is None else np.asarray(rows)[bad[0]]
    where = f"row {row}"
    if values.ndim > 1:
        where += f", unit {bad[1] if units is None else np.asarray(units)[bad[1]]}"
    n = int((~ok).sum())
    raise error(f"{what} hold {n} non-finite value{'s' if n > 1 else ''} (NaN or inf), the first at {where}: "
                f"{fix}.")


__all__ = ["count", "draws", "flag", "number", "fraction", "choice", "seed", "finite", "MAX_DRAWS"]
