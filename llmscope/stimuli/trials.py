"""The trial table as analyses read it: which rows take part, and which label columns are usable.

Rules every analysis shares (so one written on the organism runs unchanged on SmolLM2):

* BOS rows (``is_bos`` true: tokens the model prepends, such as ``<|im_start|>``) stay out
  unless ``include_bos=True``;
* a label column must exist and hold at least two categories among the rows analysed;
  missing labels (NaN / None / ``""``) are left out.

Example:
    >>> from llmscope.stimuli.trials import labels, rows
    >>> import pandas as pd
    >>> t = pd.DataFrame({"seq": [0, 0, 0], "pos": [0, 1, 2], "is_bos": [True, False, False],
    ...                   "pos_tag": ["BOS", "DET", "NOUN"]})
    >>> rows(t).tolist()
    [False, True, True]
    >>> labels(t, "pos_tag", rows(t)).tolist()
    ['DET', 'NOUN']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmscope.checks import flag
from llmscope.errors import AnalysisError, ColumnError


def rows(tokens: pd.DataFrame, include_bos: bool = False) -> np.ndarray:
    """Boolean mask of the trial-table rows an analysis uses (BOS rows out unless asked)."""
    flag(include_bos, "include_bos")
    keep = np.ones(len(tokens), dtype=bool)
    if not include_bos and "is_bos" in tokens.columns:
        keep &= ~tokens["is_bos"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    return keep


def column(tokens: pd.DataFrame, name: str, what: str = "column") -> pd.Series:
    """The trial-table column ``name``, or a :class:`ColumnError` listing the columns there are."""
    if not isinstance(name, str):
        raise ColumnError.Type(f"a {what} is named by a string; got {name!r}. Columns: {list(tokens.columns)}.")
    if name not in tokens.columns:
        raise ColumnError(f"the trial table has no {what} {name!r}; its columns are {list(tokens.columns)}.")
    return tokens[name]


def labels(tokens: pd.DataFrame, label: str, keep: np.ndarray | None = None,
           min_categories: int = 2) -> pd.Series:
    """The values of ``label`` at the kept rows (missing values dropped), checked to have
    at least ``min_categories`` categories; the Series keeps the trial-table row index."""
    col = column(tokens, label, "label column")
    if keep is not None:
        col = col[keep]
    col = col[col.notna() & (col.astype(str) != "")]
    found = pd.unique(col)
    if len(found) < min_categories:
        raise AnalysisError(
            f"the label column {label!r} has {len(found)} categor{'y' if len(found) == 1 else 'ies'} "
            f"({list(found)[:5]}) among the rows analysed; it needs at least {min_categories}. "
            "Choose another column or stimuli that vary in it.")
    return col


__all__ = ["rows", "column", "labels"]
