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

Controls, each fitted on the same folds and reported beside the probe:

* ``random``: ``n_random`` draws of as many random units from the same sites (as many per
  site as the set has there). When the set is every unit of its sites no other set of that
  size exists: the row says so with NaN;
* ``permuted``: ``n_permutations`` fits with the labels permuted within each sequence (as
  ``sklearn.model_selection.permutation_test_score`` does with groups), which also give the
  permutation test's p-value ``(1 + #{permuted >= real}) / (1 + n_permutations)``;
* ``majority``: ``DummyClassifier("most_frequent")``, the training folds' commonest class.

The probe: lbfgs (the default solver: multinomial, fast on dense ``[tokens, <= a few thousand]``
matrices), in float64, fitted to convergence (``TOL``; ``MAX_ITER`` is a cap no fit measured
here reaches; each df row's ``converged`` says how many of its fits converged, ``.meta``'s the
share of all of them), on ``THREADS`` BLAS threads (these matrices are small, and threads
spinning on busy cores cost up to 10x; the results do not depend on it).

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
    >>> res = decode(rec, "mlp.0", "pos_tag", folds=2, n_random=0, n_permutations=2, progress=False)
    >>> res.df.condition.tolist()
    ['units', 'permuted', 'permuted', 'majority']
    >>> res.meta["accuracy"] > res.meta["permuted_accuracy"] and res.meta["accuracy"] > res.meta["majority"]
    True
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from llmscope.analysis import responses
from llmscope.stimuli import trials
from llmscope.checks import count, flag
from llmscope.errors import AnalysisError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.result import Result
from llmscope.sites import Site, UnitsLike, table_index

if TYPE_CHECKING:
    import plotly.graph_objects as go

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
    subset: np.ndarray | None  # [n] bool, the subset column at the token whose label is decoded
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


def _subset_column(tokens: pd.DataFrame, subset: str | None) -> np.ndarray | None:
    if subset is None:
        return None
    col = trials.column(tokens, subset, "subset column")
    if not pd.api.types.is_bool_dtype(col):
        raise AnalysisError(f"subset names a boolean trial-table column such as 'ambiguous'; {subset!r} "
                            f"holds {col.dtype}. Add a boolean column to recording.tokens, or pass None.")
    return col.fillna(False).to_numpy(dtype=bool)


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
          folds: int, include_bos: bool, subset: str | None) -> _Task:
    tokens = recording.tokens
    in_subset = _subset_column(tokens, subset)
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
    splits = _folds(codes, groups, folds, classes)
    mask = None if in_subset is None else in_subset[tgt]
    if mask is not None and not mask.any():
        raise AnalysisError(f"no row decoded has {subset!r} true; choose another subset column or None.")
    sites = [(s.name, None) for s, _ in resolved]
    X, _ = responses.matrix(recording, sites, _mask(len(tokens), src))
    X = X.astype(np.float64)  # a float32 fit stops short of TOL (rounding), and where depends on the threads
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
    subset_accuracy: float
    predicted: np.ndarray  # [n] out-of-fold predicted class codes
    C: list[float]  # the C of each fold (NaN: no C)


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
                  float(right[task.subset].mean()) if task.subset is not None else np.nan, predicted,
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


def _row(condition: str, draw: int, n_units: int, score: _Score | None, subset: str | None, **extra: Any) -> dict:
    row = dict(condition=condition, draw=draw, n_units=n_units, **extra,
               accuracy=np.nan if score is None else score.accuracy, sem=np.nan if score is None else score.sem,
               converged=np.nan if score is None else score.converged)
    if subset is not None:
        row["subset_accuracy"] = np.nan if score is None else score.subset_accuracy
    return row


def _random_rows(task: _Task, resolved: list[tuple[Site, np.ndarray]], n_random: int, rng: np.random.Generator,
                 Cs: list[float], subset: str | None, bar: tqdm, **extra: Any) -> list[dict]:
    """The random-unit control's rows (each fold with the set's C): one per draw, or one NaN row
    when no other set exists."""
    n = sum(len(idx) for _, idx in resolved)
    if not n_random:
        return []
    if _every_unit(resolved):
        return [_row("random", 0, n, None, subset, **extra)]
    return [_row("random", d, n, _score(task, _random_columns(task, resolved, rng), task.y, Cs, bar), subset,
                 **extra) for d in range(n_random)]


# ---------------------------------------------------------------- arguments


def _check(recording: Any, label: Any, target: Any, folds: Any, n_random: Any, include_bos: Any, seed: Any,
           progress: Any, analysis: str) -> tuple[dict, int, int, int]:
    meta = responses.check_recording(recording, analysis)
    trials.column(recording.tokens, label, "label column")
    if target not in TARGETS:
        raise AnalysisError(f"target must be one of {list(TARGETS)} (the token whose label is decoded), "
                            f"got {target!r}.")
    folds = count(folds, "folds", minimum=2)
    n_random = count(n_random, "n_random", minimum=0)
    seed = count(seed, "seed", minimum=0)
    flag(include_bos, "include_bos")
    flag(progress, "progress")
    return meta, folds, n_random, seed


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for the random units and the label permutations."""
    units, labels = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(units), np.random.default_rng(labels)


def _units_meta(resolved: list[tuple[Site, np.ndarray]]) -> pd.MultiIndex:
    return pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in resolved for i in idx], names=["site", "unit"])


def _task_meta(task: _Task, label: str, target: str, folds: int, include_bos: bool, seed: int,
               subset: str | None) -> dict:
    return dict(label=label, target=target, classes=task.classes, n_tokens=len(task.y),
                n_seqs=int(len(np.unique(task.groups))), folds=folds, include_bos=include_bos, seed=seed,
                subset=subset, n_subset=None if task.subset is None else int(task.subset.sum()),
                probe=(f"StandardScaler + LogisticRegression(lbfgs, tol={TOL}, max_iter={MAX_ITER}), GroupKFold on "
                       f"seq; C from {list(CS)} per fold by GridSearchCV (log loss), GroupKFold({INNER_FOLDS}) on its "
                       "training seqs"),
                permutation="labels permuted within each sequence")


# ---------------------------------------------------------------- decode


def _plot(result: "DecodingResult") -> "go.Figure":
    import plotly.graph_objects as go

    df = result.df[result.df.condition != "majority"]
    fig = go.Figure()
    for condition, rows in df.groupby("condition", sort=False):
        fig.add_trace(go.Bar(x=[condition], y=[rows.accuracy.mean()], name=condition,
                             error_y=dict(type="data", array=[rows.accuracy.std(ddof=1) if len(rows) > 1
                                                              else rows["sem"].iloc[0]])))
        if len(rows) > 1:
            fig.add_trace(go.Scatter(x=[condition] * len(rows), y=rows.accuracy, mode="markers", showlegend=False,
                                     marker=dict(color="black", size=5), name=f"{condition} draws"))
    m = result.meta
    fig.add_hline(y=m["majority"], line_dash="dash", annotation_text="majority class")
    title = (f"decoding {html.escape(str(m['label']))} of the {m['target']} token from {m['n_units']} units: "
             f"{m['accuracy']:.3f} (p = {m['p']:.3g})")
    return fig.update_layout(title=title, yaxis=dict(title="accuracy (out of fold)", range=[0, 1]),
                             xaxis_title="condition", showlegend=False)


@dataclass(repr=False, eq=False)
class DecodingResult(Result):
    """What :func:`decode` returns: a :class:`~llmscope.Result` with the probe's predictions.

    ``.df``, one row per fitted condition (every fit on the same folds, with the C the probe
    chose in each):

    ===============  ==========================================================================
    condition        ``"units"`` (the probe), ``"random"`` (one row per draw of as many random
                     units of the same sites), ``"permuted"`` (one row per label permutation),
                     ``"majority"`` (the training folds' commonest class)
    draw             the draw or permutation (0 for ``units`` and ``majority``)
    n_units          units read (``majority`` reads none but keeps the set's size)
    accuracy         share of out-of-fold predictions right (NaN: a random set of every unit
                     of the sites, which would be the set itself)
    sem              s.e.m. of the per-fold accuracies
    converged        share of the condition's fits that converged (within ``MAX_ITER`` steps)
    subset_accuracy  accuracy over the rows whose ``subset`` column is true (with ``subset``)
    ===============  ==========================================================================

    Attributes:
        predictions: one row per decoded token, indexed by trial-table row (the token read):
            ``seq``, ``pos``, ``true``, ``predicted`` (the probe's out-of-fold prediction),
            ``fold``, and ``subset`` when given. For ``target="next"`` the labels are the
            next token's.
        units: the ``(site, unit)`` MultiIndex of the units decoded.

    ``.meta``: ``accuracy``, ``sem``, ``subset_accuracy``, ``random_accuracy`` (mean over draws;
    NaN when the set is every unit of its sites: ``random_note`` says so), ``random_sd``
    (standard deviation over draws), ``random_subset_accuracy``, ``permuted_accuracy`` (mean over
    permutations), ``p`` (permutation test; NaN without permutations), ``majority``,
    ``majority_class``, ``C`` (the C chosen in each fold, which every condition used there),
    ``converged`` (share of all the fits that converged, ``majority`` aside), ``label``,
    ``target``, ``classes``, ``n_units``, ``sites``, ``n_tokens``,
    ``n_seqs``, ``folds``, ``n_random``, ``n_permutations``, ``include_bos``, ``seed``,
    ``subset``, ``n_subset``, ``probe``, ``permutation`` (how labels were permuted), ``model``,
    ``stimuli``, ``complete``, ``recorded_seqs``, ``stimuli_seqs``.
    """

    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    units: pd.MultiIndex = field(default_factory=lambda: pd.MultiIndex.from_tuples([], names=["site", "unit"]))

    def by_class(self) -> pd.DataFrame:
        """The probe's accuracy per class of the label: one row per class with ``n`` (tokens of
        the class), ``accuracy`` (share of them decoded right: the class's recall),
        ``predicted`` (tokens predicted as the class) and, with ``subset``, ``n_subset`` and
        ``subset_accuracy`` (the same over the subset's rows).

        Example:
            >>> res = decode(rec, "mlp.0", "pos_tag", folds=2, n_random=0, n_permutations=0, progress=False)
            >>> table = res.by_class()
            >>> table.columns.tolist(), int(table["n"].sum()) == res.meta["n_tokens"]
            (['n', 'accuracy', 'predicted'], True)
        """
        p = self.predictions
        right = p["true"] == p["predicted"]
        out = pd.DataFrame({"n": p.groupby("true").size(), "accuracy": right.groupby(p["true"]).mean()})
        out["predicted"] = p["predicted"].value_counts().reindex(out.index, fill_value=0)
        if "subset" in p.columns:
            sub = p["subset"]
            out["n_subset"] = sub.groupby(p["true"]).sum().astype(int)
            out["subset_accuracy"] = right[sub].groupby(p["true"][sub]).mean().reindex(out.index)
        out.index.name = self.meta["label"]
        return out


def decode(recording: Recording, units: UnitsLike, label: str, *, target: str = "current", folds: int = 5,
           n_random: int = 10, n_permutations: int = 20, subset: str | None = None, include_bos: bool = False,
           seed: int = 0, progress: bool = True) -> DecodingResult:
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
        n_random: draws of the random-unit control (0: none).
        n_permutations: label permutations of the permuted control and the p-value (0: none).
            Each costs ``folds`` fits with the probe's C (choosing C costs
            ``folds * TUNING_FITS`` fits, once).
        subset: a boolean trial-table column (``"ambiguous"``), read at the token whose label is
            decoded: every condition's accuracy is also reported over its true rows.
        include_bos: read BOS rows too (left out by default).
        seed: seeds the random units and the permutations (the folds do not depend on it).
        progress: show a tqdm bar (fits).

    Returns:
        A :class:`DecodingResult` (columns, attributes and meta keys in its docstring).

    Raises:
        AnalysisError: not a Recording, ``folds < 2``, fewer sequences than folds, a label with one
            class among the rows decoded, a training fold of one class, a bad ``target``,
            ``n_random``, ``n_permutations``, ``seed``, ``subset`` or flag.
        ColumnError: ``label`` or ``subset`` is not a trial-table column (the message lists them).
        SiteError: units of a site not recorded, or indices out of range.

    Example:
        >>> top = tuning(rec, "mlp.0", "pos_tag", progress=False).top(5)
        >>> res = decode(rec, top, "pos_tag", folds=2, n_random=3, n_permutations=0, progress=False)
        >>> res.df.condition.value_counts().to_dict()
        {'random': 3, 'units': 1, 'majority': 1}
    """
    meta, folds, n_random, seed = _check(recording, label, target, folds, n_random, include_bos, seed, progress,
                                         "decode")
    n_permutations = count(n_permutations, "n_permutations", minimum=0)
    resolved = responses.resolve(recording, units)
    task = _task(recording, resolved, label, target, folds, include_bos, subset)
    columns = _columns(task, resolved)
    n = len(columns)
    rng_units, rng_labels = _rngs(seed)
    n_fits = folds * (TUNING_FITS + 2 + n_permutations + (0 if _every_unit(resolved) else n_random))
    with threadpool_limits(THREADS), \
            progress_bar(total=n_fits, unit="fit", desc=f"decode {label}", show=progress, leave=False) as bar:
        real = _score(task, columns, task.y, _choose_C(task, columns, bar), bar)
        rows = [_row("units", 0, n, real, subset)]
        rows += _random_rows(task, resolved, n_random, rng_units, real.C, subset, bar)
        permuted = [_score(task, columns, _permute_within(task.y, task.groups, rng_labels), real.C, bar)
                    for _ in range(n_permutations)]
        rows += [_row("permuted", d, n, s, subset) for d, s in enumerate(permuted)]
        majority = _score(task, None, task.y, real.C, bar, _majority)
        rows.append(_row("majority", 0, n, majority, subset))
    df = pd.DataFrame(rows)
    rand = df[df.condition == "random"]
    classes = np.asarray(task.classes, dtype=object)
    fold = np.empty(len(task.y), dtype=int)
    for i, (_, test) in enumerate(task.splits):
        fold[test] = i
    tokens = recording.tokens
    predictions = pd.DataFrame({"seq": task.groups, "pos": tokens["pos"].to_numpy()[task.rows],
                                "true": classes[task.y], "predicted": classes[real.predicted], "fold": fold},
                               index=pd.Index(task.rows, name="row"))
    if task.subset is not None:
        predictions["subset"] = task.subset
    index = _units_meta(resolved)
    meta = dict(meta, **_task_meta(task, label, target, folds, include_bos, seed, subset),
                accuracy=real.accuracy, sem=real.sem, subset_accuracy=real.subset_accuracy,
                random_accuracy=float(rand.accuracy.mean()) if len(rand) else np.nan,
                random_sd=float(rand.accuracy.std(ddof=1)) if len(rand) > 1 else np.nan,
                random_subset_accuracy=float(rand["subset_accuracy"].mean()) if len(rand) and subset else np.nan,
                permuted_accuracy=float(np.mean([s.accuracy for s in permuted])) if permuted else np.nan,
                p=(1 + sum(s.accuracy >= real.accuracy for s in permuted)) / (1 + n_permutations)
                if permuted else np.nan,
                majority=majority.accuracy, majority_class=classes[np.bincount(majority.predicted).argmax()],
                C=real.C, converged=float(df.converged.mean()), n_units=n, sites=[s.name for s, _ in resolved],
                n_random=n_random, n_permutations=n_permutations)
    if n_random and _every_unit(resolved):
        meta["random_note"] = (f"the units are every unit of {meta['sites']}: no other set of {n} units exists "
                               "there, so the random-unit control is NaN.")
    return DecodingResult(df, kind="decoding", meta=meta, plotter=_plot, predictions=predictions, units=index)


# ---------------------------------------------------------------- decode_curve


def _sets(units: Any, ks: Any) -> dict[int, Any]:
    """``{k: units}`` from a ranked unit table (its first k rows) or a mapping."""
    if isinstance(units, Mapping):
        if not units:
            raise AnalysisError("decode_curve(units={}) has no set sizes; map each k to its units.")
        return {count(k, "a set size k"): v for k, v in sorted(units.items())}
    index = table_index(units)
    if index is None:
        raise AnalysisError("decode_curve takes a ranked unit table (rows in rank order, indexed by (site, unit), "
                            f"such as tuning(...).top(100)) or a mapping {{k: units}}; got {type(units).__name__}.")
    if isinstance(ks, (int, np.integer)) or not hasattr(ks, "__iter__") or not len(ks):
        raise AnalysisError(f"ks is a non-empty list of set sizes such as {list(KS)}, got {ks!r}.")
    ks = sorted({count(k, "each k") for k in ks})
    if ks[-1] > len(index):
        raise AnalysisError(f"ks up to {ks[-1]} need that many ranked units; the table has {len(index)}. "
                            f"Pass ks <= {len(index)} or a longer table.")
    return {k: index[:k] for k in ks}


def _plot_curve(result: Result) -> "go.Figure":
    import plotly.graph_objects as go

    df, m = result.df, result.meta
    units = df[df.condition == "units"]
    rand = df[df.condition == "random"].groupby("k").accuracy.agg(["mean", "min", "max"]).reset_index()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=rand.k, y=rand["max"], mode="lines", line=dict(width=0), showlegend=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=rand.k, y=rand["min"], mode="lines", line=dict(width=0), fill="tonexty",
                             fillcolor="rgba(150,150,150,0.3)", name="random (range over draws)"))
    fig.add_trace(go.Scatter(x=rand.k, y=rand["mean"], mode="lines+markers", line=dict(color="gray"),
                             name="random (mean)"))
    fig.add_trace(go.Scatter(x=units.k, y=units.accuracy, mode="lines+markers", name="units",
                             error_y=dict(type="data", array=units["sem"])))
    fig.add_hline(y=m["majority"], line_dash="dash", annotation_text="majority class")
    return fig.update_layout(title=f"decoding {html.escape(str(m['label']))} of the {m['target']} token "
                                   "against the number of units",
                             xaxis=dict(title="k", type="log"), yaxis=dict(title="accuracy (out of fold)", range=[0, 1]))


def decode_curve(recording: Recording, units: Any, label: str, ks: Any = KS, *, target: str = "current",
                 folds: int = 5, n_random: int = 10, subset: str | None = None, include_bos: bool = False,
                 seed: int = 0, progress: bool = True) -> Result:
    """Decoding accuracy against the number of units: ranked units against random units.

    For each k, the probe of :func:`decode` on the k units and on ``n_random`` draws of as many
    random units of the same sites, all on the same folds (no permutations: run :func:`decode`
    on a k of interest for the p-value).

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: a ranked unit table (indexed by ``(site, unit)``, best first: its first k rows
            make set k), or a mapping ``{k: units}`` for sets that are not prefixes (such as k
            key neurons per class); then ``ks`` is ignored.
        ks: set sizes for a ranked table (default ``KS``).
        target, folds, n_random, subset, include_bos, seed, progress: as in :func:`decode`.

    Returns:
        A :class:`~llmscope.Result` (kind ``"decoding_curve"``); ``.df`` has one row per k and
        condition (``"units"``, ``"random"`` per draw, ``"majority"`` once at the smallest k)
        with ``k``, ``draw``, ``n_units`` (the set's size, which a mapping may make differ from
        k), ``accuracy``, ``sem``, ``converged`` (and ``subset_accuracy``); ``.meta`` holds the
        task's keys as :func:`decode`'s (``label``, ``target``, ``classes``, ``n_tokens``,
        ``n_seqs``, ``folds``, ``probe``...), ``ks``, ``n_random``, ``majority``, ``C``
        (``{k: the C chosen in each fold}``; k's random draws use it too), ``converged`` (share
        of all the fits that converged) and the recording's provenance. ``.plot()``: accuracy
        against k, random draws as a band.

    Raises:
        AnalysisError, ColumnError, SiteError: as :func:`decode`; also ks larger than the table
            or not positive integers, and units that are neither a unit table nor a mapping.

    Example:
        >>> top = tuning(rec, "mlp.0", "pos_tag", progress=False).top(8)
        >>> curve = decode_curve(rec, top, "pos_tag", ks=[2, 8], folds=2, n_random=2, progress=False)
        >>> curve.df.groupby("condition").size().to_dict()
        {'majority': 1, 'random': 4, 'units': 2}
    """
    meta, folds, n_random, seed = _check(recording, label, target, folds, n_random, include_bos, seed, progress,
                                         "decode_curve")
    sets = {k: responses.resolve(recording, v) for k, v in _sets(units, ks).items()}
    every = [pair for resolved in sets.values() for pair in resolved]
    task = _task(recording, every, label, target, folds, include_bos, subset)
    rng_units, _ = _rngs(seed)
    n_fits = folds * (1 + sum(TUNING_FITS + 1 + (0 if _every_unit(r) else n_random) for r in sets.values()))
    rows, Cs = [], {}
    with threadpool_limits(THREADS), \
            progress_bar(total=n_fits, unit="fit", desc=f"decode {label} by k", show=progress, leave=False) as bar:
        for k, resolved in sets.items():
            n = sum(len(idx) for _, idx in resolved)
            columns = _columns(task, resolved)
            real = _score(task, columns, task.y, _choose_C(task, columns, bar), bar)
            Cs[k] = real.C
            rows.append(_row("units", 0, n, real, subset, k=k))
            rows += _random_rows(task, resolved, n_random, rng_units, real.C, subset, bar, k=k)
        majority = _score(task, None, task.y, real.C, bar, _majority)
        rows.append(_row("majority", 0, 0, majority, subset, k=min(sets)))
    df = pd.DataFrame(rows)
    meta = dict(meta, **_task_meta(task, label, target, folds, include_bos, seed, subset), ks=list(sets),
                n_random=n_random, majority=majority.accuracy, C=Cs, converged=float(df.converged.mean()))
    return Result(df, kind="decoding_curve", meta=meta, plotter=_plot_curve)


__all__ = ["decode", "decode_curve", "DecodingResult", "TARGETS", "CS", "INNER_FOLDS", "TOL", "INNER_TOL", "MAX_ITER",
           "THREADS", "KS"]
