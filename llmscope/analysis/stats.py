"""Statistics every analysis shares: FDR, and the one cluster bootstrap over sequences.

Tokens of one sequence are not independent, so every interval of an effect measured over tokens
resamples whole sequences. :func:`cluster_bootstrap` draws ratios of sums (a mean over tokens is
the sum over sequences of their token sums, over the sum of their token counts); several
statistics drawn in one call share the resampled sequences, so their differences and ratios are
bootstrapped too. :func:`interval` and :func:`p_value` read the same draws: the p-value inverts
the percentile interval, so for every ``level`` the interval excludes zero exactly when
``p < 1 - level`` (while ``1 - level`` is above ``1 / n_boot``, p's resolution).

Example:
    >>> from llmscope.analysis.stats import cluster_bootstrap, fdr, interval, p_value
    >>> import numpy as np
    >>> fdr(np.array([0.001, 0.02, 0.5])).round(3).tolist()
    [0.003, 0.03, 0.5]
    >>> draws = cluster_bootstrap(np.array([3.0, 5.0, 4.0, 6.0]), np.array([2, 2, 2, 2]), 1000, seed=0)
    >>> low, high = interval(draws)
    >>> bool(0 < low < 2.25 < high), float(p_value(draws))
    (True, 0.001)
"""

from __future__ import annotations

import numpy as np

from llmscope import checks

LEVEL = 0.95  # every interval's coverage unless a caller asks for another


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


def cluster_bootstrap(sums: np.ndarray, counts: np.ndarray, n_boot: int = 2000,
                      seed: int | np.random.Generator = 0) -> np.ndarray:
    """Bootstrap draws of ``sums.sum(-1) / counts.sum(-1)``, resampling clusters (sequences).

    ``sums[..., i]`` is cluster i's sum of a statistic over its rows and ``counts[i]`` (or
    ``counts[..., i]``, one per statistic) its number of rows, so the statistic is a mean over
    rows. One multinomial draw of the clusters is shared by every statistic: ``[..., n_boot]``.
    A draw whose resampled count is zero is NaN (the statistic is undefined there; :func:`interval`
    and :func:`p_value` leave it out). With fewer than two clusters every draw is NaN.

    Example:
        >>> import numpy as np
        >>> from llmscope.analysis.stats import cluster_bootstrap
        >>> cluster_bootstrap(np.array([[1.0, 3.0], [2.0, 2.0]]), np.array([1, 1]), 4).shape
        (2, 4)
    """
    n_boot = checks.draws(n_boot, "n_boot", "resample")
    sums, counts = np.asarray(sums, float), np.asarray(counts, float)
    n = sums.shape[-1]
    if n < 2:
        return np.full((*np.broadcast_shapes(sums.shape, counts.shape)[:-1], n_boot), np.nan)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).T.astype(float)  # [clusters, n_boot]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums @ weights) / (counts @ weights)


def _finite_sorted(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draws sorted along the last axis (NaN last) and the number of finite ones."""
    draws = np.asarray(draws, float)
    return np.sort(np.where(np.isinf(draws), np.nan, draws), axis=-1), np.isfinite(draws).sum(-1)


def interval(draws: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """The percentile interval of bootstrap ``draws`` (last axis): ``[..., 2]`` (low, high).

    With F finite draws in order d(1) <= ... <= d(F) and j = ceil(F (1 - level) / 2), the
    interval is ``[d(j), d(F + 1 - j)]``: symmetric, so the interval of ``-draws`` is minus this
    one reversed. NaN and infinite draws are left out; NaN where none is finite.

    Example:
        >>> import numpy as np
        >>> from llmscope.analysis.stats import interval
        >>> interval(np.arange(1.0, 41.0)).tolist()
        [1.0, 40.0]
    """
    ordered, finite = _finite_sorted(draws)
    j = np.maximum(np.ceil(np.round(finite * (1 - level) / 2, 9)).astype(int), 1)
    low = np.take_along_axis(ordered, np.expand_dims(np.minimum(j, np.maximum(finite, 1)) - 1, -1), -1)[..., 0]
    high = np.take_along_axis(ordered, np.expand_dims(np.maximum(finite - j, 0), -1), -1)[..., 0]
    out = np.stack([low, high], axis=-1)
    out[finite == 0] = np.nan
    return out


def p_value(draws: np.ndarray) -> np.ndarray:
    """Two-sided p-value against zero from bootstrap ``draws`` (last axis): twice the share of
    finite draws on the far side of zero from the rest, ``2 min(#{d <= 0}, #{d >= 0}) / F``,
    at most 1 and at least ``1 / F`` (the resolution of F draws). It inverts :func:`interval`:
    the ``level`` interval excludes zero exactly when ``p < 1 - level`` (for ``1 - level > 1 / F``).
    NaN where no draw is finite.

    Example:
        >>> import numpy as np
        >>> from llmscope.analysis.stats import p_value
        >>> float(p_value(np.array([-1.0, 1, 2, 3])))
        0.5
    """
    draws = np.asarray(draws, float)
    ok = np.isfinite(draws)
    finite = ok.sum(-1)
    below, above = (ok & (draws <= 0)).sum(-1), (ok & (draws >= 0)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite > 0, np.clip(np.maximum(2 * np.minimum(below, above), 1) / finite, None, 1.0),
                        np.nan)


__all__ = ["fdr", "cluster_bootstrap", "interval", "p_value", "LEVEL"]
