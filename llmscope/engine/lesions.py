"""The stacked lesion runner: many lesions of a model, every behaviour of a battery measured under each.

* :class:`Behaviour` — a value measured on some trial rows of some stimuli: a mean loss, a share
  of correct next-token guesses, or a minimal-pair accuracy; :class:`Battery` — several of them.
* :func:`run` — the intact model and every lesion, each a set of units silenced together;
  :class:`Sums` holds each behaviour summed over each sequence's rows, so any statistic over
  sequences (a cluster bootstrap) reads them.
* :func:`random_sets` and :func:`same_sites` — the random-unit control: sets of the same size
  drawn from a pool of units, or from the same sites as a lesion's.

**Stacking.** Many lesions run in one forward pass: a bucket of sequences of similar length is
repeated ``k`` times and copy ``j`` has its own units silenced by one hook per site. That is
exact, because the copies of a batch never interact. The intact model runs each bucket once
and caches what the lesions start from, so no lesion recomputes what it cannot change:

* a lesion of neurons of one MLP site ``mlp.L`` is computed in closed form up to the residual
  leaving block L: the intact residual less what those neurons wrote into it (activation, less
  its mean for a mean lesion, times the neuron's output weights; nothing nonlinear lies
  between). Its pass starts at block L + 1; in the last block it needs no block at all, and a
  single neuron's copies are read out through the final norm in closed form;
* any other lesion starts at the first block it changes, from the intact residual entering it;
* every pass stops at ``ln_final``, and only the rows some behaviour reads are unembedded;
* lesion passes run transformers' Python tanh GELU (GPT-2's) as torch's fused one.

Each of these is a route of :mod:`llmscope.engine.routes`, checked once per model against the
plain forward pass; one that fails is not taken (its lesions run from the tokens or through the
blocks, with a warning). ``stack=False`` runs one intervened forward per lesion and batch
through :func:`~llmscope.interventions.lesion`: the plain way, which the stacked passes match.

Example:
    >>> import llmscope
    >>> from llmscope.engine import Battery, Behaviour, run
    >>> from llmscope.sites import resolve_units
    >>> model = llmscope.load("grammar-2l")
    >>> from llmscope.stimuli import grammar
    >>> docs = grammar(model, n_docs=4, seed=0)
    >>> t = docs.tokens
    >>> bat = Battery([Behaviour("copying", docs, "loss", (t.is_repeat & ~t.repeat_onset).to_numpy(bool))])
    >>> induction_head = resolve_units(model, ("attn.1", [0]))
    >>> sums = run(model, bat, [induction_head], progress=False)
    >>> harm = sums.harm()
    >>> round(float(harm.loc[1, "copying"]), 1) > 2
    True
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from llmscope.behaviour import cross_entropy
from llmscope.checks import count
from llmscope.engine import routes
from llmscope.engine.passes import run_from
from llmscope.errors import AnalysisError
from llmscope.progress import progress_bar
from llmscope.sites import Site
from llmscope.stimuli.core import Stimuli, as_stimuli
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

KINDS = {"loss": 1.0, "correct": -1.0, "accuracy": -1.0}  # the sign that turns a change of the value into harm
MIN_EFFECT = {"loss": 0.5, "correct": 0.1, "accuracy": 0.1}  # nats; fractions of rows
PREDICTIONS = ("loss", "correct")  # kinds that score the prediction of a row's own token
MODES = ("zero", "mean")
LOGIT_BYTES = 2 ** 27  # float32 logits of one pass: 128 MB (682 SmolLM2 tokens)
MAX_PASS_TOKENS = 4096  # beyond this a pass is no cheaper per token on a CPU, only bigger
PAD_SLACK = 0.1  # a bucket's sequences are at least 90% as long as its longest

Lesion = list[tuple[Site, np.ndarray]]  # units silenced together, by site; [] = the intact model


# ---------------------------------------------------------------- behaviours and batteries


@dataclass(frozen=True, eq=False)
class Behaviour:
    """One behaviour: a value measured on some rows of some stimuli.

    Attributes:
        name: how tables and columns call it (``harm_<name>``...).
        stimuli: the sequences it is measured on.
        kind: ``"loss"`` (mean next-token loss in nats of the tokens at ``rows``; harm is a
            rise), ``"correct"`` (the share of those tokens that are the model's top guess; harm
            is a fall) or ``"accuracy"`` (the share of ``rows`` where ``logit[good_id] >
            logit[bad_id]`` of the prediction made there; the trial table needs
            ``good_id``/``bad_id``; harm is a fall).
        rows: boolean mask over ``stimuli.tokens``: the rows that count (a loss or a guess
            belongs to a predicted token: never the first token of a sequence).
        min_effect: the smallest harm that matters (default :data:`MIN_EFFECT` of its kind).
        description: one line for tables.
    """

    name: str
    stimuli: Stimuli
    kind: str
    rows: np.ndarray
    min_effect: float | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise AnalysisError.Type(f"a behaviour is named by a non-empty string, got {self.name!r}.")
        if not isinstance(self.stimuli, Stimuli):
            raise AnalysisError.Type(f"behaviour {self.name!r}: stimuli must be Stimuli, got {type(self.stimuli).__name__}.")
        if self.kind not in KINDS:
            raise AnalysisError.Unknown(f"behaviour {self.name!r}: unknown kind {self.kind!r}; choose one of {list(KINDS)}.")
        rows = np.asarray(self.rows)
        if rows.dtype != bool or rows.shape != (len(self.stimuli),) or not rows.any():
            raise AnalysisError(f"behaviour {self.name!r}: rows must be a boolean mask with one entry per trial row "
                                f"({len(self.stimuli)}) and at least one True.")
        table = self.stimuli.tokens
        if self.kind in PREDICTIONS and (table["pos"].to_numpy()[rows] == 0).any():
            raise AnalysisError(f"behaviour {self.name!r}: a row at position 0 has no next-token {self.kind} "
                                "(nothing predicts the first token); leave those rows out.")
        if self.kind == "accuracy":
            missing = [c for c in ("good_id", "bad_id") if c not in table.columns]
            if missing:
                raise AnalysisError(f"behaviour {self.name!r}: an accuracy reads token ids from the columns "
                                    f"good_id and bad_id; the trial table lacks {missing}.")
        effect = MIN_EFFECT[self.kind] if self.min_effect is None else self.min_effect
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "min_effect", positive(effect, f"min_effect of {self.name!r}"))

    @property
    def sign(self) -> float:
        """+1 if harm is a rise of the value (a loss), -1 if a fall (a share correct)."""
        return KINDS[self.kind]


def positive(value: Any, name: str) -> float:
    """``value`` as a positive finite float, or an AnalysisError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < np.inf:
        raise AnalysisError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


class Battery:
    """An ordered set of :class:`Behaviour` objects with distinct names.

    Example:
        >>> import llmscope
        >>> from llmscope import battery
        >>> model = llmscope.load("grammar-2l")
        >>> bat = battery(model, n_docs=2, n_pairs=4)
        >>> bat.select(["copying", "agreement"]).names
        ['copying', 'agreement']
    """

    def __init__(self, behaviours: Sequence[Behaviour]):
        behaviours = list(behaviours)
        if not behaviours or not all(isinstance(b, Behaviour) for b in behaviours):
            raise AnalysisError("a Battery holds one or more Behaviour objects.")
        names = [b.name for b in behaviours]
        if len(set(names)) < len(names):
            raise AnalysisError(f"behaviour names must be distinct; got {names}.")
        self.behaviours = behaviours

    @property
    def names(self) -> list[str]:
        """The behaviours' names, in order."""
        return [b.name for b in self.behaviours]

    def __len__(self) -> int:
        return len(self.behaviours)

    def __iter__(self) -> Iterator[Behaviour]:
        return iter(self.behaviours)

    def __getitem__(self, name: str) -> Behaviour:
        return self.behaviours[self.names.index(self.check([name])[0])]

    def check(self, behaviours: Any) -> list[str]:
        """``behaviours`` as a list of this battery's names, or an AnalysisError naming the valid ones."""
        if isinstance(behaviours, str) or not isinstance(behaviours, (list, tuple)) or not behaviours:
            raise AnalysisError.Type(f"behaviours are a non-empty list of names from {self.names}; "
                                     f"got {behaviours!r}.")
        missing = [n for n in behaviours if n not in self.names]
        if missing:
            raise AnalysisError.Unknown(f"the battery has no behaviour {missing}; its behaviours are {self.names}.")
        return list(behaviours)

    @renamed(names="behaviours")
    def select(self, behaviours: Sequence[str]) -> "Battery":
        """The battery of the named behaviours only (in the order given)."""
        return Battery([self[n] for n in self.check(behaviours)])

    def table(self) -> pd.DataFrame:
        """One row per behaviour: ``kind``, ``stimuli``, ``n_rows``, ``n_seqs``, ``min_effect``, ``description``."""
        return pd.DataFrame([dict(kind=b.kind, stimuli=b.stimuli.name, n_rows=int(b.rows.sum()),
                                  n_seqs=int(b.stimuli.tokens["seq"][b.rows].nunique()), min_effect=b.min_effect,
                                  description=b.description) for b in self.behaviours],
                            index=pd.Index(self.names, name="behaviour"))

    def measure(self, model: "TransformerBridge", pass_tokens: int | None = None) -> pd.Series:
        """Each behaviour of the intact model (runs the model; no intervention).

        Example:
            >>> import llmscope
            >>> from llmscope import battery
            >>> model = llmscope.load("grammar-2l")
            >>> float(battery(model, n_docs=2, n_pairs=8).measure(model)["agreement"]) > 0.5
            True
        """
        return run(model, self, [], pass_tokens=pass_tokens, progress=False).values().iloc[0].rename("intact")

    def __repr__(self) -> str:
        parts = ", ".join(f"{b.name} ({b.kind}, {int(b.rows.sum())} rows of {b.stimuli.name})" for b in self)
        return f"Battery({len(self)} behaviours: {parts})"


def check_battery(model: "TransformerBridge", battery: Any) -> Battery:
    """``battery`` checked against ``model`` (its stimuli, its accuracy rows' token ids)."""
    if not isinstance(battery, Battery):
        raise AnalysisError.Type(f"expected a Battery (llmscope.analysis.atlas.battery(model)), "
                                 f"got {type(battery).__name__}.")
    for b in battery:
        as_stimuli(model, b.stimuli)
        if b.kind == "accuracy":
            ids = b.stimuli.tokens.loc[b.rows, ["good_id", "bad_id"]].to_numpy()
            if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= model.cfg.d_vocab:
                raise AnalysisError.Range(f"behaviour {b.name!r}: good_id and bad_id must hold token ids in "
                                          f"0..{model.cfg.d_vocab - 1} at its rows.")
    return battery


def check_mode(mode: Any, reference: Any) -> str:
    """A lesion mode the runner takes (:data:`MODES`), and a reference only with ``"mean"``."""
    if mode not in MODES:
        raise AnalysisError.Unknown(f"unknown lesion mode {mode!r}; stacked lesions take one of {MODES}.")
    if mode == "zero" and reference is not None:
        raise AnalysisError("lesion mode 'zero' takes no reference; pass mode='mean' to use one.")
    return mode


def pass_tokens_of(model: "TransformerBridge", pass_tokens: int | None) -> int:
    """Tokens per pass: as asked, or as many as keep a pass's logits within :data:`LOGIT_BYTES`."""
    if pass_tokens is None:
        return max(1, min(MAX_PASS_TOKENS, LOGIT_BYTES // (4 * model.cfg.d_vocab)))
    return count(pass_tokens, "pass_tokens")


# ---------------------------------------------------------------- the control: random units


def random_sets(pool: Lesion, size: int, n: int, rng: np.random.Generator) -> list[Lesion]:
    """``n`` sets of ``size`` distinct units, each drawn at random from all units of ``pool``.

    Example:
        >>> import numpy as np
        >>> import llmscope
        >>> from llmscope.engine import random_sets
        >>> from llmscope.sites import resolve_units
        >>> model = llmscope.load("grammar-2l")
        >>> sets = random_sets(resolve_units(model, "attn.0"), 2, 3, np.random.default_rng(0))
        >>> [sum(len(i) for _, i in s) for s in sets]
        [2, 2, 2]
    """
    flat = [(s, int(i)) for s, idx in pool for i in idx]
    if size > len(flat):
        raise AnalysisError.Range(f"a random set of {size} units needs that many in the pool, which has {len(flat)}.")
    out = []
    for _ in range(n):
        by_site: dict[str, tuple[Site, list[int]]] = {}
        for p in sorted(rng.choice(len(flat), size=size, replace=False)):
            s, i = flat[p]
            by_site.setdefault(s.hook, (s, []))[1].append(i)
        out.append([(s, np.array(units)) for s, units in by_site.values()])
    return out


def same_sites(lesion: Lesion, n: int, rng: np.random.Generator) -> list[Lesion]:
    """``n`` random sets shaped like ``lesion``: as many units of each of its sites, drawn from
    the site's other units (not the lesion's own).

    Example:
        >>> import numpy as np
        >>> import llmscope
        >>> from llmscope.engine import same_sites
        >>> from llmscope.sites import resolve_units
        >>> model = llmscope.load("grammar-2l")
        >>> lesion = resolve_units(model, ("mlp.1", [3, 7]))
        >>> [(s.name, len(i)) for s, i in same_sites(lesion, 2, np.random.default_rng(0))[0]]
        [('mlp.1', 2)]
    """
    pools = []
    for s, idx in lesion:
        others = np.setdiff1d(np.arange(s.n_units), idx)
        if len(others) < len(idx):
            raise AnalysisError.Range(f"{s.name} has {s.n_units} {s.unit}s; a random set of {len(idx)} others beside "
                                      f"the {len(idx)} lesioned needs {2 * len(idx)}: lesion fewer.")
        pools.append((s, others, len(idx)))
    return [[(s, np.sort(rng.choice(others, size=k, replace=False))) for s, others, k in pools] for _ in range(n)]


# ---------------------------------------------------------------- what a run measures


@dataclass
class Sums:
    """What :func:`run` measures: ``sums[name]``, ``[1 + n_lesions, n_seqs]``, is the behaviour
    summed over each sequence's rows, row 0 for the intact model and row ``1 + j`` under lesion
    ``j``; :meth:`counts` says how many rows of each sequence count."""

    battery: Battery
    sums: dict[str, np.ndarray]

    def counts(self, name: str) -> np.ndarray:
        """``[n_seqs]``: the rows of each sequence that behaviour ``name`` counts."""
        b = self.battery[name]
        return np.bincount(b.stimuli.tokens["seq"].to_numpy()[b.rows], minlength=b.stimuli.n_seqs)

    def values(self) -> pd.DataFrame:
        """Each behaviour's value (a mean over its rows), one row per lesion (0: intact)."""
        return pd.DataFrame({b.name: self.sums[b.name].sum(1) / self.counts(b.name).sum() for b in self.battery})

    def harm(self) -> pd.DataFrame:
        """Each lesion's harm to each behaviour: its change from the intact value, signed so that
        harm is positive (a loss rises, a share correct falls); row 0 is 0."""
        values = self.values()
        return (values - values.iloc[0]) * [b.sign for b in self.battery] + 0.0  # + 0.0: no -0.0 in tables


# ---------------------------------------------------------------- running lesions


def buckets(lengths: np.ndarray, pass_tokens: int, slack: float) -> list[np.ndarray]:
    """Sequences in batches of similar length (each ``>= (1 - slack)`` of the batch's longest,
    at most ``pass_tokens`` padded tokens unless one sequence is longer), sorted within."""
    out, current, width = [], [], 0
    for i in np.argsort(-lengths, kind="stable"):
        if current and (lengths[i] < (1 - slack) * width or (len(current) + 1) * width > pass_tokens):
            out.append(np.sort(current))
            current = []
        if not current:
            width = int(lengths[i])
        current.append(int(i))
    return out + [np.sort(current)]


class _Scorer:
    """Turns one pass into per-sequence sums of each behaviour measured on one stimuli set.

    A pass gives either logits or the residual entering ``ln_final``; from a residual only the
    rows a behaviour reads are unembedded (the predicting positions of loss and guess rows, the
    accuracy rows), which on a large vocabulary is most of a lesion's cost."""

    def __init__(self, stimuli: Stimuli, behaviours: list[Behaviour]):
        t = stimuli.tokens
        self.seq, self.pos = t["seq"].to_numpy(), t["pos"].to_numpy()
        self.predictions = [b for b in behaviours if b.kind in PREDICTIONS]
        self.accuracy = [b for b in behaviours if b.kind == "accuracy"]
        self.masks = torch.zeros(len(self.predictions), *stimuli.ids.shape, dtype=torch.float64)
        for i, b in enumerate(self.predictions):
            self.masks[i, self.seq[b.rows], self.pos[b.rows]] = 1.0
        self.kinds = [b.kind for b in self.predictions]
        self.targets = [(self.seq[b.rows], self.pos[b.rows], t.loc[b.rows, "good_id"].to_numpy(dtype=np.int64),
                         t.loc[b.rows, "bad_id"].to_numpy(dtype=np.int64)) for b in self.accuracy]

    @property
    def behaviours(self) -> list[Behaviour]:
        return self.predictions + self.accuracy

    def score(self, logits_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ids: torch.Tensor,
              seqs: np.ndarray, k: int) -> np.ndarray:
        """``[k, n_behaviours, len(seqs)]`` sums over each sequence's rows, for ``k`` stacked copies
        of the sequences ``seqs`` (``ids`` is one copy); ``logits_at(seq, pos)`` gives the float
        logits ``[k, n, d_vocab]`` of the copies at those rows (see :func:`_rows`)."""
        b, width = ids.shape
        out = []
        if self.predictions:
            mask = self.masks[:, torch.as_tensor(seqs), :width]
            seq, pos = mask.any(0).nonzero(as_tuple=True)  # prediction rows are never a sequence's first token
            logits, target = logits_at(seq, pos - 1), ids[seq, pos].expand(k, -1)
            value = {kind: (cross_entropy(logits, target) if kind == "loss" else
                            (logits.argmax(-1) == target).float()).double() for kind in set(self.kinds)}
            sums = torch.zeros(k, len(self.predictions), b, dtype=torch.float64)
            for i, kind in enumerate(self.kinds):
                sums[:, i].index_add_(1, seq, value[kind] * mask[i, seq, pos])
            out.append(sums)
        for seq, pos, good, bad in self.targets:
            here = np.isin(seq, seqs)
            local = torch.as_tensor(np.searchsorted(seqs, seq[here]))
            logits = logits_at(local, torch.as_tensor(pos[here]))
            rows = torch.arange(len(local))
            diff = logits[:, rows, torch.as_tensor(good[here])] - logits[:, rows, torch.as_tensor(bad[here])]
            hits = torch.zeros(k, b, dtype=torch.float64)
            hits.index_add_(1, local, (diff > 0).double())
            out.append(hits[:, None])
        return torch.cat(out, 1).numpy()


def _rows(x: torch.Tensor, k: int, b: int, readout: Callable | None = None) -> Callable:
    """``logits_at`` for :meth:`_Scorer.score` from one pass over ``k`` stacked copies of ``b``
    sequences: ``x`` holds logits, or with ``readout`` (residual -> logits) the residual entering
    ``ln_final``, of which only the rows read are unembedded."""
    x = x.reshape(k, b, *x.shape[1:])
    if readout is None:
        return lambda seq, pos: x[:, seq, pos].float()
    return lambda seq, pos: readout(x[:, seq, pos]).float()


def _rank_one_rows(cache: Any, chunk: list[Lesion], weights: torch.Tensor, means: dict[str, torch.Tensor] | None,
                   read: Callable) -> Callable:
    """``logits_at`` for copies of the intact pass, copy j with the one neuron of lesion j (all of
    the last block's MLP site) silenced: the residual entering ``ln_final`` less that neuron's
    write, unembedded in closed form (``read``: :func:`~llmscope.engine.passes.rank_one_readout`
    prepared on that residual)."""
    site = chunk[0][0][0]
    idx = torch.as_tensor([int(i[0]) for ((_, i),) in chunk])
    act = cache[site.hook][..., idx]  # [b, width, k]
    if means is not None:
        act = act - means[site.hook][idx]
    return lambda seq, pos: read((seq, pos), act[seq, pos].T, weights[idx])


def _silencer(keep: torch.Tensor, b: int, mean: torch.Tensor | None) -> Callable:
    """A hook for ``k`` stacked copies of ``b`` sequences: copy j keeps unit u where ``keep[j, u]``
    is 1 and takes 0 (or the unit's ``mean``) where it is 0. ``x * 1 + 0`` is ``x`` exactly, so
    units and copies left alone are untouched."""
    k, n_units = keep.shape

    def hook_fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        m = keep.to(act.dtype).view(k, 1, 1, n_units, *[1] * (act.ndim - 3))
        x = act.reshape(k, b, *act.shape[1:]) * m
        if mean is not None:
            x = x + (1 - m) * mean.to(act.dtype)
        return x.reshape(act.shape)

    return hook_fn


def _stacked_hooks(chunk: list[Lesion], b: int, means: dict[str, torch.Tensor] | None) -> list[tuple[str, Callable]]:
    keeps: dict[str, torch.Tensor] = {}
    for j, lesion_units in enumerate(chunk):
        for s, idx in lesion_units:
            keeps.setdefault(s.hook, torch.ones(len(chunk), s.n_units))[j, torch.as_tensor(idx)] = 0.0
    return [(hook, _silencer(keep, b, None if means is None else means[hook])) for hook, keep in keeps.items()]


def _interventions(lesion_units: Lesion, mode: str, reference: Any) -> list:
    from llmscope.interventions import lesion

    if not lesion_units:
        return []
    extra = {} if mode == "zero" else dict(mode="mean", reference=reference)
    return [lesion([(s.name, idx.tolist()) for s, idx in lesion_units], **extra)]


def _start(model: "TransformerBridge", lesion_units: Lesion) -> int:
    """The first block a lesion changes: everything before it is the intact model's."""
    layers = [s.layer for s, _ in lesion_units]
    if not layers or any(L is None for L in layers) or not model.cfg.n_layers:
        return 0
    return min(min(layers), model.cfg.n_layers - 1)  # resid.{n_layers} enters no block


def _subtracted(cache: Any, chunk: list[Lesion], weights: torch.Tensor, means: dict[str, torch.Tensor] | None,
                b: int) -> torch.Tensor:
    """The residual leaving block L for ``k`` stacked copies, copy j with its neurons of the MLP
    site ``mlp.L`` silenced, in closed form: the intact residual less what those neurons wrote
    into it (their activation, less their mean for a mean lesion, times their output weights).
    Exact because nothing nonlinear lies between a neuron's activation and that residual."""
    site = chunk[0][0][0]
    act = cache[site.hook]
    resid = cache[f"blocks.{site.layer}.hook_resid_post"]
    out = resid.repeat(len(chunk), *[1] * (resid.ndim - 1)).view(len(chunk), *resid.shape)
    for j, ((_, idx),) in enumerate(chunk):
        idx = torch.as_tensor(idx)
        silenced = act[..., idx] if means is None else act[..., idx] - means[site.hook][idx]
        out[j] -= silenced @ weights[idx]
    return out.view(len(chunk) * b, *resid.shape[1:])


def _means(model: "TransformerBridge", bat: Battery, lesions: Sequence[Lesion],
           reference: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Each lesioned site's unit means over ``reference`` (``hook -> [n_units, ...]``), computed as
    ``lesion(mode="mean")`` computes them, and the Recording they come from (default reference:
    the stimuli of the battery's first behaviour)."""
    from llmscope.interventions import reference_pools
    from llmscope.recording import record

    sites = list({s.hook: s for lesion in lesions for s, _ in lesion}.values())
    reference = bat.behaviours[0].stimuli if reference is None else reference
    if isinstance(reference, Stimuli):
        reference = record(model, reference, sites, dtype="float32", progress=False)
    pools = reference_pools(model, reference, [(s, torch.arange(s.n_units)) for s in sites])
    return {hook: pool.mean(0) for hook, pool in pools.items()}, reference


def run(model: "TransformerBridge", battery: Battery, lesions: Sequence[Lesion], *, mode: str = "zero",
        reference: Any = None, stack: bool = True, pass_tokens: int | None = None, progress: bool = True,
        desc: str = "lesions") -> Sums:
    """Every behaviour of ``battery`` on the intact model and under each lesion (runs the model;
    the model is left unchanged, even on error).

    Args:
        lesions: unit sets as :func:`~llmscope.sites.resolve_units` gives them, each silenced
            together in its own pass (or copy of one).
        mode: ``"zero"``, or ``"mean"`` (each unit's mean over ``reference``, a Recording or
            Stimuli; default the battery's first behaviour's stimuli), as ``lesion`` does.
        stack: stack lesions in one forward pass (exact); False runs one intervened forward per
            lesion and batch through ``lesion()``.
        pass_tokens: padded tokens per forward pass (default: logits within :data:`LOGIT_BYTES`).
        desc: the progress bar's label.

    Returns:
        :class:`Sums` (row 0 the intact model, row ``1 + j`` lesion ``j``).
    """
    bat = check_battery(model, battery)
    check_mode(mode, reference)
    means, recording = _means(model, bat, lesions, reference) if mode == "mean" else (None, None)
    sums = _run(model, bat, [[], *lesions], pass_tokens_of(model, pass_tokens), means, stack, progress, recording,
                desc)
    return Sums(bat, sums)


def _run(model: "TransformerBridge", bat: Battery, lesions: list[Lesion], pass_tokens: int,
         means: dict[str, torch.Tensor] | None, stack: bool, progress: bool, reference: Any,
         desc: str) -> dict[str, np.ndarray]:
    """``name -> [n_lesions, n_seqs]`` sums; ``lesions[0]`` is ``[]``, the intact model, run once
    per batch of sequences (which also caches what the other lesions start from). Lesions that
    take the same route are stacked (see the module docstring)."""
    from llmscope.interventions import intervene

    n_layers = model.cfg.n_layers
    read = routes.readout(model) if stack else None
    weights: dict[str, torch.Tensor | None] = {}
    starts: dict[int, int] = {}  # a lesion's first block -> the block its pass starts at
    keys: list[tuple[int, str, bool]] = []  # (first block run, the MLP hook of a closed-form lesion or "", one unit)
    for lesion_units in lesions[1:]:
        site = lesion_units[0][0] if len(lesion_units) == 1 else None
        if read is not None and site is not None and site.kind == "mlp":
            if site.hook not in weights:
                weights[site.hook] = routes.closed_form(model, site)
            if weights[site.hook] is not None:
                keys.append((site.layer + 1, site.hook, len(lesion_units[0][1]) == 1))
                continue
        L = _start(model, lesion_units) if stack else 0
        if L not in starts:
            starts[L] = L if routes.resumes(model, L) else 0
        keys.append((starts[L], "", False))
    members = {key: np.flatnonzero([k == key for k in keys]) + 1 for key in sorted(set(keys))}
    closed = {hook: next(s for s, _ in lesions[members[key][0]]) for key in members if (hook := key[1])}
    names = [f"blocks.{L}.hook_resid_pre" for L, hook, _ in members if 0 < L and not hook]
    names += [n for s in closed.values() for n in (s.hook, f"blocks.{s.layer}.hook_resid_post")]
    sets: dict[int, list[Behaviour]] = {}
    for b in bat:
        sets.setdefault(id(b.stimuli), []).append(b)
    plans = []
    for group in sets.values():
        stim = group[0].stimuli
        for seqs in buckets(stim.lengths, pass_tokens, PAD_SLACK if stack else 1.0):
            ids = stim.ids[torch.as_tensor(seqs), : int(stim.lengths[seqs].max())]
            plans.append((group, seqs, ids, max(1, pass_tokens // ids.numel()) if stack else 1))
    total = sum(1 + sum(-(-len(m) // k) for m in members.values()) for *_, k in plans)
    sums = {b.name: np.zeros((len(lesions), b.stimuli.n_seqs)) for b in bat}
    lazy: dict[str, Any] = {}  # the rank-one route, checked when a lone last-block neuron first needs it
    with torch.no_grad(), progress_bar(total=total, desc=desc, unit="pass", show=progress, leave=False) as bar:
        for group, seqs, ids, per_pass in plans:
            scorer = _Scorer(group[0].stimuli, group)
            logits, cache = model.run_with_cache(ids, names_filter=names)
            prepared: dict[str, Callable] = {}
            intact = scorer.score(_rows(logits, 1, len(seqs)), ids, seqs, 1)
            for i, b in enumerate(scorer.behaviours):
                sums[b.name][0, seqs] = intact[0, i]
            bar.update()

            def hooked(chunk: list[Lesion], L: int) -> np.ndarray:  # the lesions of a chunk share their first block
                x = ids if L == 0 else cache[f"blocks.{L}.hook_resid_pre"]
                x = run_from(model, x.repeat(len(chunk), *[1] * (x.ndim - 1)), L,
                             _stacked_hooks(chunk, len(seqs), means), read is not None)
                return scorer.score(_rows(x, len(chunk), len(seqs), read), ids, seqs, len(chunk))

            def subtracted(chunk: list[Lesion], hook: str) -> np.ndarray:
                L = closed[hook].layer
                if L + 1 == n_layers and all(len(idx) == 1 for ((_, idx),) in chunk):
                    if "rank_one" not in lazy:
                        lazy["rank_one"] = routes.rank_one(model)
                    if lazy["rank_one"] is not None:
                        if hook not in prepared:  # the intact rows unembedded once per batch, for all its lesions
                            prepared[hook] = lazy["rank_one"](cache[f"blocks.{L}.hook_resid_post"])
                        return scorer.score(_rank_one_rows(cache, chunk, weights[hook], means, prepared[hook]),
                                            ids, seqs, len(chunk))
                x = run_from(model, _subtracted(cache, chunk, weights[hook], means, len(seqs)), L + 1, [], True)
                return scorer.score(_rows(x, len(chunk), len(seqs), read), ids, seqs, len(chunk))

            with routes.activations(model) if stack else nullcontext():  # lesion passes only
                for (L, hook, _), at_all in members.items():
                    for lo in range(0, len(at_all), per_pass):
                        at = at_all[lo:lo + per_pass]
                        chunk = [lesions[i] for i in at]
                        if not stack:
                            with intervene(model, _interventions(chunk[0], "zero" if means is None else "mean",
                                                                 reference)):
                                scores = scorer.score(_rows(model(ids, return_type="logits"), 1, len(seqs)), ids,
                                                      seqs, 1)
                        else:
                            scores = subtracted(chunk, hook) if hook else hooked(chunk, L)
                        for i, b in enumerate(scorer.behaviours):
                            sums[b.name][np.ix_(at, seqs)] = scores[:, i]
                        bar.update()
    return sums


__all__ = ["Behaviour", "Battery", "Sums", "Lesion", "run", "random_sets", "same_sites", "check_battery",
           "check_mode", "pass_tokens_of", "buckets", "positive", "KINDS", "MIN_EFFECT", "MODES", "PAD_SLACK"]
