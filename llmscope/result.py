"""Result: what every analysis returns — data first (``.df``), picture second (``.plot()``).

A ``Result`` holds a pandas DataFrame, a ``kind`` naming the analysis that made it, a ``meta``
dict (parameters, model, stimuli name...) and a plotting function that turns the result into
a plotly Figure. Figures are built in Python and need no browser; widgets build on the same
object.

Example:
    >>> import pandas as pd, plotly.express as px
    >>> r = Result(pd.DataFrame({"x": [1, 2], "y": [3, 4]}), kind="demo",
    ...            plotter=lambda r: px.line(r.df, x="x", y="y"))
    >>> r.plot().data[0].type
    'scatter'
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

if TYPE_CHECKING:
    import plotly.graph_objects as go


def _table_figure(result: "Result") -> "go.Figure":
    """The fallback picture of a result with no plotter: its table."""
    import plotly.graph_objects as go

    df = result.df.head(200)
    cells = [df[c].map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)) for c in df.columns]
    fig = go.Figure(go.Table(header=dict(values=[str(c) for c in df.columns]), cells=dict(values=cells)))
    return fig.update_layout(title=result.kind)


@dataclass
class Result:
    """An analysis result.

    Attributes:
        df: the data, one row per measured thing (group, unit, layer x position...).
        kind: the analysis that made it (``"effect"``, ``"patching"``...).
        meta: parameters and provenance, free-form but JSON-like.
        plotter: ``plotter(result, **kwargs) -> plotly Figure``; None shows the table.
    """

    df: pd.DataFrame
    kind: str = "result"
    meta: dict[str, Any] = field(default_factory=dict)
    plotter: Callable[..., "go.Figure"] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # units taken from this result (its .df, .top(), .head()) remember the model they belong to
        if "fingerprint" in self.meta:
            self.df.attrs["fingerprint"] = self.meta["fingerprint"]

    def plot(self, **kwargs: Any) -> "go.Figure":
        """The result as a plotly Figure (no browser needed; ``fig.show()`` displays it)."""
        return (self.plotter or _table_figure)(self, **kwargs)

    def _summary(self) -> str:
        meta = ", ".join(f"{k}={v!r}" for k, v in self.meta.items() if isinstance(v, (str, int, float)))
        return f"Result({self.kind!r}: {len(self.df)} rows x {self.df.shape[1]} columns{'; ' + meta if meta else ''})"

    def __repr__(self) -> str:
        return f"{self._summary()}\n{self.df.head(10).to_string()}"

    def _repr_html_(self) -> str:
        table = self.df.to_html(max_rows=20, escape=True, float_format=lambda v: f"{v:.4g}")
        return f"<p><b>{html.escape(self._summary())}</b></p>{table}"


__all__ = ["Result"]
