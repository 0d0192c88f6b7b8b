"""The check every renamed parameter gets for its one release: the old call warns and gives what the new one gives."""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd
import pytest


def assert_renamed(old: Callable[[], Any], new: Callable[[], Any]) -> None:
    """``old()`` (a call with old parameter names) warns with a FutureWarning and returns the same
    Result as ``new()``: the same table and the same meta."""
    with pytest.warns(FutureWarning, match="will be removed in the next release"):
        before = old()
    after = new()
    pd.testing.assert_frame_equal(before.df, after.df)
    assert before.meta == after.meta
