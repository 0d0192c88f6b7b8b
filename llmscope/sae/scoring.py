"""Units against gold labels: the F1 of the best unit per class, one rule for every kind of unit.

A unit (a feature, a neuron, a random direction) *detects* a class when its response is above
a threshold, or below it (either polarity: a random direction and its negative are equally
random). For each unit the polarity and threshold that maximise F1 on the training rows are
chosen; the unit with the best training F1 is the class's *best unit*, and its F1 on the
held-out rows, with that threshold, is the score. Features, neurons and random directions all
go through this same rule, so their scores compare.

Example:
    >>> import numpy as np
    >>> from llmscope.sae.scoring import best_units
    >>> rng = np.random.default_rng(0)
    >>> y = rng.random(400) < 0.3
    >>> X = np.c_[rng.normal(size=400), y + 0.1 * rng.normal(size=400)]
    >>> train = np.arange(400) < 200
    >>> best = best_units(X, y, train).iloc[0]
    >>> int(best["unit"]), bool(best["f1_test"] > 0.95)
    (1, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from llmscope.errors import AnalysisError

COLUMNS = 256  # units scored at once (memory: rows x COLUMNS floats)


def thresholds(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label (column of boolean ``Y [n, c]``) and unit (column of ``X [n, m]``): the
    F1-optimal ``(threshold, sign, f1)``, each ``[c, m]``; the unit predicts ``sign * x > threshold``.
    Each unit's values are sorted once for every label."""
    n, m = X.shape
    Y = Y.astype(np.float64)
    n_pos = Y.sum(0)[:, None]  # [c, 1]
    best = (np.full((Y.shape[1], m), np.inf), np.ones((Y.shape[1], m)), np.zeros((Y.shape[1], m)))
    order = np.argsort(-X, axis=0, kind="stable")
    for sign in (1.0, -1.0):
        o = order if sign > 0 else order[::-1]
        Vs = np.take_along_axis(sign * X, o, axis=0)
        cut = np.ones((n, m), dtype=bool)
        cut[:-1] = Vs[:-1] > Vs[1:]  # a cut only between distinct values (ties go together)
        nxt = np.vstack([Vs[1:], np.full((1, m), -np.inf)])
        midpoint = np.where(np.isfinite(nxt), (Vs + nxt) / 2, -np.inf)
        predicted = np.arange(1, n + 1)[:, None]
        for c in range(Y.shape[1]):
            tp = np.cumsum(Y[o, c], axis=0)
            f1 = np.where(cut, 2 * tp / (n_pos[c] + predicted), -1.0)
            i = f1.argmax(axis=0)
            score = f1[i, np.arange(m)]
            better = score > best[2][c]
            best[0][c] = np.where(better, midpoint[i, np.arange(m)], best[0][c])
            best[1][c] = np.where(better, sign, best[1][c])
            best[2][c] = np.where(better, score, best[2][c])
    return best


def f1(X: np.ndarray, y: np.ndarray, threshold: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """F1 of each column's detector ``sign * x > threshold`` against ``y``."""
    pred = sign * X > threshold
    tp = (pred & y[:, None]).sum(0)
    denom = pred.sum(0) + y.sum()
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def best_units(X: np.ndarray, Y: Any, train: Any) -> pd.DataFrame:
    """The best unit of ``X [n, m]`` for each boolean label (a column of ``Y [n, c]``, or one
    label ``[n]``): thresholds and the choice on the ``train`` rows, F1 on the others. One row
    per label: ``unit``, ``f1_train``, ``f1_test``, ``threshold``, ``sign``."""
    X, Y, train = np.asarray(X, dtype=np.float32), np.asarray(Y, dtype=bool), np.asarray(train, dtype=bool)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if X.ndim != 2 or len(X) != len(Y) or len(Y) != len(train) or train.all() or not train.any():
        raise AnalysisError(f"best_units needs X [n, m], Y and train of n rows, with rows on both sides of the split; "
                            f"got X {X.shape}, Y {Y.shape}, train {train.shape} ({int(train.sum())} train rows).")
    rows = [None] * Y.shape[1]
    for lo in range(0, X.shape[1], COLUMNS):
        part = X[:, lo:lo + COLUMNS]
        thr, sign, score = thresholds(part[train], Y[train])
        for c in range(Y.shape[1]):
            j = int(score[c].argmax())
            if rows[c] is None or score[c, j] > rows[c]["f1_train"]:
                test = f1(part[~train][:, [j]], Y[~train, c], thr[c, [j]], sign[c, [j]])[0]
                rows[c] = {"unit": lo + j, "f1_train": float(score[c, j]), "f1_test": float(test),
                           "threshold": float(thr[c, j]), "sign": float(sign[c, j])}
    return pd.DataFrame(rows)


def random_directions(d: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors in ``d`` dimensions (Gaussian, normalised), ``[d, n]`` float32."""
    R = np.random.default_rng(seed).standard_normal((d, n))
    return (R / np.linalg.norm(R, axis=0)).astype(np.float32)


def compare(families: dict[str, np.ndarray], labels: Any, train: Any, classes: Any = None) -> pd.DataFrame:
    """Per class of ``labels``, each family's best unit (:func:`best_units`): one row per
    ``(class, family)`` with ``unit``, ``f1_train``, ``f1_test``, ``threshold``, ``sign``.

    ``families`` maps a name (``"features"``, ``"neurons"``, ``"random"``) to a response
    matrix ``[n, m]`` over the same rows as ``labels`` and ``train``."""
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    Y = np.stack([labels == c for c in classes], axis=1)
    parts = []
    for name, X in families.items():
        part = best_units(X, Y, train)
        part.insert(0, "family", name)
        part.insert(0, "class", classes)
        parts.append(part)
    out = pd.concat(parts).set_index(["class", "family"]).sort_index(level=0, sort_remaining=False)
    out["unit"] = out["unit"].astype(int)
    return out


__all__ = ["thresholds", "f1", "best_units", "random_directions", "compare"]
