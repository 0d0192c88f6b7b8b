"""Statistics every analysis shares: cluster bootstrap over sequences, FDR.

Example:
    >>> import numpy as np
    >>> fdr(np.array([0.001, 0.02, 0.5])).round(3).tolist()
    [0.003, 0.03, 0.5]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmscope.checks import draws


def fdr(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN p-values stay NaN and are not counted.

    The same numbers as ``scipy.stats.false_discovery_control(p, method="bh")`` (a test checks
    it), in numpy: importing scipy.stats costs longer than adjusting 46,080 p-values.
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    n = int(ok.sum())
    if n:
        order = np.argsort(p[ok], kind="stable")
        ranked = p[ok][order] * n / np.arange(1, n + 1)
        adjusted = np.empty(n)
        adjusted[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
        out[ok] = adjusted
    return out


def ratio_ci(delta: np.ndarray, n: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of ``sum(delta) / sum(n)``, resampling clusters (sequences).

    ``delta[i]`` is cluster i's summed difference and ``n[i]`` its number of rows.
    """
    from scipy import stats

    n_boot = draws(n_boot, "n_boot", "resample")
    if len(delta) < 2:
        return np.nan, np.nan
    ci = stats.bootstrap((np.asarray(delta, float), np.asarray(n, float)),
                         lambda d, c, axis=-1: d.sum(axis) / c.sum(axis), paired=True, vectorized=True,
                         n_resamples=n_boot, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def ratio_cis(delta: np.ndarray, n: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Many :func:`ratio_ci` at once (the lesion atlas has thousands): the 95% percentile-bootstrap
    interval of ``delta.sum(1) / n.sum()`` for every row of ``delta [rows, clusters]``, resampling
    clusters (sequences) with one draw shared by all rows: ``[rows, 2]``; NaN with fewer than two."""
    if len(n) < 2:
        return np.full((len(delta), 2), np.nan)
    draws = rng.multinomial(len(n), np.full(len(n), 1 / len(n)), size=n_boot).T  # [seqs, n_boot]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (delta @ draws) / (n @ draws)
    return np.nanpercentile(boot, [2.5, 97.5], axis=1).T


__all__ = ["fdr", "ratio_ci", "ratio_cis"]
