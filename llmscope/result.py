"""Result: what every analysis, experiment and behaviour measure returns — one protocol.

* ``.df`` — the data, a pandas DataFrame, one row per measured thing. Where rows are units, the
  index is the ``(site, unit)`` MultiIndex, so the table (or any slice of it) passes straight to
  ``lesion``, ``gain``, a decoder or a widget. A control measured beside a column ``x`` sits in
  ``x_control`` (``x_control_<which>`` when there are several controls).
* ``.data`` — array-shaped extras (tuning curves by label, spectra, RDMs...) as one labelled
  ``xarray.Dataset`` (None when there are none), never loose frames to keep in step.
* ``.meta`` — parameters and provenance (model, its fingerprint, stimuli, how complete).
* ``.plot()`` — a plotly Figure, built without a browser. Each subclass draws its own.
* ``.top(n, by=..., where=...)`` — the ``n`` best units by a column, as a unit table.

Every public analysis returns a subclass named after what it holds (``TuningResult``,
``AtlasResult``...), with the class attributes ``kind`` (the function that makes it) and
``rank_by`` (the column :meth:`top` ranks by unless told; None when rows are not units).

Example:
    >>> from llmscope import Result
    >>> import pandas as pd
    >>> r = Result(pd.DataFrame({"auc": [0.6, 0.9]}, index=pd.MultiIndex.from_tuples(
    ...     [("mlp.0", 3), ("mlp.0", 7)], names=["site", "unit"])))
    >>> r.top(1, by="auc").index.tolist()
    [('mlp.0', 7)]
    >>> r.plot().data[0].type
    'table'
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np
import pandas as pd

from llmscope.checks import count
from llmscope.errors import AnalysisError, ColumnError

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import xarray as xr


class Result:
    """An analysis result: ``.df`` first, ``.plot()`` second, arrays on ``.data``.

    Attributes:
        df: the data (see the subclass for its columns).
        meta: parameters and provenance, JSON-like.
        data: an ``xarray.Dataset`` of array-shaped extras, or None.
    """

    kind: ClassVar[str] = "result"
    rank_by: ClassVar[str | None] = None

    def __init__(self, df: pd.DataFrame, meta: Mapping[str, Any] | None = None, data: "xr.Dataset | None" = None):
        if not isinstance(df, pd.DataFrame):
            raise AnalysisError.Type(f"a Result holds a DataFrame, got {type(df).__name__}.")
        self.df = df
        self.meta = dict(meta or {})
        self.data = data
        if "fingerprint" in self.meta:  # units taken from this result remember the model they belong to
            self.df.attrs["fingerprint"] = self.meta["fingerprint"]

    # ---- units
    @property
    def has_units(self) -> bool:
        """True when the rows are units (``.df`` is indexed by ``(site, unit)``)."""
        index = self.df.index
        return isinstance(index, pd.MultiIndex) and list(index.names) == ["site", "unit"]

    def top(self, n: int = 10, by: str | None = None, where: str | None = None,
            ascending: bool = False) -> pd.DataFrame:
        """The ``n`` units with the highest ``by`` (default :attr:`rank_by`), among the rows
        ``where`` selects (a query on the columns, such as ``"preferred == 'NOUN'"``), as a unit
        table: rows of ``.df`` with their ``(site, unit)`` index, ready for ``lesion``, ``gain``,
        ``decode`` or a widget. Ties keep the table's order; NaN ranks last.

        Raises:
            AnalysisError: a result whose rows are not units, or a bad ``n``/``where``.
            ColumnError: ``by`` is not a column.

        Example:
            >>> import llmscope
            >>> from llmscope import tuning
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
            ...                       dtype="float32", progress=False)
            >>> tuning(rec, "mlp.0", "pos_tag", progress=False).top(2, where="preferred == 'NOUN'").index.nlevels
            2
        """
        n = count(n, "n")
        if not self.has_units:
            raise AnalysisError(f"{type(self).__name__} has no units (its rows are {list(self.df.index.names)}), "
                                "so it has no top units.")
        by = by or self.rank_by
        if by is None or by not in self.df.columns:
            numeric = [c for c in self.df.columns if pd.api.types.is_numeric_dtype(self.df[c])]
            raise ColumnError.Unknown(f"top() ranks by a column of .df; got by={by!r}. Numeric columns: {numeric}.")
        df = self.df
        if where is not None:
            if not isinstance(where, str):
                raise AnalysisError.Type(f"where is a query on the columns of .df, such as \"preferred == 'NOUN'\"; "
                                         f"got {where!r}.")
            try:
                df = df[np.asarray(df.eval(where), dtype=bool)]
            except Exception as exc:
                raise ColumnError.Unknown(f"top(where={where!r}) is not a query on the columns {list(df.columns)} "
                                          f"({type(exc).__name__}: {exc}).") from None
        out = df.sort_values(by, ascending=ascending, kind="stable", na_position="last").head(n)
        out.attrs.update(self.df.attrs)
        return out

    # ---- pictures
    def plot(self, **kwargs: Any) -> "go.Figure":
        """The result as a plotly Figure (no browser needed; ``fig.show()`` displays it). The base
        draws the table; every analysis's subclass draws its own figure."""
        import plotly.graph_objects as go

        df = self.df.head(200).reset_index() if self.has_units else self.df.head(200)
        cells = [df[c].map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)) for c in df.columns]
        fig = go.Figure(go.Table(header=dict(values=[str(c) for c in df.columns]), cells=dict(values=cells)))
        return fig.update_layout(title=html.escape(self.kind))

    # ---- display
    def _summary(self) -> str:
        meta = ", ".join(f"{k}={v!r}" for k, v in self.meta.items() if isinstance(v, (str, int, float)))
        data = "" if self.data is None else f"; data: {', '.join(map(str, self.data.data_vars))}"
        return (f"{type(self).__name__}({self.kind}: {len(self.df)} rows x {self.df.shape[1]} columns"
                f"{'; ' + meta if meta else ''}{data})")

    def __repr__(self) -> str:
        return f"{self._summary()}\n{self.df.head(10).to_string()}"

    def _repr_html_(self) -> str:
        table = self.df.to_html(max_rows=20, escape=True, float_format=lambda v: f"{v:.4g}")
        return f"<p><b>{html.escape(self._summary())}</b></p>{table}"


def unit_dataset(index: pd.MultiIndex, variables: Mapping[str, np.ndarray], dim: str | None = None,
                 labels: Any = None, **along_dim: np.ndarray) -> "xr.Dataset":
    """An xarray Dataset of per-unit arrays: each of ``variables`` is ``[unit]`` or ``[unit, dim]``
    (``dim`` labelled by ``labels``, such as a label's categories); ``along_dim`` are ``[dim]``
    arrays (counts per category). The ``unit`` axis is labelled ``"mlp.0:12"``, with coordinates
    ``site`` and ``index``, so ``ds.sel(unit="mlp.0:12")`` picks one unit.

    Example:
        >>> import numpy as np
        >>> import pandas as pd
        >>> from llmscope.result import unit_dataset
        >>> idx = pd.MultiIndex.from_tuples([("mlp.0", 3), ("mlp.0", 7)], names=["site", "unit"])
        >>> ds = unit_dataset(idx, {"mean": np.zeros((2, 3))}, "pos_tag", ["DET", "NOUN", "VERB"])
        >>> ds["mean"].sel(unit="mlp.0:7").dims, ds.site.values.tolist()
        (('pos_tag',), ['mlp.0', 'mlp.0'])
    """
    import xarray as xr

    from llmscope.sites import unit_labels

    dims = {name: ("unit",) if np.ndim(a) == 1 else ("unit", dim) for name, a in variables.items()}
    data = {name: (dims[name], np.asarray(a)) for name, a in variables.items()}
    data.update({name: ((dim,), np.asarray(a)) for name, a in along_dim.items()})
    coords: dict[str, Any] = {"unit": unit_labels(index), "site": ("unit", index.get_level_values(0).to_numpy()),
                              "index": ("unit", index.get_level_values(1).to_numpy())}
    if dim is not None:
        coords[dim] = np.asarray(labels)
    return xr.Dataset(data, coords=coords)


__all__ = ["Result", "unit_dataset"]
