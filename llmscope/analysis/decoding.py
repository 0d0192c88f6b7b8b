"""Decoding probes: how well a linear read-out of some units tells a label of the token.

:func:`decode` fits a cross-validated probe (``StandardScaler`` + multinomial
``LogisticRegression``, scikit-learn) from the responses of any unit set (a site, a site and
indices, a unit table such as ``tuning(...).top(10)``) to a categorical trial-table column:

* ``target="current"``: the label of the token whose responses are read;
* ``target="next"``: the label of the next token of the same sequence (the token being
  predicted), read from the responses at the current token; rows without a next token (the
  last of a sequence, or a gap in a selection) are dropped.

Folds are whole sequences (``GroupKFold`` on ``seq``): no document is in both the training and
the test folds, so a probe cannot pass by remembering documents. Every token is predicted once,
by the probe fitted on the folds that do not hold its sequence; ``accuracy`` is the share of
these out-of-fold predictions that are right.

Controls, each fitted on the same folds and reported beside the probe (``n_controls`` draws of
each of the first two):

* ``accuracy_control_units``: as many random units from the same sites (as many per site as
  the set has there). When the set is every unit of its sites no other set of that size
  exists: the control is NaN and ``meta["control_units_note"]`` says so;
* ``accuracy_control_labels``: the labels permuted within each sequence (as
  ``sklearn.model_selection.permutation_test_score`` does with groups), which also give the
  permutation test's p-value ``(1 + #{permuted >= real}) / (1 + n_controls)``;
* ``accuracy_control_majority``: ``DummyClassifier("most_frequent")``, the training folds'
  commonest class.

The probe: lbfgs (the default solver: multinomial, fast on dense ``[tokens, <= a few thousand]``
matrices), in float64, fitted to convergence (``TOL``; ``MAX_ITER`` is a cap no fit measured
here reaches; ``converged`` says the share of fits that converged), on ``THREADS`` BLAS
threads (these matrices are small, and threads spinning on busy cores cost up to 10x; the
results do not depend on it).

**Regularisation is tuned.** Inside each outer fold, ``C`` is chosen from ``CS`` by
``GridSearchCV`` with ``GroupKFold(INNER_FOLDS)`` over that fold's training sequences (fewer
inner folds if it holds fewer sequences, at least 2), on the real labels, by log loss (a proper
score, continuous in the coefficients, so rounding cannot flip the choice between two Cs as it
can flip a count of right answers); the fold's test rows play no part in the choice. A fixed C
misleads: all 512 neurons of the organism's mlp.0 read the next token's tag at 0.573 with C=1,
overfitted, and at 0.648 with C chosen this way (0.01 in every fold; 40 documents, 5 folds).
The controls (random units, permuted labels) are fitted with that fold's C, so they cost one
fit per fold each (a converged fit on permuted labels takes longer the weaker the
regularisation); the permutation test is then conditional on the C chosen. That is why the
folds are fitted here rather than by ``cross_validate`` or ``permutation_test_score``: both fit
one estimator, with one C, on every fold (and the latter scores the mean of the folds, not the
pooled out-of-fold predictions).

:func:`decode_curve` sweeps the number of units: accuracy of the first k units of a ranked
table (or of a ``{k: units}`` mapping) against k random units of the same sites, on one set of
folds, with the spread over random draws.

Caveat: units chosen on the same tokens (``tuning(rec, ...).top(10)`` of the recording being
decoded) saw the test folds' labels when chosen; choose them on other stimuli for an unbiased
figure.

Example:
    >>> import llmscope
    >>> from llmscope import decode
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> res = decode(rec, ("mlp.0", range(64)), "pos_tag", folds=2, n_controls=2, progress=False)
    >>> r = res.df.iloc[0]
    >>> bool(r.accuracy > r.accuracy_control_labels and r.accuracy > r.accuracy_control_majority)
    True
    >>> res.data.sizes["draw"], res.data.sizes["permutation"]
    (2, 2)
"""

from __future__ import annotations

import functools
import html
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from llmscope import checks
from llmscope.analysis import events, responses
from llmscope.checks import count, draws, flag
from llmscope.errors import AnalysisError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.result import Result, unit_dataset
from llmscope.sites import Site, UnitsLike, table_index
from llmscope.stimuli import trials
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import xarray as xr

TARGETS = ("current", "next")
CS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the C grid (inverse L2 strength on standardised responses), per outer fold
INNER_FOLDS = 3  # GroupKFold splits of an outer fold's training sequences that choose C
TUNING_FITS = len(CS) * INNER_FOLDS  # fits per outer fold that choose C
TOL = 1e-6  # lbfgs stops when the largest gradient component is below this
INNER_TOL = 1e-3  # the same for the fits that only rank the Cs: a fraction of the steps, the same choices measured
MAX_ITER = 10_000  # a cap, not a budget: fits here converge within ~1,500 steps
THREADS = 1  # BLAS/OpenMP threads per fit; see the module docstring
KS = (1, 2, 5, 10, 20, 50, 100)  # decode_curve's default set sizes (issue 11's)


# ---------------------------------------------------------------- the task: rows, labels, folds, responses


@dataclass
class _Task:
    """Everything a fit needs, checked and read once: the rows decoded, their labels, the folds,
    and the responses of every unit of the sites involved (random draws pick from them)."""

    rows: np.ndarray  # [n] trial-table rows whose responses are read
    y: np.ndarray  # [n] class codes of the label decoded (at the row, or at the next row)
    classes: list[Any]
    groups: np.ndarray  # [n] sequence of each row
    splits: list[tuple[np.ndarray, np.ndarray]]  # (train, test) positions in 0..n-1
    where: np.ndarray | None  # [n] bool, the where= selection at the token whose label is decoded
    X: np.ndarray  # [n, units of the sites] float64
    offsets: dict[str, int]  # first column of each site in X
    sizes: dict[str, int]  # units of each site


def _target_rows(tokens: pd.DataFrame, keep: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rows read, rows whose label is decoded)``: the same rows, or each row and the next
    token of its sequence (the row after it, one position on)."""
    src = np.flatnonzero(keep)
    if target == "current":
        return src, src
    seq, pos = tokens["seq"].to_numpy(), tokens["pos"].to_numpy()
    nxt = src + 1
    ok = nxt < len(tokens)
    ok[ok] = (seq[nxt[ok]] == seq[src[ok]]) & (pos[nxt[ok]] == pos[src[ok]] + 1)
    return src[ok], nxt[ok]


def _folds(y: np.ndarray, groups: np.ndarray, folds: int, classes: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold

    n_seqs = len(np.unique(groups))
    if n_seqs < folds:
        raise AnalysisError(f"folds={folds} needs at least {folds} sequences (folds hold whole sequences); "
                            f"the rows decoded come from {n_seqs}. Use fewer folds or more stimuli.")
    splits = list(GroupKFold(n_splits=folds).split(y, y, groups))
    fewest = min(len(np.unique(groups[train])) for train, _ in splits)
    if fewest < 2:
        raise AnalysisError(f"choosing C cross-validates over whole sequences inside every training fold, so each "
                            f"needs at least 2; with folds={folds} one holds {fewest} of the {n_seqs} sequences. "
                            "Use more stimuli.")
    for i, (train, _) in enumerate(splits):
        if len(np.unique(y[train])) < 2:
            raise AnalysisError(f"the training folds of fold {i} hold one class only "
                                f"({classes[int(y[train][0])]!r}); use fewer folds or more varied stimuli.")
    return splits


def _task(recording: Recording, resolved: list[tuple[Site, np.ndarray]], label: str, target: str,
          folds: int, include_bos: bool, where: str | None) -> _Task:
    tokens = recording.tokens
    selected = None if where is None else events.rows(tokens, where)
    src, tgt = _target_rows(tokens, trials.rows(tokens, include_bos), target)
    if not len(src):
        raise AnalysisError(f"the recording {recording.name!r} has no rows to decode ({len(recording)} rows; "
                            f"target={target!r} needs a next token in the same sequence).")
    values = trials.labels(tokens.iloc[tgt], label)  # indexed by trial-table row; missing labels dropped
    ok = np.isin(tgt, values.index.to_numpy())
    src, tgt = src[ok], tgt[ok]
    codes, classes = pd.factorize(values.loc[tgt], sort=True)
    classes = classes.tolist()
    groups = tokens["seq"].to_numpy()[src]
    mask = None if selected is None else selected[tgt]
    if mask is not None and not mask.any():
        raise AnalysisError(f"no row decoded has {where!r} true; choose another where= or None.")
    sites = [(s.name, None) for s, _ in resolved]
    X, _ = responses.matrix(recording, sites, _mask(len(tokens), src))  # refuses non-finite responses first
    X = X.astype(np.float64)  # a float32 fit stops short of TOL (rounding), and where depends on the threads
    splits = _folds(codes, groups, folds, classes)
    sizes = {s.name: s.n_units for s, _ in resolved}
    offsets = dict(zip(sizes, np.cumsum([0, *sizes.values()])[:-1].tolist()))
    return _Task(src, codes, classes, groups, splits, mask, X, offsets, sizes)


def _mask(n: int, rows: np.ndarray) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    return keep


# ---------------------------------------------------------------- fitting


def _probe(C: float = 1.0, tol: float = TOL) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=tol, max_iter=MAX_ITER))


def _majority(C: float = 1.0) -> Any:
    from sklearn.dummy import DummyClassifier

    return DummyClassifier(strategy="most_frequent")


@dataclass
class _Score:
    accuracy: float  # out-of-fold predictions right, over all rows
    sem: float  # s.e.m. of the per-fold accuracies
    converged: float  # share of the fits that converged (NaN: an estimator that does not iterate)
    accuracy_where: float  # accuracy over the where= rows (NaN without where)
    predicted: np.ndarray  # [n] out-of-fold predicted class codes
    C: list[float]  # the C of each fold (NaN: no C)


NOT_FITTED = _Score(np.nan, np.nan, np.nan, np.nan, np.empty(0, dtype=int), [])  # a control that cannot exist


def _neg_log_loss(model: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Minus the mean log loss of ``model`` on ``(X, y)``; a class the model never saw in training
    (an inner fold of few sequences may lack one) gets probability 1e-15, as for every C alike.
    (scikit-learn's ``neg_log_loss`` scores NaN there, and a grid of NaNs picks the first C.)"""
    proba = np.zeros((len(y), int(max(y.max(), model.classes_.max())) + 1))
    proba[:, model.classes_] = model.predict_proba(X)
    return float(np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))))


def _choose_C(task: _Task, columns: np.ndarray, bar: tqdm) -> list[float]:
    """The C of each outer fold: ``GridSearchCV`` over ``CS`` (log loss) with ``GroupKFold`` of
    ``INNER_FOLDS`` (or as many as the fold has training sequences) on the fold's training rows
    and real labels, at ``INNER_TOL``."""
    from sklearn.model_selection import GridSearchCV, GroupKFold

    X = task.X[:, columns]
    Cs = []
    for train, _ in task.splits:
        inner = GroupKFold(min(INNER_FOLDS, len(np.unique(task.groups[train]))))
        search = GridSearchCV(_probe(tol=INNER_TOL), {"logisticregression__C": list(CS)}, scoring=_neg_log_loss,
                              cv=inner, refit=False).fit(X[train], task.y[train], groups=task.groups[train])
        Cs.append(float(search.best_params_["logisticregression__C"]))
        bar.update(len(CS) * INNER_FOLDS)
    return Cs


def _score(task: _Task, columns: np.ndarray | None, y: np.ndarray, Cs: list[float], bar: tqdm,
           make: Callable[[float], Any] = _probe) -> _Score:
    """Out-of-fold predictions: fold i's model fitted with ``Cs[i]`` on its training rows."""
    X = task.X if columns is None else task.X[:, columns]
    predicted = np.empty_like(y)
    per_fold, converged = [], []
    for (train, test), C in zip(task.splits, Cs):
        model = make(C).fit(X[train], y[train])
        predicted[test] = model.predict(X[test])
        per_fold.append(np.mean(predicted[test] == y[test]))
        n_iter = getattr(model[-1] if hasattr(model, "steps") else model, "n_iter_", None)
        converged.append(np.nan if n_iter is None else float(np.max(n_iter) < MAX_ITER))
        bar.update()
    right = predicted == y
    sem = float(np.std(per_fold, ddof=1) / np.sqrt(len(per_fold)))
    return _Score(float(right.mean()), sem, float(np.mean(converged)),
                  float(right[task.where].mean()) if task.where is not None else np.nan, predicted,
                  list(Cs) if make is _probe else [np.nan] * len(Cs))


def _permute_within(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y`` permuted within each group (each sequence keeps its own labels, in a random order)."""
    by_group = np.argsort(groups, kind="stable")
    shuffled = np.lexsort((rng.random(len(y)), groups))
    out = np.empty_like(y)
    out[by_group] = y[shuffled]
    return out


def _columns(task: _Task, resolved: list[tuple[Site, np.ndarray]]) -> np.ndarray:
    return np.concatenate([task.offsets[s.name] + idx for s, idx in resolved])


def _random_columns(task: _Task, resolved: list[tuple[Site, np.ndarray]], rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([task.offsets[s.name] + np.sort(rng.choice(task.sizes[s.name], len(idx), replace=False))
                           for s, idx in resolved])


def _every_unit(resolved: list[tuple[Site, np.ndarray]]) -> bool:
    return all(len(idx) == s.n_units for s, idx in resolved)


def _control_units(task: _Task, resolved: list[tuple[Site, np.ndarray]], n_controls: int, rng: np.random.Generator,
                   Cs: list[float], bar: tqdm) -> list[_Score]:
    """The random-unit control, one score per draw (each fold with the set's C); NOT_FITTED
    draws when no other set exists."""
    if _every_unit(resolved):
        return [NOT_FITTED] * n_controls
    return [_score(task, _random_columns(task, resolved, rng), task.y, Cs, bar) for _ in range(n_controls)]


# ---------------------------------------------------------------- tables


QUANTITIES = ("accuracy", "sem", "converged", "accuracy_where")  # what each fit reports


def _quantities(where: str | None) -> tuple[str, ...]:
    return QUANTITIES if where is not None else QUANTITIES[:3]


def _draws(scores: list[_Score], which: str, where: str | None) -> dict[str, np.ndarray]:
    """``{<quantity>_control_<which>: [draw]}``: each draw's numbers."""
    return {f"{q}_control_{which}": np.array([getattr(s, q) for s in scores], dtype=float) for q in _quantities(where)}


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if len(a) else np.nan


def _row(real: _Score, n_units: int, controls: Mapping[str, dict[str, np.ndarray]], majority: _Score,
         where: str | None) -> dict[str, Any]:
    """One row of a table: the probe's numbers, and beside them each control's mean over its
    draws (and standard deviation) and the majority class's accuracy."""
    row: dict[str, Any] = dict(n_units=n_units, accuracy=real.accuracy, sem=real.sem, converged=real.converged)
    for which, d in controls.items():
        acc = d[f"accuracy_control_{which}"]
        row[f"accuracy_control_{which}"] = _mean(acc)
        row[f"accuracy_control_{which}_sd"] = float(acc.std(ddof=1)) if len(acc) > 1 else np.nan
    row["accuracy_control_majority"] = majority.accuracy
    if where is not None:
        row["accuracy_where"] = real.accuracy_where
        row.update({f"accuracy_where_control_{which}": _mean(d[f"accuracy_where_control_{which}"])
                    for which, d in controls.items()})
        row["accuracy_where_control_majority"] = majority.accuracy_where
    return row


def _converged(real: list[_Score], controls: list[_Score]) -> float:
    """The share of all probe fits that converged (each score weighs its folds alike)."""
    shares = [s.converged for s in [*real, *controls] if np.isfinite(s.converged)]
    return float(np.mean(shares))


# ---------------------------------------------------------------- arguments


def _check(recording: Any, label: Any, target: Any, folds: Any, n_controls: Any, include_bos: Any, seed: Any,
           progress: Any, analysis: str) -> tuple[dict, int, int, int]:
    meta = responses.check_recording(recording, analysis)
    trials.column(recording.tokens, label, "label column")
    checks.choice(target, "target (the token whose label is decoded)", TARGETS)
    folds = count(folds, "folds", minimum=2)
    n_controls = draws(n_controls, "n_controls", "fit", minimum=0)
    seed = checks.seed(seed)
    flag(include_bos, "include_bos")
    flag(progress, "progress")
    return meta, folds, n_controls, seed


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for the random units and the label permutations."""
    units, labels = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(units), np.random.default_rng(labels)


def _units_index(resolved: list[tuple[Site, np.ndarray]]) -> pd.MultiIndex:
    return pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in resolved for i in idx], names=["site", "unit"])


def _task_meta(task: _Task, label: str, target: str, folds: int, include_bos: bool, seed: int,
               where: str | None) -> dict:
    return dict(label=label, target=target, classes=task.classes, n_tokens=len(task.y),
                n_seqs=int(len(np.unique(task.groups))), folds=folds, include_bos=include_bos, seed=seed,
                where=where, n_where=None if task.where is None else int(task.where.sum()),
                probe=(f"StandardScaler + LogisticRegression(lbfgs, tol={TOL}, max_iter={MAX_ITER}), GroupKFold on "
                       f"seq; C from {list(CS)} per fold by GridSearchCV (log loss), GroupKFold({INNER_FOLDS}) on its "
                       "training seqs"),
                permutation="labels permuted within each sequence")


OLD_DRAWS = {"n_random": "units", "n_permutations": "labels"}  # decode's old names, and the control each counted


def _old_draw_names(fn: Callable[..., DecodingResult]) -> Callable[..., DecodingResult]:
    """decode's ``n_random=`` (random-unit draws) and ``n_permutations=`` (label permutations),
    one ``n_controls=`` now, kept for one release with a FutureWarning. Given with different
    values, each still counts its own control (as it did), for that release."""
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> DecodingResult:
        old = {name: kwargs.pop(name) for name in OLD_DRAWS if name in kwargs}
        if not old:
            return fn(*args, **kwargs)
        if "n_controls" in kwargs:
            raise AnalysisError.Type(f"decode() got {' and '.join(f'{n}=' for n in old)} and n_controls=; "
                                     f"{' and '.join(old)} are old names of n_controls: pass n_controls only.")
        warnings.warn(f"decode({'=..., '.join(old)}=...) is now decode(n_controls=...), one count for the random "
                      f"units and the label permutations; {' and '.join(old)} will be removed in the next release.",
                      FutureWarning, stacklevel=2)
        values = list(old.values())
        if len(values) == 1 or values[0] == values[1]:
            return fn(*args, n_controls=values[0], **kwargs)
        bound = inspect.signature(fn).bind(*args, n_controls=old["n_random"], **kwargs)
        bound.apply_defaults()
        return _decode(**bound.arguments, n_labels=old["n_permutations"])

    return inner


# ---------------------------------------------------------------- decode


class DecodingResult(Result):
    """What :func:`decode` returns: one row, the probe beside its controls.

    ``.df``, one row (every fit on the same folds, with the C the probe chose in each):

    =================================  ========================================================
    n_units                            units read
    accuracy                           share of out-of-fold predictions right
    sem                                s.e.m. of the per-fold accuracies
    converged                          share of the probe's fits that converged (within
                                       ``MAX_ITER`` steps)
    accuracy_control_units             mean over ``n_controls`` draws of as many random units
                                       of the same sites (NaN: the set is every unit of its
                                       sites, so no other set exists; also NaN without draws)
    accuracy_control_units_sd          standard deviation over those draws
    accuracy_control_labels            mean over ``n_controls`` label permutations within
                                       sequences; ``accuracy_control_labels_sd`` their spread
    accuracy_control_majority          the training folds' commonest class
    p                                  permutation test: ``(1 + #{permuted >= accuracy}) /
                                       (1 + n_controls)`` (NaN without permutations)
    accuracy_where, ...                with ``where``: the same accuracies over the rows it
                                       selects (``accuracy_where_control_units``, ``_labels``,
                                       ``_majority``)
    =================================  ========================================================

    ``.data``, an ``xarray.Dataset``: each control draw's ``accuracy``, ``sem``, ``converged``
    (and ``accuracy_where``), as ``<quantity>_control_units [draw]`` and
    ``<quantity>_control_labels [permutation]``; the out-of-fold predictions over ``row`` (the
    trial-table row read): ``seq``, ``pos``, ``true``, ``predicted``, ``fold`` and ``where``
    (with ``where``); and the units decoded as the ``unit`` coordinate (``"mlp.0:12"``, with
    ``site`` and ``index``). :attr:`predictions` and :attr:`units` read them back as pandas.

    ``.meta``: ``majority_class``, ``C`` (the C chosen in each fold, which every fit used
    there), ``converged`` (share of all the fits that converged, ``majority`` aside),
    ``control_units_note`` (when the random-unit control cannot exist), ``label``, ``target``,
    ``classes``, ``n_units``, ``sites``, ``n_tokens``, ``n_seqs``, ``folds``, ``n_controls``
    (``{"units": draws, "labels": permutations}``), ``include_bos``, ``seed``, ``where``,
    ``n_where``, ``probe``, ``permutation`` (how labels were permuted), ``model``,
    ``fingerprint``, ``stimuli``, ``complete``, ``recorded_seqs``, ``stimuli_seqs``.
    """

    kind = "decode"
    rank_by = None

    @property
    def predictions(self) -> pd.DataFrame:
        """One row per decoded token, indexed by trial-table row (the token read): ``seq``,
        ``pos``, ``true``, ``predicted`` (the probe's out-of-fold prediction), ``fold``, and
        ``where`` when given. For ``target="next"`` the labels are the next token's."""
        names = [n for n in ("seq", "pos", "true", "predicted", "fold", "where") if n in self.data]
        return self.data[names].to_dataframe()[names]

    @property
    def units(self) -> pd.MultiIndex:
        """The ``(site, unit)`` MultiIndex of the units decoded."""
        return pd.MultiIndex.from_arrays([self.data["site"].to_numpy(), self.data["index"].to_numpy().astype(int)],
                                         names=["site", "unit"])

    def by_class(self) -> pd.DataFrame:
        """The probe's accuracy per class of the label: one row per class with ``n`` (tokens of
        the class), ``accuracy`` (share of them decoded right: the class's recall),
        ``predicted`` (tokens predicted as the class) and, with ``where``, ``n_where`` and
        ``accuracy_where`` (the same over the rows it selects).

        Example:
            >>> import llmscope
            >>> from llmscope import decode
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
            ...                       dtype="float32", progress=False)
            >>> res = decode(rec, "mlp.0", "pos_tag", folds=2, n_controls=0, progress=False)
            >>> table = res.by_class()
            >>> table.columns.tolist(), int(table["n"].sum()) == res.meta["n_tokens"]
            (['n', 'accuracy', 'predicted'], True)
        """
        p = self.predictions
        right = p["true"] == p["predicted"]
        out = pd.DataFrame({"n": p.groupby("true").size(), "accuracy": right.groupby(p["true"]).mean()})
        out["predicted"] = p["predicted"].value_counts().reindex(out.index, fill_value=0)
        if "where" in p.columns:
            sel = p["where"].astype(bool)
            out["n_where"] = sel.groupby(p["true"]).sum().astype(int)
            out["accuracy_where"] = right[sel].groupby(p["true"][sel]).mean().reindex(out.index)
        out.index.name = self.meta["label"]
        return out

    def plot(self) -> "go.Figure":
        """Bars: the probe's accuracy (± s.e.m. over folds) beside the random units' and the
        permuted labels' (mean ± s.d. over draws, each draw a dot); the majority class dashed."""
        import plotly.graph_objects as go

        r, m = self.df.iloc[0], self.meta
        fig = go.Figure(go.Bar(x=["units"], y=[r.accuracy], name="units", error_y=dict(type="data", array=[r["sem"]])))
        for which, name in (("units", "random units"), ("labels", "permuted labels")):
            draws_ = self.data[f"accuracy_control_{which}"].to_numpy()
            if not len(draws_):
                continue
            fig.add_trace(go.Bar(x=[name], y=[r[f"accuracy_control_{which}"]], name=name,
                                 error_y=dict(type="data", array=[r[f"accuracy_control_{which}_sd"]])))
            fig.add_trace(go.Scatter(x=[name] * len(draws_), y=draws_, mode="markers", name=f"{name}: draws",
                                     marker=dict(color="black", size=5)))
        fig.add_hline(y=r.accuracy_control_majority, line_dash="dash", annotation_text="majority class")
        title = (f"decoding {html.escape(str(m['label']))} of the {m['target']} token from {r.n_units} units: "
                 f"{r.accuracy:.3f} (p = {r.p:.3g})")
        return fig.update_layout(title=title, yaxis=dict(title="accuracy (out of fold)", range=[0, 1]),
                                 xaxis_title="condition", showlegend=False)


def _decode(recording: Recording, units: UnitsLike, label: str, *, target: str, folds: int, n_controls: int,
            where: str | None, include_bos: bool, seed: int, progress: bool, n_labels: int | None = None
            ) -> DecodingResult:
    """:func:`decode`, with ``n_labels`` label permutations (default ``n_controls``) beside
    ``n_controls`` random-unit draws."""
    import xarray as xr

    meta, folds, n_controls, seed = _check(recording, label, target, folds, n_controls, include_bos, seed, progress,
                                           "decode")
    n_labels = n_controls if n_labels is None else draws(n_labels, "n_permutations", "fit", minimum=0)
    resolved = responses.resolve(recording, units)
    task = _task(recording, resolved, label, target, folds, include_bos, where)
    columns = _columns(task, resolved)
    n = len(columns)
    rng_units, rng_labels = _rngs(seed)
    n_fits = folds * (TUNING_FITS + 2 + n_labels + (0 if _every_unit(resolved) else n_controls))
    with threadpool_limits(THREADS), \
            progress_bar(total=n_fits, unit="fit", desc=f"decode {label}", show=progress, leave=False) as bar:
        real = _score(task, columns, task.y, _choose_C(task, columns, bar), bar)
        random_units = _control_units(task, resolved, n_controls, rng_units, real.C, bar)
        permuted = [_score(task, columns, _permute_within(task.y, task.groups, rng_labels), real.C, bar)
                    for _ in range(n_labels)]
        majority = _score(task, None, task.y, real.C, bar, _majority)
    controls = {"units": _draws(random_units, "units", where), "labels": _draws(permuted, "labels", where)}
    row = _row(real, n, controls, majority, where)
    row["p"] = (1 + sum(s.accuracy >= real.accuracy for s in permuted)) / (1 + n_labels) if permuted else np.nan
    classes = np.asarray(task.classes, dtype=object)
    fold = np.empty(len(task.y), dtype=int)
    for i, (_, test) in enumerate(task.splits):
        fold[test] = i
    per_row = {"seq": task.groups, "pos": recording.tokens["pos"].to_numpy()[task.rows], "true": classes[task.y],
               "predicted": classes[real.predicted], "fold": fold}
    if task.where is not None:
        per_row["where"] = task.where
    index = _units_index(resolved)
    data = xr.merge([
        unit_dataset(index, {}),
        xr.Dataset({**{k: ("draw", v) for k, v in controls["units"].items()},
                    **{k: ("permutation", v) for k, v in controls["labels"].items()},
                    **{k: ("row", v) for k, v in per_row.items()}}, coords={"row": task.rows})])
    meta = dict(meta, **_task_meta(task, label, target, folds, include_bos, seed, where),
                majority_class=classes[np.bincount(majority.predicted).argmax()], C=real.C,
                converged=_converged([real], random_units + permuted), n_units=n, sites=[s.name for s, _ in resolved],
                n_controls={"units": n_controls, "labels": n_labels})
    if n_controls and _every_unit(resolved):
        meta["control_units_note"] = (f"the units are every unit of {meta['sites']}: no other set of {n} units "
                                      "exists there, so the random-unit control is NaN.")
    return DecodingResult(pd.DataFrame([row]), meta, data)


@renamed(subset="where")
@_old_draw_names
def decode(recording: Recording, units: UnitsLike, label: str, *, target: str = "current", folds: int = 5,
           n_controls: int = 20, where: str | None = None, include_bos: bool = False, seed: int = 0,
           progress: bool = True) -> DecodingResult:
    """Decode ``label`` from the responses of ``units`` with a cross-validated linear probe.

    Args:
        recording: a :class:`~llmscope.Recording` (or a ``select``-ed view of one).
        units: any unit form (``"mlp.0"``, ``("mlp.1", [3, 7])``, a ``(site, unit)`` table such
            as ``tuning(rec, "mlp.0", "pos_tag").top(10)``); every site must be recorded.
            A head of ``attn.L`` responds with the L2 norm of its ``hook_z``.
        label: a categorical trial-table column (``"pos_tag"``, ``"number"``...); rows where
            the decoded token's label is missing are left out.
        target: ``"current"`` (the token's own label) or ``"next"`` (the next token's).
        folds: cross-validation folds (>= 2), each holding whole sequences.
        n_controls: draws of each control: ``n_controls`` sets of random units and
            ``n_controls`` label permutations (which give the p-value: 20 let it fall below
            0.05); 0: none. Each draw costs ``folds`` fits with the probe's C (choosing C costs
            ``folds * TUNING_FITS`` fits, once).
        where: rows to report apart: a boolean trial-table column (``"ambiguous"``) or a query,
            read at the token whose label is decoded; every accuracy is also reported over them.
        include_bos: read BOS rows too (left out by default).
        seed: seeds the random units and the permutations (the folds do not depend on it).
        progress: show a tqdm bar (fits).

    ``n_random=`` and ``n_permutations=`` are the old names of ``n_controls`` (one release, with
    a FutureWarning); given with different values, each still counts its own control.

    Returns:
        A :class:`DecodingResult` (columns, ``.data`` and meta keys in its docstring).

    Raises:
        AnalysisError: not a Recording, ``folds < 2``, fewer sequences than folds, a label with one
            class among the rows decoded, a training fold of one class, non-finite responses, a
            bad ``target`` (a KeyError), ``n_controls`` (an IndexError beyond the cap),
            ``seed``, ``where`` or flag.
        ColumnError: ``label`` or ``where`` is not a trial-table column (the message lists them).
        SiteError: units of a site not recorded, or indices out of range.

    Example:
        >>> import llmscope
        >>> from llmscope import decode, tuning
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> top = tuning(rec, "mlp.0", "pos_tag", progress=False).top(5)
        >>> res = decode(rec, top, "pos_tag", folds=2, n_controls=3, progress=False)
        >>> res.data["accuracy_control_units"].shape, res.units.equals(top.index.sort_values())
        ((3,), True)
    """
    return _decode(recording, units, label, target=target, folds=folds, n_controls=n_controls, where=where,
                   include_bos=include_bos, seed=seed, progress=progress)


# ---------------------------------------------------------------- decode_curve


def _sets(recording: Recording, units: Any, ks: Any) -> dict[int, Any]:
    """``{k: units}`` from a mapping, or the first k units of a ranked unit table (its rows in
    rank order) or of any other form of units (each site's units in index order)."""
    if isinstance(units, Mapping):
        if not units:
            raise AnalysisError("decode_curve(units={}) has no set sizes; map each k to its units.")
        return {count(k, "a set size k"): v for k, v in sorted(units.items())}
    index = table_index(units)
    if index is None:
        index = _units_index(responses.resolve(recording, units))
    if isinstance(ks, (int, np.integer)) or not hasattr(ks, "__iter__") or not len(ks):
        raise AnalysisError(f"ks is a non-empty list of set sizes such as {list(KS)}, got {ks!r}.")
    ks = sorted({count(k, "each k") for k in ks})
    if ks[-1] > len(index):
        raise AnalysisError(f"ks up to {ks[-1]} need that many units; {len(index)} are given. "
                            f"Pass ks <= {len(index)} or more units.")
    return {k: index[:k] for k in ks}


class DecodingCurveResult(Result):
    """What :func:`decode_curve` returns: accuracy against the number of units.

    ``.df``, one row per set size ``k``: ``k``, ``n_units`` (the set's size, which a mapping may
    make differ from k), ``accuracy``, ``sem``, ``converged``, ``accuracy_control_units`` and
    ``accuracy_control_units_sd`` (mean and standard deviation over ``n_controls`` draws of as
    many random units of the same sites), ``accuracy_control_majority`` (the training folds'
    commonest class, the same for every k), and with ``where`` ``accuracy_where``,
    ``accuracy_where_control_units``, ``accuracy_where_control_majority``.

    ``.data``: each draw's ``accuracy_control_units``, ``sem_control_units``,
    ``converged_control_units`` (and ``accuracy_where_control_units``) ``[k, draw]``.

    ``.meta``: the task's keys as :func:`decode`'s (``label``, ``target``, ``classes``,
    ``n_tokens``, ``n_seqs``, ``folds``, ``where``, ``probe``...), ``ks``, ``n_controls``, ``C``
    (``{k: the C chosen in each fold}``; k's random draws use it too), ``converged`` (share of
    all the fits that converged) and the recording's provenance.
    """

    kind = "decode_curve"
    rank_by = None

    def plot(self) -> "go.Figure":
        """Accuracy against k (log axis, ± s.e.m. over folds), the random draws as a band (their
        range) around their mean, the majority class dashed."""
        import plotly.graph_objects as go

        df, m = self.df, self.meta
        draws_ = self.data["accuracy_control_units"]
        low, high = draws_.min("draw").to_numpy(), draws_.max("draw").to_numpy()
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=df.k, y=high, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=df.k, y=low, mode="lines", line=dict(width=0), fill="tonexty",
                                 fillcolor="rgba(150,150,150,0.3)", name="random units (range over draws)"))
        fig.add_trace(go.Scatter(x=df.k, y=df.accuracy_control_units, mode="lines+markers", line=dict(color="gray"),
                                 name="random units (mean)"))
        fig.add_trace(go.Scatter(x=df.k, y=df.accuracy, mode="lines+markers", name="units",
                                 error_y=dict(type="data", array=df["sem"])))
        fig.add_hline(y=df.accuracy_control_majority.iloc[0], line_dash="dash", annotation_text="majority class")
        return fig.update_layout(title=f"decoding {html.escape(str(m['label']))} of the {m['target']} token "
                                       "against the number of units", xaxis=dict(title="k", type="log"),
                                 yaxis=dict(title="accuracy (out of fold)", range=[0, 1]))


@renamed(n_random="n_controls", subset="where")
def decode_curve(recording: Recording, units: Any, label: str, ks: Any = KS, *, target: str = "current",
                 folds: int = 5, n_controls: int = 10, where: str | None = None, include_bos: bool = False,
                 seed: int = 0, progress: bool = True) -> DecodingCurveResult:
    """Decoding accuracy against the number of units: ranked units against random units.

    For each k, the probe of :func:`decode` on the k units and on ``n_controls`` draws of as
    many random units of the same sites, all on the same folds (no permutations: run
    :func:`decode` on a k of interest for the p-value).

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: a ranked unit table (indexed by ``(site, unit)``, best first: its first k rows
            make set k), any other form of units (its first k, each site's in index order), or
            a mapping ``{k: units}`` for sets that are not prefixes (such as k key neurons per
            class); then ``ks`` is ignored.
        ks: set sizes for a ranked table (default ``KS``).
        n_controls: draws of random units per k (0: none).
        target, folds, where, include_bos, seed, progress: as in :func:`decode`.

    ``n_random=`` and ``subset=`` are the old names of ``n_controls`` and ``where`` (one
    release, with a FutureWarning).

    Returns:
        A :class:`DecodingCurveResult`: one row per k; ``.plot()`` draws accuracy against k,
        random draws as a band.

    Raises:
        AnalysisError, ColumnError, SiteError: as :func:`decode`; also ks larger than the table
            or not positive integers.

    Example:
        >>> import llmscope
        >>> from llmscope import decode_curve, tuning
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> top = tuning(rec, "mlp.0", "pos_tag", progress=False).top(8)
        >>> curve = decode_curve(rec, top, "pos_tag", ks=[2, 8], folds=2, n_controls=2, progress=False)
        >>> curve.df.k.tolist(), curve.data["accuracy_control_units"].shape
        ([2, 8], (2, 2))
    """
    import xarray as xr

    meta, folds, n_controls, seed = _check(recording, label, target, folds, n_controls, include_bos, seed, progress,
                                           "decode_curve")
    sets = {k: responses.resolve(recording, v) for k, v in _sets(recording, units, ks).items()}
    every = [pair for resolved in sets.values() for pair in resolved]
    task = _task(recording, every, label, target, folds, include_bos, where)
    rng_units, _ = _rngs(seed)
    n_fits = folds * (1 + sum(TUNING_FITS + 1 + (0 if _every_unit(r) else n_controls) for r in sets.values()))
    reals, controls, Cs = {}, {}, {}
    with threadpool_limits(THREADS), \
            progress_bar(total=n_fits, unit="fit", desc=f"decode {label} by k", show=progress, leave=False) as bar:
        for k, resolved in sets.items():
            columns = _columns(task, resolved)
            reals[k] = _score(task, columns, task.y, _choose_C(task, columns, bar), bar)
            Cs[k] = reals[k].C
            controls[k] = _control_units(task, resolved, n_controls, rng_units, reals[k].C, bar)
        majority = _score(task, None, task.y, reals[max(sets)].C, bar, _majority)
    per_k = {k: _draws(controls[k], "units", where) for k in sets}
    df = pd.DataFrame([dict(k=k, **_row(reals[k], sum(len(idx) for _, idx in sets[k]), {"units": per_k[k]},
                                        majority, where)) for k in sets])
    data = xr.Dataset({name: (("k", "draw"), np.stack([per_k[k][name] for k in sets])) for name in per_k[min(sets)]},
                      coords={"k": list(sets)})
    meta = dict(meta, **_task_meta(task, label, target, folds, include_bos, seed, where), ks=list(sets),
                n_controls=n_controls, C=Cs,
                converged=_converged(list(reals.values()), [s for c in controls.values() for s in c]))
    return DecodingCurveResult(df, meta, data)


__all__ = ["decode", "decode_curve", "DecodingResult", "DecodingCurveResult", "TARGETS", "CS", "INNER_FOLDS", "TOL",
           "INNER_TOL", "MAX_ITER", "THREADS", "KS"]
