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
