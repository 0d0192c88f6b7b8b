"""Sparse coding: how few of a site's units are active per token, and how rarely each unit is.

Cortex is said to code sparsely: about 2% of a region's neurons active for any stimulus
(seed 003). :func:`sparsity` measures the same two things on a recorded site:

* **population sparsity**: the fraction of the site's units active at a token, averaged over
  tokens (the figure to set beside the ~2%);
* **lifetime sparsity**: the Treves-Rolls measure of each unit over tokens,
  ``a = (mean r)^2 / mean(r^2)`` (1/n_tokens for a unit active on one token, 1 for a unit
  equally active everywhere; low = sparse), its median over the units.

Responses and activity. A firing rate is not negative, so both measures read a non-negative
response ``r``, from the recorded value ``x`` by ``negative``:

* ``"clip"`` (default): ``r = max(x, 0)``. GELU's negative lobe (>= -0.17, what a GPT-2
  neuron outputs when its input is negative) counts as silence, as SiLU's (>= -0.28) does.
* ``"abs"``: ``r = |x|``. For a gated MLP (SmolLM2's ``mlp.L`` records ``silu(gate) * up``,
  half its values negative) the sign comes from the ``up`` projection and the next layer reads
  both signs alike, so the magnitude is the activity. At threshold 0 every unit is active.

A unit is *active* at a token when ``r`` is strictly above a level, ``threshold x scale``,
where ``scale`` is the root mean square of ``r`` over the whole site (all units and tokens
analysed): one ruler for every unit of a site, so a unit that is weak everywhere is rarely
active, and the thresholds mean the same on sites of different scale. Threshold 0 is "any
output above zero". Below the level a response counts as silence, so the Treves-Rolls measure
at a threshold is computed on ``r`` with sub-threshold values set to 0 (at threshold 0 it is
the plain measure). Several thresholds show how much the answer depends on the choice.

A population is every unit of a site, or the units asked for (``units=("mlp.0", [3, 7])``).

Control: the same population in a random orthogonal basis (a Haar-random rotation of the
recorded values ``x``, before ``r`` is taken), measured the same
way with its own scale. A rotation keeps the population's geometry (every distance, the
covariance spectrum, the total energy) and changes only which directions are called units. If
sparsity is a property of the neuron basis (the elementwise nonlinearity makes that basis
special) the rotated population is denser; if it were only the population's geometry, the
two would agree. (A Gaussian with matched moments answers a weaker question: rotated units
are near-Gaussian mixtures already, and the rotation keeps the real covariance exactly.)

Example:
    >>> import llmscope
    >>> from llmscope import sparsity
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> sp = sparsity(rec, ["mlp.0", "mlp.1"], thresholds=(0.0, 1.0), progress=False)
    >>> sp.df.columns.tolist()[:4]
    ['level', 'population', 'population_control', 'lifetime']
    >>> bool((sp.df.lifetime < sp.df.lifetime_control).all())
    True
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from llmscope.analysis import responses
from llmscope.checks import count, flag, number
from llmscope.errors import AnalysisError
from llmscope.progress import progress_bar
from llmscope.recording import Recording
from llmscope.result import Result, unit_dataset
from llmscope.sites import UnitsLike
from llmscope.stimuli import trials
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go

REFERENCE = 0.02  # seed 003: "any given stimulus activates only ~2% of neurons in a region"
NEGATIVE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clip": lambda x: np.maximum(x, 0, out=x),
    "abs": lambda x: np.abs(x, out=x),
}
CONTROLS = ("rotation", None)


def _check_thresholds(thresholds: Any) -> np.ndarray:
    what = "thresholds (multiples of the site's RMS response)"
    if not isinstance(thresholds, (list, tuple, np.ndarray)) or len(thresholds) == 0:
        raise AnalysisError.Type(f"{what} are a non-empty list of numbers >= 0, such as (0.0, 1.0, 3.0); "
                                 f"got {thresholds!r}.")
    for t in thresholds:
        number(t, f"each of {what}", 0)
    if len(set(map(float, thresholds))) != len(thresholds):
        raise AnalysisError(f"thresholds must be a non-empty list of distinct finite numbers >= 0 (multiples of "
                            f"the site's RMS response), such as (0.0, 1.0, 3.0); got {thresholds!r}.")
    return np.sort(np.asarray(thresholds, dtype=np.float64))


class _Tally:
    """Running sums of one population (real or rotated), block by block: pass 1 its scale, pass 2
    its activity at every level."""

    def __init__(self, n_units: int, thresholds: np.ndarray) -> None:
        self.thresholds = thresholds
        self.sq, self.cells = 0.0, 0  # sum of r^2 and number of values (pass 1)
        self.s1 = np.zeros((len(thresholds), n_units))  # per unit: sum of supra-threshold r
        self.s2 = np.zeros((len(thresholds), n_units))  # ... and of their squares
        self.n_active = np.zeros((len(thresholds), n_units))  # tokens where the unit is active
        self.population: list[np.ndarray] = []  # per block: [n_rows, n_thresholds] fraction of units active

    @property
    def scale(self) -> float:
        """The RMS of r over the site: the ruler of the thresholds."""
        return math.sqrt(self.sq / self.cells)

    @property
    def levels(self) -> np.ndarray:
        return self.thresholds * self.scale

    def measure(self, r: np.ndarray) -> None:
        self.sq += float(np.square(r, dtype=np.float64).sum())
        self.cells += r.size

    def add(self, r: np.ndarray) -> None:
        fractions = np.empty((len(r), len(self.thresholds)))
        for i, level in enumerate(self.levels):
            active = r > level
            kept = np.where(active, r, 0).astype(np.float64)
            self.s1[i] += kept.sum(0)
            self.s2[i] += np.square(kept).sum(0)
            self.n_active[i] += active.sum(0)
            fractions[:, i] = active.mean(1)
        self.population.append(fractions)

    def summary(self, n: int) -> dict[str, np.ndarray]:
        """Per threshold: ``population``, ``lifetime`` (median Treves-Rolls over units ever
        active) and ``silent``; with the per-unit ``tr`` and ``active`` ``[n_thresholds, n_units]``
        (``tr`` NaN for a unit never active)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            tr = np.where(self.s2 > 0, np.square(self.s1) / (n * self.s2), np.nan)  # NaN: never active
        ever = self.n_active > 0
        lifetime = np.array([np.median(row[ok]) if ok.any() else np.nan for row, ok in zip(tr, ever)])
        return dict(population=np.concatenate(self.population).mean(0), lifetime=lifetime,
                    silent=1 - ever.mean(1), tr=tr, active=self.n_active / n)


def _rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal ``[d, d]`` float32 matrix: the QR factor of a Gaussian matrix with
    its columns' signs fixed by R's diagonal (Mezzadri 2007). ``scipy.stats.ortho_group`` draws
    the same distribution with a Python loop of d reflections, several times slower at d = 1536."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _site(recording: Recording, name: str, units: np.ndarray | None, keep: np.ndarray, thresholds: np.ndarray,
          rectify: Callable, rotation: np.ndarray | None, bar: tqdm) -> list[_Tally]:
    """Two passes over the blocks of one site's units (None: all); the tallies of the real
    population and, with a rotation, of the rotated one."""
    n_units = recording.site(name).n_units if units is None else len(units)
    tallies = [_Tally(n_units, thresholds) for _ in range(1 if rotation is None else 2)]
    for step in ("measure", "add"):
        for rows, block in responses.blocks(recording, name, units):
            bar.update(rows.stop - rows.start)
            x = block[keep[rows]]  # a fresh array: rectified in place
            populations = (x,) if rotation is None else (x, x @ rotation)
            for tally, y in zip(tallies, populations):
                getattr(tally, step)(rectify(y))
    return tallies


class SparsityResult(Result):
    """What :func:`sparsity` returns.

    ``.df``: one row per site and threshold, indexed by ``(site, threshold)``:

    ======================  =====================================================================
    level                   the response level a unit must exceed (threshold x the site's RMS)
    population              mean over tokens of the fraction of the site's units active
    lifetime                median over units (those ever active) of the Treves-Rolls measure
    silent                  fraction of units never active on these tokens
    \\*_control              the same for the randomly rotated population (the control)
    ======================  =====================================================================

    ``.data``: ``lifetime [unit, threshold]`` (each unit's Treves-Rolls measure; NaN for a unit
    never active), ``active [unit, threshold]`` (the fraction of tokens the unit is active) and
    ``population [token, sites, threshold]`` (the fraction of the site's units active at each
    token; ``token`` is the row in the recording, with coordinates ``seq``, ``pos``, ``text``).
    Their medians and means over units and tokens are the columns of ``.df``.

    ``.meta``: ``sites``, ``units`` (site -> the unit indices, None for all), ``thresholds``,
    ``negative``, ``control``, ``reference`` (0.02), ``scale`` and ``scale_control`` (each site's
    RMS of ``r``), ``seed``, ``include_bos``, ``n_tokens``, ``model``, ``fingerprint``,
    ``stimuli``, ``complete``, ``recorded_seqs``, ``stimuli_seqs``.

    ``.plot()``: population and lifetime sparsity against threshold, the control dotted.
    """

    kind = "sparsity"

    def plot(self) -> "go.Figure":
        """Population and lifetime sparsity against threshold, a colour per site in both panels (the
        legend shows the first panel's traces only), its rotated control dotted in the same colour."""
        import plotly.colors
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(1, 2, subplot_titles=["population: fraction of units active per token",
                                                  "lifetime: median Treves-Rolls over units"])
        palette = plotly.colors.qualitative.Plotly
        lines = [("", "", "solid")]  # (column suffix, legend suffix, dash)
        if "population_control" in self.df.columns:
            lines.append(("_control", " rotated", "dot"))
        for i, (site, part) in enumerate(self.df.groupby(level="site", sort=False)):
            t = part.index.get_level_values("threshold")
            color = palette[i % len(palette)]
            for col, measure in enumerate(("population", "lifetime")):
                for column, legend, dash in lines:
                    name = html.escape(site) + legend
                    fig.add_trace(go.Scatter(x=t, y=part[measure + column], mode="lines+markers", name=name,
                                             line=dict(color=color, dash=dash), legendgroup=name,
                                             showlegend=col == 0), 1, col + 1)
        fig.add_hline(y=REFERENCE, line=dict(color="grey", dash="dash"), row=1, col=1,
                      annotation_text="~2% (cortex, a common estimate)", annotation_position="top right")
        fig.update_yaxes(type="log", title="fraction active", row=1, col=1)
        fig.update_yaxes(title="Treves-Rolls a (low = sparse)", row=1, col=2)
        fig.update_xaxes(title="threshold (x site RMS)")
        return fig.update_layout(title=f"sparsity of {html.escape(self.meta['model'])} "
                                       f"(negative responses: {self.meta['negative']})")


@renamed(sites="units")
def sparsity(recording: Recording, units: UnitsLike, thresholds: Sequence[float] = (0.0, 1.0, 3.0), *,
             negative: str = "clip", control: str | None = "rotation", include_bos: bool = False, seed: int = 0,
             progress: bool = True) -> SparsityResult:
    """Population and lifetime sparsity of each site's units, at several thresholds (see the module docstring).

    Streams each site twice, a block of rows at a time (the scale, then the activity); memory is
    a block plus per-unit sums and, for the control, one ``[n_units, n_units]`` rotation.

    Args:
        recording: a :class:`~llmscope.Recording`.
        units: a recorded site or a list of them (``"mlp.0"``; a head responds with its ``hook_z``
            norm), or some of their units (``("mlp.0", [3, 7, 9])``, a unit table): one population per site.
        thresholds: multiples of the site's RMS response a unit must exceed to be active (>= 0).
        negative: how a negative value counts: ``"clip"`` (silence) or ``"abs"`` (its magnitude).
        control: ``"rotation"`` (the population in a random orthogonal basis) or None.
        include_bos: analyse BOS rows too (left out by default).
        seed: seeds the rotations.
        progress: show a progress bar (rows read).

    Returns:
        :class:`SparsityResult` (columns and meta keys in its docstring).

    Raises:
        AnalysisError: not a Recording, fewer than 2 tokens, a population with fewer than 2 units,
            bad thresholds, an unknown ``negative`` or ``control``.
        SiteError: a site not recorded, a unit out of range.

    Example:
        >>> import llmscope
        >>> from llmscope import sparsity
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> sp = sparsity(rec, "mlp.0", thresholds=(0.0, 3.0), progress=False)
        >>> p = sp.df.population
        >>> bool(p.loc[("mlp.0", 3.0)] < p.loc[("mlp.0", 0.0)])
        True
    """
    import xarray as xr

    meta = responses.check_recording(recording, "sparsity")
    thresholds = _check_thresholds(thresholds)
    if negative not in NEGATIVE:
        raise AnalysisError.Unknown(f"unknown negative={negative!r}; choose one of {list(NEGATIVE)}.")
    if control not in CONTROLS:
        raise AnalysisError.Unknown(f"unknown control {control!r}; choose one of {list(CONTROLS)}.")
    seed = count(seed, "seed", minimum=0)
    flag(progress, "progress")
    populations = responses.resolve(recording, units)
    small = {s.name: len(idx) for s, idx in populations if len(idx) < 2}
    if small:
        raise AnalysisError(f"sparsity is a property of a population; {small} (units per site) have fewer than 2.")
    keep = trials.rows(recording.tokens, include_bos)
    n = int(keep.sum())
    if n < 2:
        raise AnalysisError(f"sparsity needs at least 2 analysed tokens; the recording {recording.name!r} has {n}.")

    rng = np.random.default_rng(seed)
    rotations: dict[int, np.ndarray] = {}  # one random basis per width, shared by the populations of that width
    rows, lifetime, active, population = [], [], [], []
    scales: dict[str, dict[str, float]] = {"scale": {}, "scale_control": {}}
    with progress_bar(total=2 * len(recording) * len(populations), unit="tok", desc="sparsity", show=progress) as bar:
        for s, idx in populations:
            d = len(idx)
            if control is not None and d not in rotations:
                rotations[d] = _rotation(d, rng)
            rotation = rotations.get(d)
            whole = len(idx) == s.n_units  # read whole: the fast path
            tallies = _site(recording, s.name, None if whole else idx, keep, thresholds, NEGATIVE[negative], rotation,
                            bar)
            real = tallies[0].summary(n)
            table = {"level": tallies[0].levels, **{k: real[k] for k in ("population", "lifetime", "silent")}}
            scales["scale"][s.name] = tallies[0].scale
            if control is not None:
                rotated = tallies[1].summary(n)
                table.update({f"{k}_control": rotated[k] for k in ("population", "lifetime", "silent")})
                scales["scale_control"][s.name] = tallies[1].scale
            rows.append(pd.DataFrame(table, index=pd.MultiIndex.from_product([[s.name], thresholds],
                                                                             names=["site", "threshold"])))
            lifetime.append(real["tr"].T)
            active.append(real["active"].T)
            population.append(np.concatenate(tallies[0].population))
    order = ["level", "population", "population_control", "lifetime", "lifetime_control", "silent", "silent_control"]
    df = pd.concat(rows)
    df = df[[c for c in order if c in df.columns]]
    index = pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in populations for i in idx], names=["site", "unit"])
    tokens = recording.tokens.loc[keep]
    names = [s.name for s, _ in populations]
    data = unit_dataset(index, {"lifetime": np.concatenate(lifetime), "active": np.concatenate(active)}, "threshold",
                        thresholds)
    data["population"] = xr.DataArray(np.stack(population, axis=1), dims=("token", "sites", "threshold"), coords={
        "token": tokens.index.to_numpy(), "seq": ("token", tokens["seq"].to_numpy()),
        "pos": ("token", tokens["pos"].to_numpy()), "text": ("token", tokens["text"].to_numpy()), "sites": names})
    described = "the recorded values in a Haar-random orthogonal basis (one per population width)"
    meta.update(sites=names, units={s.name: None if len(idx) == s.n_units else idx.tolist() for s, idx in populations},
                thresholds=thresholds.tolist(), negative=negative, control=None if control is None else described,
                reference=REFERENCE, seed=seed, include_bos=include_bos, n_tokens=n, **scales)
    return SparsityResult(df, meta, data)


__all__ = ["sparsity", "SparsityResult", "REFERENCE"]
