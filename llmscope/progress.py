"""Progress bars: every llmscope bar is a tqdm bar made here, so one switch silences them all.

A bar is shown when its function's ``progress`` argument is true and the environment does not
set ``TQDM_DISABLE`` (to anything but ``""``, ``0``, ``false``, ``no`` or ``off``). tqdm reads
``TQDM_DISABLE`` itself only when the bar's caller passes no ``disable`` and only when tqdm is
imported (its Jupyter bar never); here it is read at each bar, so setting it in a running
kernel (``os.environ["TQDM_DISABLE"] = "1"``) works too.

Example:
    >>> from llmscope.progress import progress_bar
    >>> [i for i in progress_bar(range(3), desc="demo", show=False)]
    [0, 1, 2]
    >>> progress_bar(total=3, show=False).disable
    True
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from tqdm.auto import tqdm

_OFF = ("", "0", "false", "no", "off")  # TQDM_DISABLE values that leave bars on


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (``tqdm.auto``: a widget in Jupyter) over ``iterable`` or of ``total=``; hidden
    when ``show`` is false or ``TQDM_DISABLE`` is set. ``kwargs`` go to tqdm (``desc``, ``unit``...)."""
    off = os.environ.get("TQDM_DISABLE", "").strip().lower() not in _OFF
    return tqdm(iterable, disable=not show or off, **kwargs)


__all__ = ["progress_bar"]
