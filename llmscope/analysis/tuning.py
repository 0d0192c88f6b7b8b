"""Tuning and selectivity: how each unit's response depends on a categorical label of its token.

For every unit of one or more recorded sites and a categorical trial-table column (``pos_tag``,
``number``, ``is_repeat``, a position bin...), :func:`tuning` measures

* the tuning curve: mean and s.e.m. of the response in each category;
* selectivity for the *preferred* category (the one with the highest mean) against all the
  others: the one-vs-rest ROC AUC (Mann-Whitney U / (n_pref * n_rest)) and d';
* a Kruskal-Wallis test across all categories (tie-corrected, as ``scipy.stats.kruskal``),
  with Benjamini-Hochberg FDR over every unit of the table;
* a label-permutation control computed the same way: the label column is shuffled across the
  analysed tokens (one shuffle shared by all units, so correlated units stay correlated), and
  the shuffled AUC, d', p and q sit beside the real ones.

How it stays cheap: the rank statistics need each unit's midranks, and a float16 recording
(the default) holds at most 65,536 distinct values, so a unit is ranked by counting, not
sorting (:mod:`llmscope.analysis.counting`, a numba kernel): its values, as order-preserving
16-bit keys, are counted in a table over the unit's range, whose running sum gives each value's
midrank and the tie correction. The tokens are read in the order of the joint code of the real
and the shuffled labels, so every category sum (of midranks, exact in integers; of responses and
of their squares, in float64) is a sum over one segment of that order, from which Kruskal-Wallis
H, each AUC, the means, s.e.m. and d', and the whole permutation control follow. Float32
recordings are ranked by sorting instead, the label codes riding in the low bits of the keys.
The recording is read as stored, a site (or ``READ_BYTES`` of its columns) at a time, by worker
processes (one per part, up to the number of cores; on Linux): each reads and analyses its own
parts, one at a time, and sends back only statistics, so memory stays bounded whatever the
recording's size.

Caveat: tokens of one document are not independent, so real p-values can be optimistic; the
shuffle control breaks label-response pairing only, not that dependence.

Example:
    >>> import llmscope
    >>> from llmscope import tuning
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> res = tuning(rec, "mlp.0", "pos_tag", progress=False)
    >>> res.df.columns[:3].tolist()
    ['preferred', 'mean_preferred', 'mean_rest']
    >>> res.meta["n_significant"] > res.meta["n_significant_control"][0]
    True
"""

from __future__ import annotations

import functools
import html
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from llmscope.analysis.responses import check_finite, check_recording, resolve, scalar
from llmscope.checks import choice, count, draws, flag
from llmscope.analysis.stats import fdr
from llmscope.stimuli.trials import labels as label_values
from llmscope.stimuli.trials import rows
from llmscope.errors import AnalysisError, SiteError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.result import Result, unit_dataset
from llmscope.sites import Site, UnitsLike, parse_units, unit_labels
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from tqdm import tqdm

ALPHA = 0.05  # FDR level of the ``significant`` columns and the meta counts
MAX_CATEGORIES = 256  # category tables [units, categories] stay small
READ_BYTES = 256 << 20  # responses read at once, as stored: a whole site, or a column block of it
TASK_UNITS = 64  # float32 units gathered at once: their rows in whole cache lines
RANK_UNITS = 8  # float32 units sorted at once
MAX_WORKERS = 8  # worker processes, one per core up to this
JOINT_BITS = 10  # labelings whose codes fit in this many bits share one sort and bincount (float32)
JOINT_BINS = 1 << JOINT_BITS  # labelings whose joint category code stays below this share one token order


# ---------------------------------------------------------------- the statistics of a block of units


@dataclass(frozen=True)
class _Group:
    """Labelings ``first .. first + size - 1``, whose joint category code (below JOINT_BINS)
    splits the tokens, sorted by it, into one segment per code: a category sum is a segment sum."""

    first: int
    size: int
    order: np.ndarray | None  # sorts the tokens (as the labelings hold them) by the joint code; None: sorted
    present: np.ndarray  # the joint codes present, ascending
    starts: np.ndarray  # where each present code's segment starts


@dataclass(frozen=True)
class _Labelings:
    """The real category codes (row 0) and ``n_controls`` shuffles of them, over the analysed tokens.

    The statistics read the tokens in ``order``, which sorts them by the joint code of the first
    group of labelings (the real one and the first shuffles): its category sums are segment sums
    as the tokens stand; a later group re-orders them once more."""

    codes: np.ndarray  # [1 + n_controls, n_tokens] uint32, tokens in their own order
    counts: np.ndarray  # [n_categories] float64, tokens per category (the same in every labeling)
    order: np.ndarray  # [n_tokens] the order the statistics read the tokens in
    groups: tuple[_Group, ...]


def _labelings(codes: np.ndarray, n_categories: int, n_controls: int, seed: int) -> _Labelings:
    rng = np.random.default_rng(seed)
    all_codes = np.stack([codes, *(rng.permutation(codes) for _ in range(n_controls))]).astype(np.uint32)
    m = 1
    while n_categories ** (m + 1) <= JOINT_BINS:
        m += 1
    joints = []
    for first in range(0, len(all_codes), m):
        joint = np.zeros(len(codes), dtype=np.intp)
        for c in all_codes[first: first + m]:
            joint *= n_categories
            joint += c
        joints.append(joint)
    order = np.argsort(joints[0], kind="stable")
    groups = []
    for g, joint in enumerate(joints):
        joint = joint[order]
        again = None if g == 0 else np.argsort(joint, kind="stable")
        present, starts = np.unique(joint if again is None else joint[again], return_index=True)
        groups.append(_Group(g * m, min(m, len(all_codes) - g * m), again, present, starts))
    counts = np.bincount(codes, minlength=n_categories).astype(np.float64)
    return _Labelings(all_codes, counts, order, tuple(groups))


def _margins(table: np.ndarray, group: _Group, k: int) -> np.ndarray:
    """Each labeling's category sums ``[group.size, w, k]`` from the sums ``table [w, n_present]``
    over the segments of a group's joint codes: the margins of the joint table."""
    w = len(table)
    full = np.zeros((w, k ** group.size), dtype=table.dtype)
    full[:, group.present] = table
    full = full.reshape(w, *[k] * group.size)
    return np.stack([full.sum(axis=tuple(d for d in range(1, group.size + 1) if d != i + 1))
                     for i in range(group.size)])


def _category_sums(a: np.ndarray, lab: _Labelings, dtype: Any) -> np.ndarray:
    """Sums of each row of ``a [w, n]`` (tokens in ``lab.order``) over every category of every
    labeling: ``[n_labelings, w, k]``, accumulated in ``dtype``. One ``np.add.reduceat`` per
    group of labelings."""
    out = np.empty((len(lab.codes), len(a), len(lab.counts)), dtype=dtype)
    for group in lab.groups:
        ordered = a if group.order is None else np.take(a, group.order, axis=1)
        table = np.add.reduceat(ordered, group.starts, axis=1, dtype=dtype)
        out[group.first: group.first + group.size] = _margins(table, group, len(lab.counts))
    return out


def _counted(part: np.ndarray, ordered: np.ndarray, lab: _Labelings,
             name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank sums, sums and sums of squares per category ``[n_labelings, u, k]`` and tie terms
    ``[u]`` of the float16 units of ``part [n_rows, u]`` (as stored) over its rows ``ordered``
    (in ``lab.order``), ranked by counting: one :func:`~llmscope.analysis.counting.segment_sums`
    per group of labelings."""
    from llmscope.analysis.counting import segment_sums

    k = len(lab.counts)
    ranks, sums, squares = (np.empty((len(lab.codes), part.shape[1], k)) for _ in range(3))
    for group in lab.groups:
        rows = ordered if group.order is None else ordered[group.order]
        doubled, total, square, ties = segment_sums(part, rows, np.append(group.starts, len(rows)), name)
        at = slice(group.first, group.first + group.size)
        ranks[at], sums[at], squares[at] = _margins(doubled, group, k) / 2, _margins(total, group, k), _margins(square, group, k)
    return ranks, sums, squares, ties


def _keys(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Order-preserving integer keys of float32 responses ``x [u, n]`` (C order, no NaN):
    equal values (-0.0 and 0.0 too) get equal keys and smaller values smaller ones. Returns
    uint32 keys that start at 0 in every row, and the number of bits they need."""
    bits = x.view(np.int32)
    sign = bits >> 31  # 0, or -1 for a negative
    key = bits & 0x7FFFFFFF
    key ^= sign
    key -= sign  # an IEEE float's magnitude bits, negated for a negative: integers in float order
    used = int(np.bitwise_or.reduce(bits, axis=None))
    key >>= (used & -used).bit_length() - 1 if used else 0  # drop low bits no value uses (13 for fp16 data)
    key -= key.min(axis=1, keepdims=True)  # may wrap in int32; exact once read as uint32
    key = key.view(np.uint32)
    return key, int(key.max()).bit_length()


def _midranks(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based midranks (ties averaged) of every position of each sorted row ``[u, n]``, and
    each row's tie term ``sum(t**3 - t)`` over its groups of ``t`` equal values."""
    u, n = sorted_keys.shape
    first = np.empty((u, n), dtype=bool)
    first[:, 0] = True
    np.not_equal(sorted_keys[:, 1:], sorted_keys[:, :-1], out=first[:, 1:])
    starts = np.flatnonzero(first)  # groups of equal values, in the flattened rows (a row starts one)
    sizes = np.diff(starts, append=u * n)
    group = np.cumsum(first.ravel(), dtype=np.int32 if u * n < 2**31 else np.intp)
    group -= 1
    mid = (starts + (sizes + 1) * 0.5).take(group).reshape(u, n)
    mid -= (np.arange(u) * n)[:, None]
    t = sizes.astype(np.float64)
    return mid, np.add.reduceat((t * t - 1.0) * t, np.searchsorted(starts, np.arange(u) * n))


def _rank_sums(x: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Midrank sums per category ``[n_labelings, u, k]`` and tie terms ``[u]`` of float32 units
    ``x [u, n]`` (C order) under the labelings ``codes [n_labelings, n]``, by sorting.

    The codes of as many labelings as fit ride in the low bits of the keys, so one sort orders
    them with the responses; the rank sums of up to ``JOINT_BITS`` bits of codes come from one
    ``bincount`` over their joint code."""
    key, key_bits = _keys(x)
    u, width, n_lab = x.shape[0], max(1, (k - 1).bit_length()), len(codes)
    per_sort = n_lab if key_bits + n_lab * width <= 32 else max(1, (64 - key_bits) // width)
    per_count = max(1, JOINT_BITS // width)
    sums = np.empty((n_lab, u, k))
    for lo in range(0, n_lab, per_sort):
        group = codes[lo: lo + per_sort]
        dtype = np.uint32 if key_bits + len(group) * width <= 32 else np.uint64
        packed = key.astype(dtype, copy=lo + per_sort < n_lab)  # the last group may reuse the keys
        for c in group:
            packed <<= dtype(width)
            packed |= c
        packed.sort(axis=1)
        mid, ties = _midranks(packed >> dtype(len(group) * width))
        for first in range(0, len(group), per_count):
            m = min(per_count, len(group) - first)
            bins = 1 << (m * width)
            joint = (packed >> dtype((len(group) - first - m) * width)) & dtype(bins - 1)
            joint = joint.astype(np.intp)
            joint += (np.arange(u, dtype=np.intp) * bins)[:, None]
            table = np.bincount(joint.ravel(), weights=mid.ravel(), minlength=u * bins)
            table = table.reshape(u, *[1 << width] * m)
            for i in range(m):
                sums[lo + first + i] = table.sum(axis=tuple(a for a in range(1, m + 1) if a != i + 1))[:, :k]
    return sums, ties


def _sorted(x: np.ndarray, lab: _Labelings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`_counted` gives, for float32 units ``x [u, n]`` (C order, tokens in
    ``lab.order``), ranked by sorting ``RANK_UNITS`` units at a time."""
    (u, n), n_lab, k = x.shape, len(lab.codes), len(lab.counts)
    codes = lab.codes[:, lab.order]
    sums, squares, rank_sums, ties = np.empty((n_lab, u, k)), np.empty((n_lab, u, k)), np.empty((n_lab, u, k)), np.empty(u)
    for lo in range(0, u, RANK_UNITS):
        part, at = x[lo: lo + RANK_UNITS], slice(lo, lo + RANK_UNITS)
        rank_sums[:, at], ties[at] = _rank_sums(part, codes, k)
        moments = np.empty((2, *part.shape))  # the responses and their squares: one sum
        np.copyto(moments[0], part)
        np.square(moments[0], out=moments[1])
        both = _category_sums(moments.reshape(2 * len(part), n), lab, np.float64)
        sums[:, at], squares[:, at] = both[:, :len(part)], both[:, len(part):]
    return rank_sums, sums, squares, ties


def _statistics(rank_sums: np.ndarray, sums: np.ndarray, squares: np.ndarray, ties: np.ndarray,
                lab: _Labelings) -> dict[str, np.ndarray]:
    """Every statistic of ``u`` units under every labeling (``[n_labelings, u]`` each; ``means``
    and ``sems`` ``[u, k]`` for the real labels) from their category sums ``[n_labelings, u, k]``
    (of midranks, responses and squares) and tie terms ``[u]``."""
    from scipy.special import chdtrc  # what scipy.stats.chi2.sf computes, without importing scipy.stats

    n_k, k = lab.counts, len(lab.counts)
    n = float(n_k.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = sums / n_k
        var = np.maximum(squares - sums * mean, 0.0) / (n_k - 1)
        pref = mean.argmax(-1)
        pick = lambda a: np.take_along_axis(a, pref[..., None], -1)[..., 0]  # noqa: E731
        n_p = n_k[pref]
        n_r = n - n_p
        rest_sum, rest_sq = sums.sum(-1) - pick(sums), squares.sum(-1) - pick(squares)
        mean_rest = rest_sum / n_r
        var_rest = np.maximum(rest_sq - rest_sum * mean_rest, 0.0) / (n_r - 1)
        dprime = (pick(mean) - mean_rest) / np.sqrt((pick(var) + var_rest) / 2)
        auc = (pick(rank_sums) - n_p * (n_p + 1) / 2) / (n_p * n_r)
        spread = 1.0 - ties / (n ** 3 - n)  # 0 for a unit whose responses are all equal
        h = (12.0 / (n * (n + 1.0)) * (rank_sums ** 2 / n_k).sum(-1) - 3.0 * (n + 1)) / spread
        h = np.where(spread > 0, np.maximum(h, 0.0), np.nan)
    return dict(preferred=pref, mean_preferred=pick(mean), mean_rest=mean_rest, auc=auc, dprime=dprime,
                H=h, p=chdtrc(k - 1, h), means=mean[0], sems=np.sqrt(var[0] / n_k))


def _block(x: np.ndarray, lab: _Labelings, name: str = "the block") -> dict[str, np.ndarray]:
    """Every statistic of the units ``x [u, n]`` (float16 or float32, tokens as ``lab.codes``
    holds them) under every labeling: each a ``[n_labelings, u]`` array, ``means`` and ``sems``
    ``[u, k]`` for the real labels (what :func:`tuning` computes, one part of a recording at a time)."""
    if x.dtype == np.float16:
        return _statistics(*_counted(x.T, lab.order, lab, name), lab)
    return _statistics(*_sorted(np.ascontiguousarray(x[:, lab.order]), lab), lab)


# ---------------------------------------------------------------- reading the recording


def _tasks(recording: Recording, names: list[str]) -> list[tuple[str, int, int]]:
    """``(site, first unit, end unit)`` per part of the recording read at once: a whole site, or
    ``READ_BYTES`` of its columns (a chunk spans whole units: a column block reads no more)."""
    out = []
    for name in names:
        s = recording.site(name)
        itemsize = np.dtype(recording.dtype).itemsize if len(s.shape) == 1 else 4
        step = max(1, min(s.n_units, READ_BYTES // (itemsize * max(len(recording), 1))))
        out += [(name, lo, min(lo + step, s.n_units)) for lo in range(0, s.n_units, step)]
    return out


def _read(recording: Recording, site: str, lo: int, hi: int) -> np.ndarray:
    """Responses ``[n_tokens, hi - lo]`` of units ``lo..hi-1``: as stored (float16 by default: no
    conversion, half the bytes) for one value per unit, else the float32 L2 norms of ``scalar``."""
    s = recording.site(site)
    units = None if (lo, hi) == (0, s.n_units) else np.arange(lo, hi)
    if len(s.shape) == 1:
        return check_finite(recording, s, recording.responses(site, units, dtype=None), 0, units)
    return scalar(recording, site, units)


def _job(recording: Recording, ordered: np.ndarray, lab: _Labelings) -> dict[str, Any]:
    return dict(recording=recording, ordered=ordered, lab=lab)


def _part_statistics(job: dict[str, Any], task: tuple[str, int, int]) -> list[dict[str, np.ndarray]]:
    """Read one part of the recording and compute its units' statistics: float16 units all at
    once, by counting; float32 units ``TASK_UNITS`` at a time (their rows gathered in whole cache
    lines, once, in the labelings' order), by sorting."""
    name, lo, hi = task
    ordered, lab = job["ordered"], job["lab"]
    part = _read(job["recording"], name, lo, hi)
    if part.dtype == np.float16:
        return [_statistics(*_counted(part, ordered, lab, name), lab)]
    out = []
    for j in range(0, part.shape[1], TASK_UNITS):
        x = np.ascontiguousarray(part[ordered, j: j + TASK_UNITS].T)
        out.append(_statistics(*_sorted(x, lab), lab))
    return out


_WORKER_JOB: dict[str, Any] = {}  # in a worker process: the job it inherited when it was forked


def _start_worker(*args: Any) -> None:
    _WORKER_JOB.update(_job(*args))


def _worker_part(task: tuple[str, int, int]) -> list[dict[str, np.ndarray]]:
    return _part_statistics(_WORKER_JOB, task)


def _workers(n_tasks: int) -> int:
    """Worker processes for ``n_tasks`` parts: one per part, up to the cores this process may use
    (and ``MAX_WORKERS``); none (work here) if that is one, or off Linux, the one platform where
    forking is the default and safe for what the workers use (numpy, zarr, numba)."""
    if not sys.platform.startswith("linux"):
        return 0
    n = min(len(os.sched_getaffinity(0)), MAX_WORKERS, n_tasks)
    return n if n > 1 else 0


def _stream(recording: Recording, names: list[str], rows: np.ndarray, lab: _Labelings,
            bar: tqdm) -> dict[str, list[np.ndarray]]:
    """Every site's statistics, in unit order. Each part of the recording is read and analysed
    by one of :func:`_workers` forked processes (each holds one part at a time), which inherit
    the recording, the labelings and the loaded kernel and send back only the statistics."""
    out: dict[str, list[np.ndarray]] = {}
    tasks = _tasks(recording, names)
    args = (recording, rows[lab.order], lab)
    n_workers = _workers(len(tasks))
    pool = None
    if np.dtype(recording.dtype) == np.float16:
        from llmscope.analysis import counting

        counting.load()
    try:
        if n_workers:
            pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                                       initializer=_start_worker, initargs=args)
            results = pool.map(_worker_part, tasks)
        else:
            results = map(functools.partial(_part_statistics, _job(*args)), tasks)
        for (_, lo, hi), blocks in zip(tasks, results):
            for stats in blocks:
                for key, value in stats.items():
                    out.setdefault(key, []).append(value)
            bar.update(hi - lo)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


# ---------------------------------------------------------------- the result


class TuningResult(Result):
    """What :func:`tuning` returns: one row per unit, and the tuning curves on ``.data``.

    ``.df``, one row per unit, indexed by ``(site, unit)``:

    ===================  ==========================================================================
    preferred            the category with the highest mean response
    mean_preferred       mean response in it
    mean_rest            mean response over all other tokens
    auc                  ROC AUC of the preferred category vs the rest (0.5 = chance)
    dprime               (mean_preferred - mean_rest) / sqrt((var_preferred + var_rest) / 2)
    H, p                 Kruskal-Wallis statistic (tie-corrected) and p-value over all categories
    q                    Benjamini-Hochberg adjusted p over every unit of the table
    significant          q < ALPHA (0.05)
    preferred_control,   the same with the label shuffled across tokens (the first shuffle when
    auc_control, ...     ``n_controls > 1``): ``auc_control``, ``dprime_control``, ``p_control``,
                         ``q_control``
    ===================  ==========================================================================

    ``.data``: ``mean`` and ``sem`` ``[unit, <label>]`` (the tuning curves; ``unit`` labelled
    ``"mlp.0:12"``, with coordinates ``site`` and ``index``) and ``count`` ``[<label>]`` (tokens per
    category).

    ``.meta``: ``sites``, ``label``, ``categories``, ``n_tokens``, ``n_seqs``, ``include_bos``,
    ``n_controls``, ``seed``, ``control`` (how labels were shuffled), ``alpha``, ``n_significant``,
    ``n_significant_control`` (a list, one count per shuffle), ``test`` (``"kruskal-wallis"``),
    ``model``, ``fingerprint``, ``stimuli``,
    ``complete`` (False: the recording was incomplete and only its recorded part was analysed),
    ``recorded_seqs`` and ``stimuli_seqs`` (sequences recorded, of how many).
    """

    kind = "tuning"
    rank_by = "auc"

    def curve(self, units: Any) -> pd.DataFrame:
        """The tuning curve of one unit: a DataFrame with columns ``category``, ``mean``, ``sem``,
        ``n`` (one row per category). ``units`` is an index (when the result has one site), a
        ``(site, unit)`` pair or a one-row unit table such as ``res.top(1)``.

        Example:
            >>> import llmscope
            >>> from llmscope import tuning
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
            ...                       dtype="float32", progress=False)
            >>> res = tuning(rec, "mlp.0", "pos_tag", progress=False)
            >>> res.curve(12).columns.tolist()
            ['category', 'mean', 'sem', 'n']
        """
        if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
            if len(self.meta["sites"]) != 1:
                raise SiteError(f"this result holds sites {self.meta['sites']}: name the unit as (site, unit).")
            units = (self.meta["sites"][0], units)
        pairs = [(s, i) for s, idx in parse_units(units) for i in np.atleast_1d(np.asarray(idx, dtype=object))]
        if len(pairs) != 1 or pairs[0] not in self.df.index:
            raise SiteError.Type(f"curve() takes one unit of this result (sites {self.meta['sites']}, units "
                                 f"0..n_units-1 of each); got {units!r}.")
        label = unit_labels([pairs[0]])[0]
        curve = self.data.sel(unit=label)
        return pd.DataFrame({"category": curve[self.meta["label"]].to_numpy(), "mean": curve["mean"].to_numpy(),
                             "sem": curve["sem"].to_numpy(), "n": self.data["count"].to_numpy().astype(int)})

    @renamed(kind="style")
    def plot(self, n: int = 30, style: str = "heatmap") -> "go.Figure":
        """The ``n`` most selective units' tuning: a heatmap of z-scored means per category
        (``style="heatmap"``) or their curves with ± s.e.m. (``style="curves"``)."""
        import plotly.graph_objects as go

        choice(style, "style", ("heatmap", "curves"))
        top = self.top(count(n, "n")).index
        names = unit_labels(top)
        label = self.meta["label"]
        curves = self.data.sel(unit=names)
        cats = [html.escape(str(c)) for c in curves[label].to_numpy()]
        title = html.escape(str(label))
        if style == "heatmap":
            z = curves["mean"].to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                z = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
            fig = go.Figure(go.Heatmap(z=z, x=cats, y=names, colorscale="RdBu_r", zmid=0,
                                       colorbar=dict(title="z (per unit)"),
                                       hovertemplate="%{y} · %{x}<br>z %{z:.2f}<extra></extra>"))
            fig.update_yaxes(type="category", autorange="reversed", title="unit")
            return fig.update_layout(title=f"tuning to {title}: the {len(top)} most selective units (by AUC)",
                                     xaxis=dict(type="category", title=title))
        fig = go.Figure()
        for name in names:
            one = curves.sel(unit=name)
            fig.add_trace(go.Scatter(x=cats, y=one["mean"].to_numpy(), name=name, mode="lines+markers",
                                     error_y=dict(type="data", array=one["sem"].to_numpy())))
        return fig.update_layout(title=f"tuning curves (mean ± s.e.m.) over {title}",
                                 xaxis=dict(type="category", title=title), yaxis_title="response",
                                 legend_title="unit")


# ---------------------------------------------------------------- the analysis


@renamed(site="units", n_perm="n_controls")
def tuning(recording: Recording, units: UnitsLike, label: str, *, include_bos: bool = False,
           n_controls: int = 1, seed: int = 0, progress: bool = True) -> TuningResult:
    """Tuning curves, selectivity and significance of every unit of ``units`` over ``label``.

    Args:
        recording: a :class:`~llmscope.Recording` (or a ``select``-ed view of one).
        units: recorded units: a site (``"mlp.0"``, ``"attn.1"``: a head responds with the L2 norm
            of its ``hook_z``), a list of sites, or any unit table: one table, FDR over all of them.
        label: a categorical trial-table column (``"pos_tag"``, ``"number"``, ``"is_repeat"``...);
            rows where it is missing (NaN, None, ``""``) are left out.
        include_bos: keep BOS rows (left out by default).
        n_controls: how many label shuffles the control runs (1..100); the ``*_control`` columns
            come from the first, ``meta["n_significant_control"]`` counts each.
        seed: seeds the shuffles.
        progress: show a tqdm bar (units).

    Returns:
        A :class:`TuningResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: not a Recording, no rows to analyse, a label with one category (or more
            than ``MAX_CATEGORIES``), a bad ``n_controls``/``seed``/``include_bos``/``progress``.
        ColumnError: ``label`` is not a trial-table column (the message lists them).
        SiteError: a site the recording does not hold (the message lists those it does), a unit
            out of range.

    Example:
        >>> import llmscope
        >>> from llmscope import tuning
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> res = tuning(rec, ["mlp.0", "mlp.1"], "pos_tag", progress=False)
        >>> list(res.top(3).index.names), len(res.df)
        (['site', 'unit'], 1024)
    """
    meta = check_recording(recording, "tuning")
    n_controls = draws(n_controls, "n_controls", "pass")
    seed = count(seed, "seed", minimum=0)
    flag(progress, "progress")
    resolved = resolve(recording, units)
    keep = rows(recording.tokens, include_bos)
    if not keep.any():
        raise AnalysisError(f"the recording {recording.name!r} has no rows to analyse ({len(recording)} rows"
                            f"{'' if len(recording) else ': an empty selection'}); select some tokens.")
    values = label_values(recording.tokens, label, keep)
    if values.nunique() > MAX_CATEGORIES:
        raise AnalysisError.Range(f"the label column {label!r} has {values.nunique()} categories; tuning compares at "
                            f"most {MAX_CATEGORIES} (its tables grow with them): bin it, or pick a coarser label.")

    codes, categories = pd.factorize(values, sort=True)
    analysed = values.index.to_numpy()
    lab = _labelings(codes, len(categories), n_controls, seed)
    names = [site.name for site, _ in resolved]
    sizes = [recording.site(s).n_units for s in names]
    with progress_bar(total=sum(sizes), unit="unit", desc=f"tuning {label}", show=progress) as bar:
        parts = _stream(recording, names, analysed, lab, bar)
    return _result(parts, resolved, sizes, categories, lab, label, values, recording,
                   dict(meta, include_bos=include_bos, n_controls=n_controls, seed=seed))


def _result(parts: dict[str, list[np.ndarray]], resolved: list[tuple[Site, np.ndarray]], sizes: list[int],
            categories: pd.Index, lab: _Labelings, label: str, values: pd.Series, recording: Recording,
            meta: dict) -> TuningResult:
    """The table of the units asked for (whole sites are analysed: a part reads whole chunks),
    FDR over those units only."""
    names = [site.name for site, _ in resolved]
    index = pd.MultiIndex.from_arrays([np.repeat(names, sizes), np.concatenate([np.arange(n) for n in sizes])],
                                      names=["site", "unit"])
    wanted = pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in resolved for i in idx], names=["site", "unit"])
    keep = index.get_indexer(wanted)
    index = index[keep]
    means, sems = (np.concatenate(parts.pop(k))[keep] for k in ("means", "sems"))
    stat = {k: np.concatenate(v, axis=-1)[..., keep] for k, v in parts.items()}  # each [n_labelings, units]
    q = np.stack([fdr(p) for p in stat["p"]])
    cats = np.asarray(categories, dtype=object)
    df = pd.DataFrame({
        "preferred": cats[stat["preferred"][0]], "mean_preferred": stat["mean_preferred"][0],
        "mean_rest": stat["mean_rest"][0], "auc": stat["auc"][0], "dprime": stat["dprime"][0],
        "H": stat["H"][0], "p": stat["p"][0], "q": q[0], "significant": q[0] < ALPHA,
        "preferred_control": cats[stat["preferred"][1]], "auc_control": stat["auc"][1],
        "dprime_control": stat["dprime"][1], "p_control": stat["p"][1], "q_control": q[1],
    }, index=index)
    seqs = recording.tokens.loc[values.index, "seq"].nunique()
    meta = dict(meta, sites=names, label=label, categories=categories.tolist(), n_tokens=len(values), n_seqs=int(seqs),
                control="labels permuted across the analysed tokens, one permutation for all units",
                alpha=ALPHA, n_significant=int((q[0] < ALPHA).sum()),
                n_significant_control=[int((qs < ALPHA).sum()) for qs in q[1:]], test="kruskal-wallis")
    return TuningResult(df, meta, unit_dataset(index, {"mean": means, "sem": sems}, label, categories,
                                               count=lab.counts))


__all__ = ["tuning", "TuningResult"]
