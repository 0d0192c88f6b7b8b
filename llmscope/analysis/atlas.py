"""Lesion atlas: lesion every unit or head of chosen sites across a battery of behaviours, and
classify each as Jonas & Kording (2017) classified the transistors of a microprocessor: its
lesion breaks *all* behaviours, *some* (which), or *none*. It runs the model: an experiment.

* :func:`battery` builds the behaviours a model can be tested on; :class:`Behaviour` and
  :class:`Battery` let you build your own.
* :func:`lesion_atlas` lesions each unit (or group of units) of the chosen sites, and random
  groups of the same size as a control, and measures every behaviour of the battery.

The behaviours of :func:`battery`:

=============  ==============================================================================
``loss_TAG``   mean next-token loss (nats) of predicting the *fresh* tokens whose gold tag is
               TAG (a loss belongs to the predicted token; repeated tokens are left to
               ``copying`` so that the two behaviours can come apart). Harm: a rise.
``copying``    mean loss on tokens inside a repeated span, after its first token
               (``is_repeat`` and not ``repeat_onset``: only those can be copied from
               context). Harm: a rise.
``agreement``  the fraction of number-agreement minimal pairs where the agreeing verb gets the
               higher logit (``logit_diff > 0`` at ``is_target``). Harm: a fall.
=============  ==============================================================================

**Criterion.** A lesion *breaks* a behaviour when its harm is at least the behaviour's
``min_effect`` (:data:`MIN_EFFECT`: 0.5 nats for a loss, 0.1 for an accuracy) and the 95%
cluster-bootstrap interval of the harm (whole sequences resampled:
:func:`llmscope.analysis.stats.cluster_bootstrap`) lies above zero, so a large change on a handful
of tokens from one document does not count. ``class`` is ``"all"`` when every behaviour of the
battery breaks, ``"none"`` when none does, else ``"some"`` (``broken`` says which).

**Control.** ``n_random`` groups of ``group_size`` units drawn at random from all units of the
chosen sites are lesioned the same way and classified by the same criterion (``.controls``;
their harm quantiles and break rate per behaviour are in ``.behaviours``). It tells how often an
arbitrary lesion of that size breaks a behaviour: rarely among 1,024 MLP neurons, often among
the 8 heads of a 2-layer model, where most heads belong to some circuit. The criterion does not
rank units against the controls for that reason: with a small pool the controls *are* the units.

**Stacking.** Many lesions run in one forward pass: a bucket of sequences of similar length is
repeated ``k`` times and copy ``j`` has its own units silenced by one hook per site. That is
exact, because the copies of a batch never interact. The intact model runs each bucket once
(the baseline) and caches what the lesions start from, so no lesion recomputes what it cannot
change:

* a lesion of neurons of one MLP site ``mlp.L`` is computed in closed form up to the residual
  leaving block L: the intact residual less what those neurons wrote into it (activation, less
  its mean for a mean lesion, times the neuron's output weights; nothing nonlinear lies
  between). Its pass starts at block L + 1; in the last block it needs no block at all;
* any other lesion starts at the first block it changes, from the intact residual entering it
  (TransformerLens's ``start_at_layer``, with the blocks below cut from the layer list for the
  pass);
* every pass stops at ``ln_final``, and only the rows some behaviour reads are unembedded;
* lesion passes run a tanh GELU that transformers writes out in Python (GPT-2's) as torch's
  fused one (:func:`~llmscope.passes.fused_activations`: equal to float rounding, a sixth of
  an MLP block's time saved); the intact pass runs the model as it is, and the route checks
  compare against it.

Each route is checked once against the plain forward pass (a hooked one for the closed form); on
any difference its lesions run from the tokens, with a warning. A pass holds at most
``pass_tokens`` tokens (by default as many as keep its logits within :data:`LOGIT_BYTES`, so
SmolLM2 stacks one copy at a time and gains only the late start and the row-wise readout).

**Cost.** What remains is what a lesion can change: on ``grammar-2l`` a neuron of ``mlp.1``
costs its readout only, one of ``mlp.0`` a pass through block 1 and the readout, about half a
plain forward pass; ``make bench`` reports the ratio.

Example:
    >>> bat = battery(model, n_docs=4, n_pairs=16, seed=0)
    >>> atlas = lesion_atlas(model, bat, "attn.1", n_random=4, progress=False)
    >>> atlas.top("copying", 1).index.tolist()
    [('attn.1', 0)]
    >>> atlas.df.loc[("attn.1", 0), ["breaks_copying", "breaks_agreement"]].tolist()
    [True, False]
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from llmscope.stimuli import trials
from llmscope import checks, identity
from llmscope.checks import count, draws, flag
from llmscope.analysis.stats import cluster_bootstrap, interval
from llmscope.behaviour import cross_entropy
from llmscope.errors import AnalysisError
from llmscope.passes import fused_activations, layer_list, rank_one_readout, readout, run_from
from llmscope.result import Result
from llmscope.sites import Site, UnitsLike, resolve_units
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.core import as_stimuli
from llmscope.stimuli.organism import speaks_grammar

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

KINDS = {"loss": 1.0, "accuracy": -1.0}  # the sign that turns a change of the value into harm
MIN_EFFECT = {"loss": 0.5, "accuracy": 0.1}  # nats; fraction of pairs
MODES = ("zero", "mean")
LOGIT_BYTES = 2 ** 27  # float32 logits of one pass: 128 MB (682 SmolLM2 tokens)
MAX_PASS_TOKENS = 4096  # beyond this a pass is no cheaper per token on a CPU, only bigger
PAD_SLACK = 0.1  # a bucket's sequences are at least 90% as long as its longest
INDUCTION_HALF = 10  # tokens per half of the English battery's repeated sequences

Lesion = list[tuple[Site, np.ndarray]]  # units silenced together in one copy; [] = intact


# ---------------------------------------------------------------- behaviours and batteries


@dataclass(frozen=True, eq=False)
class Behaviour:
    """One behaviour: a value measured on some rows of some stimuli.

    Attributes:
        name: how tables and columns call it (``harm_<name>``, ``breaks_<name>``...).
        stimuli: the sequences it is measured on.
        kind: ``"loss"`` (mean next-token loss in nats over ``rows``; harm is a rise) or
            ``"accuracy"`` (fraction of ``rows`` where ``logit[good_id] > logit[bad_id]`` of the
            prediction made there; the trial table needs ``good_id``/``bad_id``; harm is a fall).
        rows: boolean mask over ``stimuli.tokens``: the rows that count (a loss needs a
            predicted token: never the first token of a sequence).
        min_effect: the smallest harm that breaks it (default :data:`MIN_EFFECT` of its kind).
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
        if self.kind == "loss" and (table["pos"].to_numpy()[rows] == 0).any():
            raise AnalysisError(f"behaviour {self.name!r}: a loss row at position 0 has no next-token loss "
                                "(nothing predicts the first token); leave those rows out.")
        if self.kind == "accuracy":
            missing = [c for c in ("good_id", "bad_id") if c not in table.columns]
            if missing:
                raise AnalysisError(f"behaviour {self.name!r}: an accuracy reads token ids from the columns "
                                    f"good_id and bad_id; the trial table lacks {missing}.")
        effect = MIN_EFFECT[self.kind] if self.min_effect is None else self.min_effect
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "min_effect", _positive(effect, f"min_effect of {self.name!r}"))

    @property
    def sign(self) -> float:
        """+1 if harm is a rise of the value (a loss), -1 if a fall (an accuracy)."""
        return KINDS[self.kind]


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 < value < np.inf:
        raise AnalysisError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


class Battery:
    """An ordered set of :class:`Behaviour` objects with distinct names.

    Example:
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
        return self.behaviours[self.names.index(self._check([name])[0])]

    def _check(self, names: Any) -> list[str]:
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
            raise AnalysisError.Type(f"behaviours are a non-empty list of names from {self.names}; got {names!r}.")
        missing = [n for n in names if n not in self.names]
        if missing:
            raise AnalysisError.Unknown(f"the battery has no behaviour {missing}; its behaviours are {self.names}.")
        return list(names)

    def select(self, names: Sequence[str]) -> "Battery":
        """The battery of the named behaviours only (in the order given)."""
        return Battery([self[n] for n in self._check(names)])

    def table(self) -> pd.DataFrame:
        """One row per behaviour: ``kind``, ``stimuli``, ``n_rows``, ``n_seqs``, ``min_effect``, ``description``."""
        return pd.DataFrame([dict(kind=b.kind, stimuli=b.stimuli.name, n_rows=int(b.rows.sum()),
                                  n_seqs=int(b.stimuli.tokens["seq"][b.rows].nunique()), min_effect=b.min_effect,
                                  description=b.description) for b in self.behaviours],
                            index=pd.Index(self.names, name="behaviour"))

    def measure(self, model: "TransformerBridge", pass_tokens: int | None = None) -> pd.Series:
        """Each behaviour of the intact model (runs the model; no intervention).

        Example:
            >>> float(battery(model, n_docs=2, n_pairs=8).measure(model)["agreement"]) > 0.5
            True
        """
        _check_battery(model, self)
        sums = _run(model, self, [[]], _pass_tokens(model, pass_tokens), None, stack=True, progress=False)
        return pd.Series({b.name: sums[b.name][0].sum() / b.rows.sum() for b in self}, name="intact")

    def __repr__(self) -> str:
        parts = ", ".join(f"{b.name} ({b.kind}, {int(b.rows.sum())} rows of {b.stimuli.name})" for b in self)
        return f"Battery({len(self)} behaviours: {parts})"


def _grammar_battery(model: "TransformerBridge", n_docs: int, n_pairs: int, seed: int) -> list[Behaviour]:
    from llmscope.stimuli import agreement, grammar

    docs = grammar(model, n_docs=n_docs, seed=seed)
    t = docs.tokens
    scored = trials.rows(t) & (t["pos"].to_numpy() > 0)
    repeat = t["is_repeat"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    onset = t["repeat_onset"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    out = _pos_losses(docs, scored & ~repeat, "fresh ")
    out.append(Behaviour("copying", docs, "loss", scored & repeat & ~onset,
                         description="loss on repeated tokens after the first of each copy"))
    pairs = agreement(model, n=n_pairs, seed=seed)
    out.append(Behaviour("agreement", pairs, "accuracy", pairs.tokens["is_target"].to_numpy(dtype=bool),
                         description="minimal pairs with logit[agreeing verb] > logit[other verb]"))
    return out


def _english_battery(model: "TransformerBridge", n_docs: int, seed: int) -> list[Behaviour]:
    from llmscope.stimuli import induction, templates

    sentences = templates(model, n=n_docs, seed=seed)
    t = sentences.tokens
    out = _pos_losses(sentences, trials.rows(t) & (t["pos"].to_numpy() > 0), "")
    repeats = induction(model, n_seqs=n_docs, half_len=INDUCTION_HALF, seed=seed)
    r = repeats.tokens
    out.append(Behaviour("copying", repeats, "loss", (r["is_repeat"] & ~r["repeat_onset"]).to_numpy(dtype=bool),
                         description="loss on the second copy of random tokens, after its first token"))
    return out


def _pos_losses(stimuli: Stimuli, rows: np.ndarray, what: str) -> list[Behaviour]:
    tags = stimuli.tokens["pos_tag"].to_numpy()
    return [Behaviour(f"loss_{tag}", stimuli, "loss", rows & (tags == tag),
                      description=f"loss of predicting {what}{tag} tokens")
            for tag in sorted(set(tags[rows]))]


def battery(model: "TransformerBridge", n_docs: int = 16, n_pairs: int = 64, seed: int = 0,
            behaviours: Sequence[str] | None = None) -> Battery:
    """The behaviour battery of ``model`` (no forward pass: stimuli only).

    On an organism (a tokenizer with one token per word of the toy grammar): ``loss_TAG`` for
    every Universal POS tag of ``n_docs`` grammar documents (fresh tokens), ``copying`` on the
    same documents' repeated spans, and ``agreement`` on ``n_pairs`` minimal pairs
    (:func:`llmscope.stimuli.agreement`). On any other model: ``loss_TAG`` on ``n_docs``
    English template sentences (:func:`llmscope.stimuli.templates`) and ``copying`` on
    ``n_docs`` sequences of random tokens shown twice (:func:`llmscope.stimuli.induction`);
    there are no English agreement pairs in :mod:`llmscope.stimuli` yet, so no ``agreement``.
    ``behaviours`` keeps only the named ones. See the module docstring for the definitions.

    Example:
        >>> battery(model, n_docs=4, n_pairs=8).names[-2:]
        ['copying', 'agreement']
        >>> english = battery(smol, n_docs=4)
        >>> english.names[-1], "agreement" in english.names
        ('copying', False)
    """
    n_docs, n_pairs = count(n_docs, "n_docs"), count(n_pairs, "n_pairs")
    seed = count(seed, "seed", minimum=0)
    if speaks_grammar(model):
        out = Battery(_grammar_battery(model, n_docs, n_pairs, seed))
    else:  # English
        out = Battery(_english_battery(model, n_docs, seed))
    return out if behaviours is None else out.select(behaviours)


def _check_battery(model: "TransformerBridge", bat: Any) -> Battery:
    if not isinstance(bat, Battery):
        raise AnalysisError.Type(f"expected a Battery (llmscope.analysis.atlas.battery(model)), got {type(bat).__name__}.")
    for b in bat:
        as_stimuli(model, b.stimuli)
        if b.kind == "accuracy":
            ids = b.stimuli.tokens.loc[b.rows, ["good_id", "bad_id"]].to_numpy()
            if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= model.cfg.d_vocab:
                raise AnalysisError.Range(f"behaviour {b.name!r}: good_id and bad_id must hold token ids in "
                                    f"0..{model.cfg.d_vocab - 1} at its rows.")
    return bat


# ---------------------------------------------------------------- running lesions


def _buckets(lengths: np.ndarray, pass_tokens: int, slack: float) -> list[np.ndarray]:
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
    rows a behaviour reads are unembedded (the loss rows' predicting positions, the accuracy
    rows), which on a large vocabulary is most of a lesion's cost."""

    def __init__(self, stimuli: Stimuli, behaviours: list[Behaviour]):
        t = stimuli.tokens
        self.seq, self.pos = t["seq"].to_numpy(), t["pos"].to_numpy()
        self.loss = [b for b in behaviours if b.kind == "loss"]
        self.accuracy = [b for b in behaviours if b.kind == "accuracy"]
        self.masks = torch.zeros(len(self.loss), *stimuli.ids.shape, dtype=torch.float64)
        for i, b in enumerate(self.loss):
            self.masks[i, self.seq[b.rows], self.pos[b.rows]] = 1.0
        self.targets = [(self.seq[b.rows], self.pos[b.rows], t.loc[b.rows, "good_id"].to_numpy(dtype=np.int64),
                         t.loc[b.rows, "bad_id"].to_numpy(dtype=np.int64)) for b in self.accuracy]

    @property
    def behaviours(self) -> list[Behaviour]:
        return self.loss + self.accuracy

    def score(self, logits_at: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ids: torch.Tensor,
              seqs: np.ndarray, k: int) -> np.ndarray:
        """``[k, n_behaviours, len(seqs)]`` sums over each sequence's rows, for ``k`` stacked copies
        of the sequences ``seqs`` (``ids`` is one copy); ``logits_at(seq, pos)`` gives the float
        logits ``[k, n, d_vocab]`` of the copies at those rows (see :func:`_rows`)."""
        b, width = ids.shape
        out = []
        if self.loss:
            mask = self.masks[:, torch.as_tensor(seqs), :width]
            seq, pos = mask.any(0).nonzero(as_tuple=True)  # loss rows are never a sequence's first token
            loss = cross_entropy(logits_at(seq, pos - 1), ids[seq, pos].expand(k, -1)).double()
            sums = torch.zeros(k, len(self.loss), b, dtype=torch.float64)
            sums.index_add_(2, seq, loss[:, None, :] * mask[:, seq, pos])
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
    ``ln_final``, of which only the rows read are unembedded (on a large vocabulary most of a
    lesion's cost)."""
    x = x.reshape(k, b, *x.shape[1:])
    if readout is None:
        return lambda seq, pos: x[:, seq, pos].float()
    return lambda seq, pos: readout(x[:, seq, pos]).float()


def _rank_one_rows(cache: Any, chunk: list[Lesion], weights: torch.Tensor, means: dict[str, torch.Tensor] | None,
                   read: Callable) -> Callable:
    """``logits_at`` for copies of the intact pass, copy j with the one neuron of lesion j (all of
    the last block's MLP site) silenced: the residual entering ``ln_final`` less that neuron's
    write, unembedded in closed form (``read``: :func:`~llmscope.passes.rank_one_readout`
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


def _out_weights(model: "TransformerBridge", site: Site) -> torch.Tensor | None:
    """``[n_units, d_model]``: what each neuron of an MLP site adds to the residual stream per unit
    of activation, read off the MLP's output projection by applying it to the identity; None when
    the site is not the input of an output projection (then its lesions run the block)."""
    out = getattr(model.blocks[site.layer].mlp, "out", None) if site.kind == "mlp" else None
    if out is None or model.hook_dict.get(site.hook) is not getattr(out, "hook_in", None):
        return None
    return out(torch.eye(site.n_units)) - out(torch.zeros(1, site.n_units))


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


def _run(model: "TransformerBridge", bat: Battery, lesions: list[Lesion], pass_tokens: int,
         means: dict[str, torch.Tensor] | None, stack: bool, progress: bool,
         reference: Any = None) -> dict[str, np.ndarray]:
    """Every behaviour under every lesion: ``name -> [n_lesions, n_seqs]`` sums over each
    sequence's rows; ``lesions[0]`` must be ``[]`` (the intact model, run once per batch of
    sequences, which also caches what the other lesions resume from).

    ``stack=True`` stacks lesions that take the same route, each route checked once against the
    plain forward pass (on any difference its lesions run from the tokens, with a warning):

    * a lesion of neurons of one MLP site ``mlp.L`` starts from the intact residual leaving
      block L less what those neurons wrote (:func:`_subtracted`), at block L + 1 (in the last
      block: straight to the unembedding, and for one neuron not even that: its copies' logits
      come in closed form through the final norm, :func:`~llmscope.passes.rank_one_readout`);
    * any other lesion resumes at the first block it changes, from the intact residual entering
      it, its units silenced by one hook per site.

    Passes stop at ``ln_final`` and only the rows a behaviour reads are unembedded.
    ``stack=False`` runs one intervened forward per lesion and batch through
    :func:`~llmscope.interventions.lesion`: the plain way, which the stacked passes match.
    """
    from llmscope.progress import progress_bar

    from llmscope.interventions import intervene

    n_layers = model.cfg.n_layers
    sets: dict[int, list[Behaviour]] = {}
    for b in bat:
        sets.setdefault(id(b.stimuli), []).append(b)
    can_resume = stack and layer_list(model) is not None
    read = readout(model) if stack else None
    rank_one = rank_one_readout(model) if read is not None else None
    weights: dict[str, torch.Tensor | None] = {}
    routes: list[tuple[int, str]] = []  # (first block run, the MLP hook of a closed-form lesion or "")
    for lesion_units in lesions[1:]:
        start = _start(model, lesion_units) if can_resume else 0
        site = lesion_units[0][0] if len(lesion_units) == 1 else None
        if can_resume and read is not None and site is not None and site.kind == "mlp":
            if site.hook not in weights:
                weights[site.hook] = _out_weights(model, site)
            if weights[site.hook] is not None:
                routes.append((site.layer + 1, site.hook))
                continue
        routes.append((start, ""))
    keys = sorted(set(routes))
    members = {key: np.flatnonzero([r == key for r in routes]) + 1 for key in keys}
    closed = {hook: next(s for s, _ in lesions[members[key][0]]) for key in keys if (hook := key[1])}
    resumed = sorted({L for L, hook in keys if 0 < L < n_layers} | {s.layer for s in closed.values() if s.layer})
    plans = []
    for group in sets.values():
        stim = group[0].stimuli
        for seqs in _buckets(stim.lengths, pass_tokens, PAD_SLACK if stack else 1.0):
            ids = stim.ids[torch.as_tensor(seqs), : int(stim.lengths[seqs].max())]
            plans.append((group, seqs, ids, max(1, pass_tokens // ids.numel()) if stack else 1))
    total = sum(1 + sum(-(-len(m) // k) for m in members.values()) for *_, k in plans)
    sums = {b.name: np.zeros((len(lesions), b.stimuli.n_seqs)) for b in bat}
    checked: dict[Any, bool] = {}  # block L: resuming there is exact; an MLP hook: its closed form is
    with torch.no_grad(), progress_bar(total=total, desc="lesion atlas", unit="pass", show=progress,
                                       leave=False) as bar:
        for group, seqs, ids, per_pass in plans:
            scorer = _Scorer(group[0].stimuli, group)
            names = [f"blocks.{L}.hook_resid_pre" for L in resumed]
            names += [n for s in closed.values() for n in (s.hook, f"blocks.{s.layer}.hook_resid_post")]
            logits, cache = model.run_with_cache(ids, names_filter=names)
            prepared: dict[str, Callable] = {}
            intact = scorer.score(_rows(logits, 1, len(seqs)), ids, seqs, 1)
            for i, b in enumerate(scorer.behaviours):
                sums[b.name][0, seqs] = intact[0, i]
            bar.update()

            def tokens_or_resid(L: int, k: int) -> torch.Tensor:
                x = ids if L == 0 else cache[f"blocks.{L}.hook_resid_pre"]
                return x.repeat(k, *[1] * (x.ndim - 1))

            def hooked(chunk: list[Lesion]) -> np.ndarray:  # the lesions of a chunk share their first block
                L = _start(model, chunk[0]) if can_resume else 0
                L = L if L == 0 or checked[L] else 0
                x = run_from(model, tokens_or_resid(L, len(chunk)), L, _stacked_hooks(chunk, len(seqs), means),
                             read is not None)
                return scorer.score(_rows(x, len(chunk), len(seqs), read), ids, seqs, len(chunk))

            def subtracted(chunk: list[Lesion], hook: str) -> np.ndarray:
                L = closed[hook].layer
                if rank_one is not None and L + 1 == n_layers and all(len(idx) == 1 for ((_, idx),) in chunk):
                    if hook not in prepared:  # the intact rows unembedded once per batch, for all its lesions
                        prepared[hook] = rank_one(cache[f"blocks.{L}.hook_resid_post"])
                    rows = _rank_one_rows(cache, chunk, weights[hook], means, prepared[hook])
                else:
                    x = _subtracted(cache, chunk, weights[hook], means, len(seqs))
                    rows = _rows(run_from(model, x, L + 1, [], read is not None), len(chunk), len(seqs), read)
                return scorer.score(rows, ids, seqs, len(chunk))

            # lesion passes only: the checks compare them with the plain intact pass
            with fused_activations(model) if stack else nullcontext():
                for L in resumed:
                    if L not in checked:
                        x = run_from(model, tokens_or_resid(L, 1), L, [], read is not None)
                        checked[L] = np.allclose(scorer.score(_rows(x, 1, len(seqs), read), ids, seqs, 1), intact,
                                                 rtol=1e-4, atol=1e-4)
                        if not checked[L]:
                            warnings.warn(f"resuming this model at block {L} does not reproduce its forward pass; "
                                          "the atlas runs those lesions from the tokens instead.", stacklevel=3)
                for hook, site in closed.items():
                    if hook not in checked:  # the first lone neuron and the first group: their closed forms differ
                        firsts = {len(lesions[i][0][1]) == 1: lesions[i] for i in members[(site.layer + 1, hook)][::-1]}
                        checked[hook] = (site.layer + 1 == n_layers or checked[site.layer + 1]) and all(
                            np.allclose(subtracted([first], hook), hooked([first]), rtol=1e-4, atol=1e-4)
                            for first in firsts.values())
                        if not checked[hook]:
                            warnings.warn(f"lesions of {site.name} in closed form do not reproduce a hooked pass; "
                                          "the atlas runs them through the model instead.", stacklevel=3)
                for (L, hook), at_all in members.items():
                    for lo in range(0, len(at_all), per_pass):
                        at = at_all[lo:lo + per_pass]
                        chunk = [lesions[i] for i in at]
                        if not stack:
                            with intervene(model, _interventions(chunk[0], "zero" if means is None else "mean", reference)):
                                scores = scorer.score(_rows(model(ids, return_type="logits"), 1, len(seqs)), ids, seqs, 1)
                        elif hook and checked[hook]:
                            scores = subtracted(chunk, hook)
                        else:
                            scores = hooked(chunk)
                        for i, b in enumerate(scorer.behaviours):
                            sums[b.name][np.ix_(at, seqs)] = scores[:, i]
                        bar.update()
    return sums


def _pass_tokens(model: "TransformerBridge", pass_tokens: int | None) -> int:
    if pass_tokens is None:
        return max(1, min(MAX_PASS_TOKENS, LOGIT_BYTES // (4 * model.cfg.d_vocab)))
    return count(pass_tokens, "pass_tokens")


# ---------------------------------------------------------------- the atlas


def _groups(resolved: list[tuple[Site, np.ndarray]], group_size: int) -> list[Lesion]:
    """Consecutive runs of ``group_size`` chosen units within each site (the last may be smaller)."""
    for s, idx in resolved:
        if group_size > len(idx):
            raise AnalysisError.Range(f"group_size={group_size} is larger than {s.name}, which has {len(idx)} chosen "
                                f"{s.unit}s (of {s.n_units}); use group_size <= {len(idx)}.")
    return [[(s, idx[i:i + group_size])] for s, idx in resolved for i in range(0, len(idx), group_size)]


def _random_groups(resolved: list[tuple[Site, np.ndarray]], group_size: int, n_random: int,
                   rng: np.random.Generator) -> list[Lesion]:
    """``n_random`` groups of ``group_size`` distinct units drawn from every chosen unit."""
    pool = [(s, int(i)) for s, idx in resolved for i in idx]
    out = []
    for _ in range(n_random):
        picked = sorted(rng.choice(len(pool), size=group_size, replace=False))
        by_site: dict[str, tuple[Site, list[int]]] = {}
        for p in picked:
            s, i = pool[p]
            by_site.setdefault(s.hook, (s, []))[1].append(i)
        out.append([(s, np.array(units)) for s, units in by_site.values()])
    return out


def _min_effects(bat: Battery, min_effect: Any) -> dict[str, float]:
    if min_effect is None:
        return {b.name: b.min_effect for b in bat}
    if isinstance(min_effect, Mapping):
        bat._check(list(min_effect))
        return {b.name: _positive(min_effect.get(b.name, b.min_effect), f"min_effect[{b.name!r}]") for b in bat}
    value = _positive(min_effect, "min_effect")
    return {b.name: value for b in bat}


def _values(bat: Battery, sums: dict[str, np.ndarray], effects: dict[str, float], n_boot: int,
            rng: np.random.Generator) -> pd.DataFrame:
    """Per-lesion values (row 0 is the intact model) and the breaks criterion, one column block each."""
    cols: dict[str, dict[str, np.ndarray]] = {q: {} for q in ("harm", "breaks", "lesioned", "baseline", "ci_low", "ci_high")}
    for b in bat:
        n = np.bincount(b.stimuli.tokens["seq"].to_numpy()[b.rows], minlength=b.stimuli.n_seqs)
        used = n > 0
        value = sums[b.name].sum(1) / n.sum()
        harm = b.sign * (value - value[0]) + 0.0  # + 0.0: no -0.0 in tables
        ci = interval(b.sign * cluster_bootstrap(sums[b.name][:, used] - sums[b.name][:1, used], n[used], n_boot, rng))
        low, high = ci[:, 0] + 0.0, ci[:, 1] + 0.0
        for q, v in dict(harm=harm, breaks=(harm >= effects[b.name]) & (low > 0), lesioned=value,
                         baseline=np.full(len(value), value[0]), ci_low=low, ci_high=high).items():
            cols[q][b.name] = v
    return pd.DataFrame({f"{q}_{name}": v for q, block in cols.items() for name, v in block.items()})


def _classify(df: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``class``, ``broken`` and ``n_broken`` in front of ``df``'s ``breaks_<name>`` columns."""
    broken = df[[f"breaks_{n}" for n in names]].to_numpy()
    n_broken = broken.sum(1)
    head = pd.DataFrame({
        "class": np.where(n_broken == len(names), "all", np.where(n_broken == 0, "none", "some")),
        "broken": [", ".join(n for n, hit in zip(names, row) if hit) for row in broken],
        "n_broken": n_broken}, index=df.index)
    return pd.concat([head, df], axis=1)


@dataclass(repr=False, eq=False)
class AtlasResult(Result):
    """What :func:`lesion_atlas` returns: a :class:`~llmscope.Result` with the controls beside it.

    ``.df``, one row per lesioned unit or group, indexed by ``(site, unit)`` (a group by its
    site and first unit; ``members`` lists its units):

    =====================  ====================================================================
    class                  ``"all"``, ``"some"`` or ``"none"``: the behaviours it breaks
    broken, n_broken       which (comma-separated names) and how many
    group_size, members    units lesioned together (a tuple of unit indices of the site)
    harm_<b>               the lesion's harm to behaviour b (rise of a loss in nats, fall of an
                           accuracy), lesioned - intact with the sign of harm
    breaks_<b>             the criterion of the module docstring
    rank_<b>               1 = the most harmful unit for b (ties share the best rank)
    lesioned_<b>           b's value under the lesion; ``baseline_<b>``: intact
    ci_low_<b>, ci_high_<b>  95% cluster-bootstrap interval of ``harm_<b>``
    =====================  ====================================================================

    Attributes:
        controls: the random groups, the same columns (no ranks), indexed by control number,
            ``members`` as ``"site:unit"`` labels.
        behaviours: one row per behaviour: ``kind``, ``stimuli``, ``n_rows``, ``n_seqs``,
            ``baseline``, ``min_effect``, ``n_broken`` (units or groups that break it),
            ``control_p95`` and ``control_max`` (of the controls' harm), ``control_break_rate``.

    ``.meta``: ``model``, ``behaviours``, ``mode``, ``group_size``, ``n_groups`` (groups the
    sites make), ``n_lesioned`` (groups lesioned: ``n_sample`` of them when sampled),
    ``n_random``, ``n_boot``, ``seed``, ``stacked``, ``pass_tokens``, ``criterion``.
    ``.plot(n=40)`` draws a units x behaviours heatmap of harm / min_effect (1 = the break
    threshold) beside the controls; ``.top(behaviour, n)`` the most harmful units.
    """

    controls: pd.DataFrame = field(default_factory=pd.DataFrame)
    behaviours: pd.DataFrame = field(default_factory=pd.DataFrame)

    def top(self, behaviour: str, n: int = 1) -> pd.DataFrame:
        """The ``n`` most harmful rows for ``behaviour``, one row per unit (a group's row repeated
        for each of its members) indexed by ``(site, unit)``: ready for ``lesion()`` or a widget.

        Example:
            >>> bat = battery(model, n_docs=4, n_pairs=8)
            >>> atlas = lesion_atlas(model, bat, "attn.1", group_size=2, n_random=2, progress=False)
            >>> with intervene(model, lesion(atlas.top("copying", 1))):
            ...     logits = model(stim.ids)
        """
        names = list(self.behaviours.index)
        if not isinstance(behaviour, str) or behaviour not in names:
            raise AnalysisError.Unknown(f"the atlas has no behaviour {behaviour!r}; its behaviours are {names}.")
        best = self.df.sort_values(f"harm_{behaviour}", ascending=False, kind="stable").head(count(n, "n"))
        sites = best.index.get_level_values(0)
        rows = [(s, int(u), i) for i, (s, members) in enumerate(zip(sites, best["members"])) for u in members]
        out = best.iloc[[i for *_, i in rows]]
        out.index = pd.MultiIndex.from_tuples([(s, u) for s, u, _ in rows], names=["site", "unit"])
        return out


def _plot_atlas(result: AtlasResult, n: int = 40) -> "go.Figure":
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(result.behaviours.index)
    effects = result.behaviours["min_effect"].to_numpy()

    def panel(df: pd.DataFrame) -> dict:
        harm = df[[f"harm_{b}" for b in names]].to_numpy()
        breaks = df[[f"breaks_{b}" for b in names]].to_numpy()
        return dict(z=harm / effects, customdata=harm, text=np.where(breaks, "x", ""), x=names,
                    texttemplate="%{text}", zmin=-1, zmax=3, zmid=0, colorscale="RdBu_r",
                    hovertemplate="%{y} | %{x}<br>harm %{customdata:.3g} (%{z:.2f} x min effect)<extra></extra>")

    top = result.df.assign(worst=(result.df[[f"harm_{b}" for b in names]].to_numpy() / effects).max(1))
    top = top.sort_values("worst", ascending=False, kind="stable").head(count(n, "n"))
    labels = [f"{s}:{u}" if size == 1 else f"{s}:{u}+{size - 1}" for (s, u), size in zip(top.index, top["group_size"])]
    controls = [f"random {i}" for i in result.controls.index]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[max(len(top), 1), max(len(controls), 1)],
                        subplot_titles=[f"{len(top)} most harmful of {len(result.df)} lesions",
                                        f"{len(controls)} random groups (control)"])
    fig.add_trace(go.Heatmap(y=labels, colorbar=dict(title="harm /<br>min effect"), **panel(top)), row=1, col=1)
    fig.add_trace(go.Heatmap(y=controls, showscale=False, **panel(result.controls)), row=2, col=1)
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(type="category")
    return fig.update_layout(title=f"lesion atlas ({result.meta['mode']} lesions); x = breaks",
                             height=240 + 14 * (len(top) + len(controls)))


def lesion_atlas(model: "TransformerBridge", battery: Battery, units: UnitsLike = None, *, group_size: int = 1,
                 n_sample: int | None = None, n_random: int = 20, mode: str = "zero", reference: Any = None,
                 behaviours: Sequence[str] | None = None, min_effect: float | Mapping[str, float] | None = None,
                 n_boot: int = 1000, seed: int = 0, stack: bool = True, pass_tokens: int | None = None,
                 progress: bool = True) -> AtlasResult:
    """Lesion every unit (or group) of ``units`` and measure every behaviour (runs the model).

    Args:
        model: the model (left unchanged: every hook is removed on exit, even on error).
        battery: what to measure (:func:`battery`); ``behaviours`` keeps only the named ones.
        units: any unit form of :mod:`llmscope.sites` (``"mlp.0"``, ``[("attn.1", [0, 2])]``,
            a unit table); default every head of every ``attn.L``.
        group_size: units lesioned together: consecutive runs of the chosen units of one site.
        n_sample: lesion only this many groups, drawn at random (seeded), for big models.
        n_random: random groups of ``group_size`` units (from all chosen units), the control.
        mode: ``"zero"`` or ``"mean"`` (each unit's mean over ``reference``, as ``lesion`` does;
            default reference: the stimuli of the battery's first behaviour).
        min_effect: the smallest harm that breaks a behaviour: one number for all, or
            ``{name: number}``; default each behaviour's own (:data:`MIN_EFFECT`).
        n_boot: bootstrap resamples of the breaks criterion's interval.
        stack: stack lesions in one forward pass (exact); False runs one forward per lesion and
            batch through ``lesion()``: slower, the reference the stacked passes are checked against.
        pass_tokens: tokens per forward pass (default: logits within :data:`LOGIT_BYTES`).

    Returns:
        :class:`AtlasResult` (its docstring lists the columns).

    Example:
        >>> atlas = lesion_atlas(model, battery(model, n_docs=4, n_pairs=8), [("attn.0", [2])], n_random=3,
        ...                      progress=False)
        >>> atlas.df[["class", "group_size"]].values.tolist()
        [['some', 1]]
    """
    bat = _check_battery(model, battery)
    bat = bat if behaviours is None else bat.select(behaviours)
    resolved = resolve_units(model, units if units is not None else [(f"attn.{L}", None) for L in range(model.cfg.n_layers)])
    group_size, n_random = count(group_size, "group_size"), draws(n_random, "n_random", "pass")
    n_boot, seed = draws(n_boot, "n_boot", "resample"), checks.seed(seed)
    stack, progress = flag(stack, "stack"), flag(progress, "progress")
    if mode not in MODES:
        raise AnalysisError.Unknown(f"unknown lesion mode {mode!r}; the atlas takes one of {MODES}.")
    if mode == "zero" and reference is not None:
        raise AnalysisError("lesion mode 'zero' takes no reference; pass mode='mean' to use one.")
    effects = _min_effects(bat, min_effect)
    pass_tokens = _pass_tokens(model, pass_tokens)
    groups = _groups(resolved, group_size)
    n_groups = len(groups)
    rng_sample, rng_control, rng_boot = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    if n_sample is not None:
        n_sample = count(n_sample, "n_sample")
        if n_sample > len(groups):
            raise AnalysisError.Range(f"n_sample={n_sample} exceeds the {len(groups)} groups of these units; "
                                f"use n_sample <= {len(groups)} or None (all).")
        groups = [groups[i] for i in np.sort(rng_sample.choice(len(groups), n_sample, replace=False))]
    controls = _random_groups(resolved, group_size, n_random, rng_control)

    means, recording = _means(model, bat, resolved, reference) if mode == "mean" else (None, None)
    sums = _run(model, bat, [[], *groups, *controls], pass_tokens, means, stack, progress, recording)
    values = _values(bat, sums, effects, n_boot, rng_boot)
    df = _unit_table(values.iloc[1:1 + len(groups)], groups, bat.names)
    ctrl = _classify(values.iloc[1 + len(groups):].reset_index(drop=True).rename_axis("control"), bat.names)
    ctrl.insert(3, "group_size", group_size)
    ctrl.insert(4, "members", [tuple(f"{s.name}:{i}" for s, idx in g for i in idx) for g in controls])
    meta = dict(model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(), behaviours=bat.names, mode=mode, group_size=group_size,
                n_groups=n_groups, n_lesioned=len(groups), n_random=n_random, n_boot=n_boot, seed=seed,
                stacked=stack, pass_tokens=pass_tokens,
                criterion="harm >= min_effect and the 95% cluster-bootstrap interval of harm above 0")
    return AtlasResult(df, kind="lesion atlas", meta=meta, plotter=_plot_atlas, controls=ctrl,
                       behaviours=_summary(bat, values, df, ctrl, effects))


def _means(model: "TransformerBridge", bat: Battery, resolved: list[tuple[Site, np.ndarray]],
           reference: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Each site's unit means over ``reference`` (``hook -> [n_units, ...]``), computed as
    ``lesion(mode="mean")`` computes them, and the Recording they come from."""
    from llmscope.interventions import reference_pools
    from llmscope.recording import record

    reference = bat.behaviours[0].stimuli if reference is None else reference
    if isinstance(reference, Stimuli):
        reference = record(model, reference, [s for s, _ in resolved], dtype="float32", progress=False)
    pools = reference_pools(model, reference, [(s, torch.arange(s.n_units)) for s, _ in resolved])
    return {hook: pool.mean(0) for hook, pool in pools.items()}, reference


def _unit_table(values: pd.DataFrame, groups: list[Lesion], names: list[str]) -> pd.DataFrame:
    """The atlas's rows: indexed by each group's site and first unit, with ranks and the class."""
    table = values.set_axis(pd.MultiIndex.from_tuples([(g[0][0].name, int(g[0][1][0])) for g in groups],
                                                      names=["site", "unit"]))
    table = table.assign(group_size=[len(g[0][1]) for g in groups], members=[tuple(map(int, g[0][1])) for g in groups],
                         **{f"rank_{b}": table[f"harm_{b}"].rank(ascending=False, method="min").astype(int)
                            for b in names})
    head = ["class", "broken", "n_broken", "group_size", "members"]
    blocks = [f"{q}_{b}" for q in ("harm", "breaks", "rank", "lesioned", "baseline", "ci_low", "ci_high") for b in names]
    return _classify(table, names)[head + blocks]


def _summary(bat: Battery, values: pd.DataFrame, df: pd.DataFrame, ctrl: pd.DataFrame,
             effects: dict[str, float]) -> pd.DataFrame:
    """One row per behaviour: the battery's table, the intact value, and the controls beside it."""
    names = bat.names
    summary = bat.table().drop(columns="description")
    summary.insert(2, "baseline", [values[f"baseline_{b}"].iloc[0] for b in names])
    harms = ctrl[[f"harm_{b}" for b in names]].to_numpy()
    return summary.assign(min_effect=[effects[b] for b in names],
                          n_broken=[int(df[f"breaks_{b}"].sum()) for b in names],
                          control_p95=np.percentile(harms, 95, axis=0), control_max=harms.max(0),
                          control_break_rate=ctrl[[f"breaks_{b}" for b in names]].to_numpy().mean(0))


__all__ = ["Behaviour", "Battery", "battery", "lesion_atlas", "AtlasResult", "MIN_EFFECT", "KINDS"]
