"""Shared statistics: the FDR adjustment is scipy's, NaNs stay out of the count."""

from __future__ import annotations

import numpy as np
from scipy import stats

from llmscope.analysis.stats import fdr


def test_fdr_matches_scipy_with_ties_and_nans():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=500) ** 3, [0.01, 0.01, 0.01, 1.0, 0.0]])
    np.testing.assert_allclose(fdr(p), stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    with_nan = np.insert(p, [3, 50], np.nan)
    out = fdr(with_nan)
    assert np.isnan(out[[3, 51]]).all()
    np.testing.assert_allclose(np.delete(out, [3, 51]), fdr(p), rtol=1e-12)
    assert np.isnan(fdr(np.array([np.nan, np.nan]))).all()
    assert fdr(np.array([])).shape == (0,)


# ---------------------------------------------------------------- the cluster bootstrap


def test_interval_and_p_value_agree_at_every_level():
    """p inverts the percentile interval: the 1 - alpha interval excludes zero exactly when
    p < alpha, with ties at zero, NaN and infinite draws (left out of both)."""
    from llmscope.analysis.stats import interval, p_value

    rng = np.random.default_rng(1)
    draws = rng.normal(rng.normal(0, 0.3, (400, 1)), 0.15, (400, 1000)).round(2)  # many draws exactly 0
    draws[::7, :13] = np.nan
    draws[::11, -5:] = np.inf
    p = p_value(draws)
    assert ((p >= 1 / 1000) & (p <= 1)).all()
    for alpha in (0.2, 0.1, 0.05, 0.01):
        low, high = interval(draws, 1 - alpha).T
        excludes = (low > 0) | (high < 0)
        np.testing.assert_array_equal(excludes, p < alpha)
        assert 0 < excludes.sum() < len(draws)  # both outcomes occur
        np.testing.assert_array_equal(interval(-draws, 1 - alpha), -interval(draws, 1 - alpha)[:, ::-1])


def test_cluster_bootstrap_resamples_sequences_as_scipy_does():
    """A mean over tokens whose sequences differ in level: the interval is scipy's paired
    percentile bootstrap of sum / count over sequences, and far wider than resampling tokens."""
    from llmscope.analysis.stats import cluster_bootstrap, interval

    rng = np.random.default_rng(0)
    n = rng.integers(5, 60, 30)
    tokens = [rng.normal(rng.normal(0.2, 1.0), 0.1, k) for k in n]  # one level per sequence
    sums = np.array([t.sum() for t in tokens])
    ours = interval(cluster_bootstrap(sums, n, 20_000, seed=0))
    ref = stats.bootstrap((sums, n.astype(float)), lambda s, c, axis=-1: s.sum(axis) / c.sum(axis), paired=True,
                          vectorized=True, n_resamples=20_000, method="percentile", random_state=1).confidence_interval
    width = ref.high - ref.low
    assert abs(ours[0] - ref.low) < 0.05 * width and abs(ours[1] - ref.high) < 0.05 * width, (ours, ref)
    flat = np.concatenate(tokens)
    by_token = interval(cluster_bootstrap(flat, np.ones_like(flat), 2000, seed=0))
    assert by_token[1] - by_token[0] < width / 4


def test_cluster_bootstrap_shares_one_draw_across_statistics():
    from llmscope.analysis.stats import cluster_bootstrap

    sums = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    draws = cluster_bootstrap(sums, np.array([[1, 1, 1, 1], [2, 2, 2, 2]]), 50, seed=3)
    np.testing.assert_allclose(draws[0], 2 * draws[1])  # the same sequences in every draw
    assert np.isnan(cluster_bootstrap(np.array([1.0]), np.array([1]), 10)).all()  # one sequence: no interval
