"""Behavioural correlates: which units' responses go with how well the model predicts.

The "correlate transistors with behaviour" step of Jonas & Kording (2017): each unit of a
recording is correlated (Spearman) with a per-token behaviour of the model that made it —
``loss`` (nats), ``correct`` (argmax hit), ``confidence`` (the top next-token probability)
or ``entropy`` (of the next-token distribution, nats) — with BH-FDR across units.

**Alignment.** A unit's response at token ``t`` is paired with the prediction made *from*
``t`` (``align="context"`` in :mod:`llmscope.behaviour`): the loss of predicting ``t + 1``,
the confidence of that prediction. A response can only shape predictions after it, so this is
the reading in which a unit can cause the behaviour; the last token of a sequence predicts
nothing scored and drops out.

**Why not scipy's p-values.** Tokens of one sequence are not independent: responses and
behaviour both drift along a sequence, so a t-test across tokens finds "correlates" in pure
noise. Each unit's p-value is instead calibrated against a null of the same structure: the
behaviour circularly shifted within each sequence by a random offset (``n_controls`` times),
which keeps both series' autocorrelation and breaks only their alignment; ``p`` is two-sided
normal on ``(rho - null_mean) / null_sd``. The control is one more independent shift, tested
the same way (``rho_control``, ``p_control``, ``q_control``): its FDR discoveries are false by
construction.

Example:
    >>> import llmscope
    >>> from llmscope import behaviour_correlates
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> r = behaviour_correlates(model, rec, "loss", n_controls=20, progress=False)
    >>> r.df.columns[:3].tolist()
    ['rho', 'p', 'q']
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from llmscope.stimuli import trials
from llmscope.analysis.responses import check_recording, resolve, scalar
from llmscope import checks, identity
from llmscope.checks import draws, flag
from llmscope.analysis.stats import fdr
from llmscope.behaviour import confidence, correct, entropy, evaluate, loss
from llmscope.errors import AnalysisError
from llmscope.result import Result
from llmscope.sites import UnitsLike, unit_labels
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

    from llmscope.recording import Recording


BEHAVIOURS: dict[str, Callable[..., np.ndarray]] = {"loss": loss, "correct": correct, "confidence": confidence,
                                                    "entropy": entropy}


def _standard_ranks(values: np.ndarray) -> np.ndarray:
    """Mid-ranks along axis 0, centred and scaled to unit variance (NaN where a column is constant)."""
    from scipy.stats import rankdata

    r = rankdata(values, axis=0)
    r -= r.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return r / np.sqrt((r ** 2).mean(0))


def circular_shifts(seq: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[len(seq), n]`` row indices: each column moves every row ``o`` places along its own
    sequence, wrapping around (``o`` drawn per sequence and column from 1..length-1; a
    one-row sequence stays put). Rows of one sequence must be contiguous.

    Example:
        >>> import numpy as np
        >>> from llmscope.analysis.correlates import circular_shifts
        >>> circular_shifts(np.array([0, 0, 0, 1]), 1, np.random.default_rng(0))[:, 0].tolist()
        [2, 0, 1, 3]
    """
    starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
    ends = np.r_[starts[1:], len(seq)]
    out = np.empty((len(seq), n), dtype=np.int64)
    for a, e in zip(starts, ends):
        length = e - a
        shift = rng.integers(1, length, size=n) if length > 1 else np.zeros(n, dtype=np.int64)
        out[a:e] = a + (np.arange(length)[:, None] + shift[None]) % length
    return out


def _iid_discoveries(rho: pd.Series, n: int) -> int:
    """Units that scipy's t-test of rho, which takes the ``n`` tokens as independent, puts at q < 0.05."""
    from scipy import stats

    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(rho.to_numpy()) * np.sqrt((n - 2) / (1 - rho.to_numpy() ** 2))
    return int((fdr(2 * stats.t.sf(t, n - 2)) < 0.05).sum())


class CorrelatesResult(Result):
    """What :func:`behaviour_correlates` returns.

    ``.df``, indexed by ``(site, unit)``, strongest first: ``rho`` (Spearman, as
    ``scipy.stats.spearmanr``), ``p`` (against the shift null), ``q`` (BH-FDR across units),
    ``abs_rho`` (``|rho|``, the order of the table and what :meth:`top` ranks by), ``null_mean``,
    ``null_sd`` (of rho under the null), and ``rho_control``, ``p_control``, ``q_control`` for
    the control shift.

    ``.meta``: ``model``, ``fingerprint``, ``stimuli``, ``behaviour``, ``align`` (``"context"``),
    ``n_rows``, ``n_controls``, ``seed``, ``control``, ``n_significant`` and
    ``n_significant_control`` (q < 0.05), and ``n_significant_iid``, ``n_significant_control_iid``
    (what scipy's p-values, which take tokens as independent, would have claimed: the control's
    count shows the excess).

    ``.plot()``: a volcano plot of units and control.
    """

    kind = "behaviour_correlates"
    rank_by = "abs_rho"

    def plot(self) -> "go.Figure":
        """A volcano plot: each unit's rho against -log10 p, and the control shift's beside them."""
        import plotly.graph_objects as go

        df = self.df
        labels = unit_labels(df.index)
        fig = go.Figure([
            go.Scatter(x=df[f"rho{tag}"], y=-np.log10(df[f"p{tag}"].clip(lower=1e-300)), mode="markers", text=labels,
                       name="shifted behaviour (control)" if tag else "units", opacity=0.6,
                       hovertemplate="%{text}<br>rho %{x:.3f}<br>-log10 p %{y:.2f}<extra></extra>")
            for tag in ("", "_control")])
        return fig.update_layout(title=f"units vs {self.meta['behaviour']} of the prediction they precede",
                                 xaxis_title="Spearman rho", yaxis_title="-log10 p (shift null)")


@renamed(n_null="n_controls")
def behaviour_correlates(model: "TransformerBridge", recording: "Recording", behaviour: str = "loss",
                         units: UnitsLike | None = None, *, include_bos: bool = False, n_controls: int = 100,
                         seed: int = 0, batch_size: int = 8, progress: bool = True) -> CorrelatesResult:
    """Spearman correlation of every unit with a per-token behaviour (runs the model once, to
    measure the behaviour on the recording's stimuli; the responses are read from the recording).

    Args:
        model: the model that made ``recording`` (checked by its weights' fingerprint).
        recording: a whole recording (not a selection: behaviour needs whole sequences).
        behaviour: ``"loss"``, ``"correct"``, ``"confidence"`` or ``"entropy"`` of the
            prediction made from each token (see the module docstring).
        units: any form of units (a site, pairs, a unit table); all recorded units by default.
        include_bos: keep BOS rows.
        n_controls: circular shifts of the behaviour in the null that calibrates the p-values (>= 2).
        seed: seeds the shifts.
        batch_size: sequences per forward pass.
        progress: show a progress bar.

    Returns:
        :class:`CorrelatesResult` (columns and meta keys in its docstring).

    Example:
        >>> import llmscope
        >>> from llmscope import behaviour_correlates
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> r = behaviour_correlates(model, rec, "loss", "attn.1", n_controls=20, progress=False)
        >>> r.df.index[:1].tolist(), bool(r.df.rho.iloc[0] < 0)
        ([('attn.1', 0)], True)
    """
    from scipy import stats
    from llmscope.progress import progress_bar

    provenance = check_recording(recording, "behaviour_correlates")
    if not isinstance(behaviour, str) or behaviour not in BEHAVIOURS:
        raise AnalysisError.Unknown(f"unknown behaviour {behaviour!r}; choose one of {list(BEHAVIOURS)}.")
    n_controls, seed = draws(n_controls, "n_controls", "resample", minimum=2), checks.seed(seed)
    progress = flag(progress, "progress")
    resolved = resolve(recording, [(s, None) for s in recording.sites] if units is None else units)
    identity.check(recording.fingerprint, model, f"the recording {recording.name!r}", "weights", AnalysisError,
                   "Behaviour must come from the model that made the responses: pass that model.")
    stimuli = recording.stimuli
    measured = evaluate(model, stimuli, {"value": partial(BEHAVIOURS[behaviour], align="context")},
                        batch_size=batch_size).df["value"].to_numpy()
    keep = trials.rows(stimuli.tokens, include_bos) & np.isfinite(measured)
    if keep.sum() < 3 or np.unique(measured[keep]).size < 2:
        raise AnalysisError(f"{behaviour} takes {np.unique(measured[keep]).size} value(s) on the {int(keep.sum())} "
                            "rows that have one; a correlation needs at least 3 rows and 2 values.")
    rng = np.random.default_rng(seed)
    y = _standard_ranks(measured[keep])
    shifted = y[circular_shifts(stimuli.tokens["seq"].to_numpy()[keep], n_controls + 1, rng)]  # [rows, null + control]
    parts = []
    for s, idx in progress_bar(resolved, desc="correlates", unit="site", show=progress, leave=False):
        X = _standard_ranks(scalar(recording, s.name, idx)[keep].astype(np.float64))
        rho, null = (X.T @ y) / len(y), (X.T @ shifted) / len(y)             # [units], [units, null + 1]
        parts.append(pd.DataFrame({"rho": rho, "null_mean": null[:, :-1].mean(1), "null_sd": null[:, :-1].std(1, ddof=1),
                                   "rho_control": null[:, -1]}, index=s.unit_index(idx)))
    df = pd.concat(parts)
    df["abs_rho"] = df["rho"].abs()
    with np.errstate(invalid="ignore", divide="ignore"):
        for tag in ("", "_control"):
            df[f"p{tag}"] = 2 * stats.norm.sf(np.abs(df[f"rho{tag}"] - df["null_mean"]) / df["null_sd"])
            df[f"q{tag}"] = fdr(df[f"p{tag}"].to_numpy())
    df = df[["rho", "p", "q", "abs_rho", "null_mean", "null_sd", "rho_control", "p_control", "q_control"]]
    df = df.iloc[np.argsort(-np.nan_to_num(df["abs_rho"].to_numpy(), nan=-1.0), kind="stable")]
    meta = dict(**provenance, behaviour=behaviour, align="context", n_rows=int(keep.sum()), n_controls=n_controls,
                seed=seed, control="one more independent circular shift of the behaviour, tested the same way",
                n_significant=int((df["q"] < 0.05).sum()), n_significant_control=int((df["q_control"] < 0.05).sum()),
                n_significant_iid=_iid_discoveries(df["rho"], len(y)),
                n_significant_control_iid=_iid_discoveries(df["rho_control"], len(y)))
    return CorrelatesResult(df, meta)


__all__ = ["behaviour_correlates", "CorrelatesResult", "circular_shifts", "BEHAVIOURS"]
