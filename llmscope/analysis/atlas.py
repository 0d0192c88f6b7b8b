"""Lesion experiments on the engine's stacked runner: the lesion atlas and the lesion test.

* :func:`battery` builds the behaviours a model can be tested on (:class:`Behaviour` and
  :class:`Battery`, from :mod:`llmscope.engine.lesions`, let you build your own).
* :func:`lesion_atlas` lesions every unit (or group of units) of chosen sites, and random groups
  of the same size as a control, and classifies each as Jonas & Kording (2017) classified the
  transistors of a microprocessor: its lesion breaks *all* behaviours, *some* (which), or *none*.
* :func:`lesion_test` lesions one set of units together, beside random sets of as many units
  from the same sites, and says how much more it harms each behaviour, with a cluster-bootstrap
  interval.

Both run the model: experiments. Their lesions run stacked, many to a forward pass, each started
where it first changes something (:func:`llmscope.engine.lesions.run`; exact to float rounding,
every short cut checked once per model against a plain pass).

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

**Criterion of the atlas.** A lesion *breaks* a behaviour when its harm is at least the
behaviour's ``min_effect`` (:data:`~llmscope.engine.lesions.MIN_EFFECT`: 0.5 nats for a loss,
0.1 for an accuracy) and the 95% cluster-bootstrap interval of the harm (whole sequences
resampled: :func:`llmscope.analysis.stats.cluster_bootstrap`) lies above zero, so a large change
on a handful of tokens from one document does not count. ``class`` is ``"all"`` when every
behaviour of the battery breaks, ``"none"`` when none does, else ``"some"`` (``broken`` says which).

**Control of the atlas.** ``n_controls`` groups of ``group_size`` units drawn at random from all
units of the chosen sites are lesioned the same way and classified by the same criterion
(``.controls``; their harm quantiles and break rate per behaviour are in ``.behaviours``). It
tells how often an arbitrary lesion of that size breaks a behaviour: rarely among 1,024 MLP
neurons, often among the 8 heads of a 2-layer model, where most heads belong to some circuit. The
criterion does not rank units against the controls for that reason: with a small pool the
controls *are* the units.

Example:
    >>> import llmscope
    >>> from llmscope import battery, lesion_atlas
    >>> model = llmscope.load("grammar-2l")
    >>> bat = battery(model, n_docs=4, n_pairs=16, seed=0)
    >>> atlas = lesion_atlas(model, bat, "attn.1", n_controls=4, progress=False)
    >>> atlas.top(1, by="harm_copying").index.tolist()
    [('attn.1', 0)]
    >>> atlas.df.loc[("attn.1", 0), ["breaks_copying", "breaks_agreement"]].tolist()
    [True, False]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np
import pandas as pd

from llmscope import checks, identity
from llmscope.analysis.heads import old_top
from llmscope.analysis.stats import cluster_bootstrap, interval, p_value
from llmscope.checks import count, draws, flag
from llmscope.engine import lesions as engine
from llmscope.engine.lesions import Battery, Behaviour, Lesion, check_battery, check_mode, pass_tokens_of, positive
from llmscope.errors import AnalysisError
from llmscope.result import Result
from llmscope.sites import Site, UnitsLike, resolve_units, unit_labels
from llmscope.stimuli import trials
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.organism import speaks_grammar
from llmscope.vocabulary import renamed

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import xarray as xr
    from transformer_lens.model_bridge import TransformerBridge

INDUCTION_HALF = 10  # tokens per half of the English battery's repeated sequences
QUANTITIES = ("harm", "breaks", "lesioned", "ci_low", "ci_high")  # per lesion and behaviour


# ---------------------------------------------------------------- batteries


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
        >>> import llmscope
        >>> from llmscope import battery
        >>> model = llmscope.load("grammar-2l")
        >>> smol = llmscope.load("smollm2-135m")
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


# ---------------------------------------------------------------- the atlas


def _groups(resolved: list[tuple[Site, np.ndarray]], group_size: int) -> list[Lesion]:
    """Consecutive runs of ``group_size`` chosen units within each site (the last may be smaller)."""
    for s, idx in resolved:
        if group_size > len(idx):
            raise AnalysisError.Range(f"group_size={group_size} is larger than {s.name}, which has {len(idx)} chosen "
                                      f"{s.unit}s (of {s.n_units}); use group_size <= {len(idx)}.")
    return [[(s, idx[i:i + group_size])] for s, idx in resolved for i in range(0, len(idx), group_size)]


def _min_effects(bat: Battery, min_effect: Any) -> dict[str, float]:
    if min_effect is None:
        return {b.name: b.min_effect for b in bat}
    if isinstance(min_effect, Mapping):
        bat.check(list(min_effect))
        return {b.name: positive(min_effect.get(b.name, b.min_effect), f"min_effect[{b.name!r}]") for b in bat}
    value = positive(min_effect, "min_effect")
    return {b.name: value for b in bat}


def _values(sums: engine.Sums, effects: dict[str, float], n_boot: int, rng: np.random.Generator) -> pd.DataFrame:
    """Per-lesion values (row 0 is the intact model) and the breaks criterion, one column block each."""
    cols: dict[str, dict[str, np.ndarray]] = {q: {} for q in ("harm", "breaks", "lesioned", "baseline", "ci_low",
                                                               "ci_high")}
    values, harms = sums.values(), sums.harm()
    for b in sums.battery:
        n = sums.counts(b.name)
        used, s = n > 0, sums.sums[b.name]
        ci = interval(b.sign * cluster_bootstrap(s[:, used] - s[:1, used], n[used], n_boot, rng))
        low, high = ci[:, 0] + 0.0, ci[:, 1] + 0.0
        harm, value = harms[b.name].to_numpy(), values[b.name].to_numpy()
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


class AtlasResult(Result):
    """What :func:`lesion_atlas` returns.

    ``.df``, one row per lesioned unit or group, indexed by ``(site, unit)`` (a group by its
    site and first unit; ``members`` lists its units):

    =====================  ====================================================================
    class                  ``"all"``, ``"some"`` or ``"none"``: the behaviours it breaks
    broken, n_broken       which (comma-separated names) and how many
    group_size, members    units lesioned together (a tuple of unit indices of the site)
    severity               the largest harm over the behaviours, in units of each one's
                           ``min_effect`` (1 = the break threshold; what :meth:`top` ranks by)
    harm_<b>               the lesion's harm to behaviour b (rise of a loss in nats, fall of an
                           accuracy), lesioned - intact with the sign of harm
    breaks_<b>             the criterion of the module docstring
    rank_<b>               1 = the most harmful unit for b (ties share the best rank)
    lesioned_<b>           b's value under the lesion; ``baseline_<b>``: intact
    ci_low_<b>, ci_high_<b>  95% cluster-bootstrap interval of ``harm_<b>``
    =====================  ====================================================================

    ``.data``, an ``xarray.Dataset`` over ``behaviour`` and ``control`` (the random groups):
    per behaviour ``kind``, ``stimuli``, ``n_rows``, ``n_seqs``, ``baseline``, ``min_effect``,
    ``n_broken`` (units or groups that break it), ``harm_control_p95`` and ``harm_control_max``
    (of the random groups' harm), ``breaks_control_rate``; per random group and behaviour
    ``harm_control``, ``breaks_control``, ``lesioned_control``, ``ci_low_control``,
    ``ci_high_control``; per random group ``members_control`` (``"site:unit"`` labels).
    :attr:`behaviours` and :attr:`controls` show them as tables.

    ``.meta``: ``model``, ``behaviours``, ``mode``, ``group_size``, ``n_groups`` (groups the
    sites make), ``n_lesioned`` (groups lesioned: ``n_sample`` of them when sampled),
    ``n_controls``, ``n_boot``, ``seed``, ``stacked``, ``pass_tokens``, ``criterion``.
    """

    kind: ClassVar[str] = "lesion_atlas"
    rank_by: ClassVar[str | None] = "severity"

    @property
    def behaviours(self) -> pd.DataFrame:
        """One row per behaviour: the battery, the intact value and the controls beside it."""
        per = [v for v in self.data.data_vars if self.data[v].dims == ("behaviour",)]
        return self.data[per].to_dataframe()

    @property
    def controls(self) -> pd.DataFrame:
        """One row per random group, with the columns of ``.df`` (no ranks)."""
        d, names = self.data, list(self.data["behaviour"].values)
        wide = pd.DataFrame({f"{q}_{b}": d[f"{q}_control"].sel(behaviour=b).values for q in QUANTITIES for b in names},
                            index=pd.Index(d["control"].values, name="control"))
        for b in names:
            wide.insert(wide.columns.get_loc(f"ci_low_{names[0]}"), f"baseline_{b}", float(d["baseline"].sel(behaviour=b)))
        out = _classify(wide, names)
        out.insert(3, "group_size", self.meta["group_size"])
        out.insert(4, "members", [tuple(m.split(" ")) for m in d["members_control"].values])
        return out

    def top(self, n: int = 10, by: str | None = None, where: str | None = None,
            ascending: bool = False) -> pd.DataFrame:
        """The ``n`` most harmful rows (by ``severity``, or ``by="harm_<behaviour>"``), one row per
        unit (a group's row repeated for each of its members) indexed by ``(site, unit)``: ready
        for ``lesion()`` or a widget.

        Example:
            >>> import llmscope
            >>> from llmscope import battery, intervene, lesion, lesion_atlas
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> bat = battery(model, n_docs=4, n_pairs=8)
            >>> atlas = lesion_atlas(model, bat, "attn.1", group_size=2, n_controls=2, progress=False)
            >>> with intervene(model, lesion(atlas.top(1, by="harm_copying"))):
            ...     logits = model(stim.ids)
        """
        n, by = old_top(n, by, lambda behaviour: f"harm_{behaviour}")
        best = super().top(n, by, where, ascending)
        rows = [(s, int(u), i) for i, (s, members) in enumerate(zip(best.index.get_level_values(0), best["members"]))
                for u in members]
        out = best.iloc[[i for *_, i in rows]]
        out.index = pd.MultiIndex.from_tuples([(s, u) for s, u, _ in rows], names=["site", "unit"])
        out.attrs.update(best.attrs)
        return out

    def plot(self, n: int = 40) -> "go.Figure":
        """A units x behaviours heatmap of harm / min_effect (1 = the break threshold) for the
        ``n`` most severe lesions, beside the random groups; x marks a break."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = list(self.data["behaviour"].values)
        effects = self.data["min_effect"].values

        def panel(df: pd.DataFrame) -> dict:
            harm = df[[f"harm_{b}" for b in names]].to_numpy()
            breaks = df[[f"breaks_{b}" for b in names]].to_numpy()
            return dict(z=harm / effects, customdata=harm, text=np.where(breaks, "x", ""), x=names,
                        texttemplate="%{text}", zmin=-1, zmax=3, zmid=0, colorscale="RdBu_r",
                        hovertemplate="%{y} | %{x}<br>harm %{customdata:.3g} (%{z:.2f} x min effect)<extra></extra>")

        top = self.df.sort_values("severity", ascending=False, kind="stable").head(count(n, "n"))
        labels = [f"{s}:{u}" if size == 1 else f"{s}:{u}+{size - 1}" for (s, u), size in zip(top.index, top["group_size"])]
        controls = self.controls
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                            row_heights=[max(len(top), 1), max(len(controls), 1)],
                            subplot_titles=[f"{len(top)} most harmful of {len(self.df)} lesions",
                                            f"{len(controls)} random groups (control)"])
        fig.add_trace(go.Heatmap(y=labels, colorbar=dict(title="harm /<br>min effect"), **panel(top)), row=1, col=1)
        fig.add_trace(go.Heatmap(y=[f"random {i}" for i in controls.index], showscale=False, **panel(controls)),
                      row=2, col=1)
        fig.update_yaxes(type="category", autorange="reversed")
        fig.update_xaxes(type="category")
        return fig.update_layout(title=f"lesion atlas ({self.meta['mode']} lesions); x = breaks",
                                 height=240 + 14 * (len(top) + len(controls)))


def _unit_table(values: pd.DataFrame, groups: list[Lesion], names: list[str], effects: dict[str, float]) -> pd.DataFrame:
    """The atlas's rows: indexed by each group's site and first unit, with ranks and the class."""
    table = values.set_axis(pd.MultiIndex.from_tuples([(g[0][0].name, int(g[0][1][0])) for g in groups],
                                                      names=["site", "unit"]))
    severity = (table[[f"harm_{b}" for b in names]] / [effects[b] for b in names]).max(axis=1)
    table = table.assign(group_size=[len(g[0][1]) for g in groups], members=[tuple(map(int, g[0][1])) for g in groups],
                         severity=severity,
                         **{f"rank_{b}": table[f"harm_{b}"].rank(ascending=False, method="min").astype(int)
                            for b in names})
    head = ["class", "broken", "n_broken", "group_size", "members", "severity"]
    blocks = [f"{q}_{b}" for q in ("harm", "breaks", "rank", "lesioned", "baseline", "ci_low", "ci_high") for b in names]
    return _classify(table, names)[head + blocks]


def _data(bat: Battery, values: pd.DataFrame, df: pd.DataFrame, controls: list[Lesion],
          effects: dict[str, float]) -> "xr.Dataset":
    """The behaviours and the random groups as one Dataset (see :class:`AtlasResult`)."""
    import xarray as xr

    names = bat.names
    ctrl = values.iloc[1 + len(df):].reset_index(drop=True)
    per_control = {f"{q}_control": (("control", "behaviour"), ctrl[[f"{q}_{b}" for b in names]].to_numpy())
                   for q in QUANTITIES}
    harms = per_control["harm_control"][1]
    table = bat.table()
    return xr.Dataset(
        {"kind": ("behaviour", table["kind"].to_numpy()), "stimuli": ("behaviour", table["stimuli"].to_numpy()),
         "n_rows": ("behaviour", table["n_rows"].to_numpy()), "n_seqs": ("behaviour", table["n_seqs"].to_numpy()),
         "baseline": ("behaviour", [values[f"baseline_{b}"].iloc[0] for b in names]),
         "min_effect": ("behaviour", [effects[b] for b in names]),
         "n_broken": ("behaviour", [int(df[f"breaks_{b}"].sum()) for b in names]),
         "harm_control_p95": ("behaviour", np.percentile(harms, 95, axis=0)),
         "harm_control_max": ("behaviour", harms.max(0)),
         "breaks_control_rate": ("behaviour", per_control["breaks_control"][1].mean(0)),
         **per_control,
         "members_control": ("control", [" ".join(f"{s.name}:{i}" for s, idx in g for i in idx) for g in controls])},
        coords={"behaviour": names, "control": np.arange(len(controls))})


@renamed(n_random="n_controls")
def lesion_atlas(model: "TransformerBridge", battery: Battery, units: UnitsLike = None, *, group_size: int = 1,
                 n_sample: int | None = None, n_controls: int = 20, mode: str = "zero", reference: Any = None,
                 behaviours: Sequence[str] | None = None, min_effect: float | Mapping[str, float] | None = None,
                 n_boot: int = 1000, seed: int = 0, stack: bool = True, pass_tokens: int | None = None,
                 screen: str | None = None, confirm: int | None = None, progress: bool = True) -> AtlasResult:
    """Lesion every unit (or group) of ``units`` and measure every behaviour (runs the model).

    On a big model, ``screen="atp"`` (or ``"atp*"``) first estimates every unit's harm from
    gradients (:func:`~llmscope.analysis.attribution.screen`; default units: every neuron and
    head), then lesions exactly only the top ``confirm`` units of each behaviour (default 10)
    and ``n_sample`` units drawn from the rest (default 100), stacked, with the ``n_controls``
    random groups as here; it returns the
    :class:`~llmscope.analysis.attribution.ConfirmResult`: estimates beside exact harms, the
    screen's Spearman correlation and false-negative bound per behaviour, and ``.atlas``.

    Args:
        model: the model (left unchanged: every hook is removed on exit, even on error).
        battery: what to measure (:func:`battery`); ``behaviours`` keeps only the named ones.
        units: any unit form of :mod:`llmscope.sites` (``"mlp.0"``, ``[("attn.1", [0, 2])]``,
            a unit table); default every head of every ``attn.L``.
        group_size: units lesioned together: consecutive runs of the chosen units of one site.
        n_sample: lesion only this many groups, drawn at random (seeded), for big models.
        n_controls: random groups of ``group_size`` units (from all chosen units), the control.
        mode: ``"zero"`` or ``"mean"`` (each unit's mean over ``reference``, as ``lesion`` does;
            default reference: the stimuli of the battery's first behaviour).
        min_effect: the smallest harm that breaks a behaviour: one number for all, or
            ``{name: number}``; default each behaviour's own.
        n_boot: bootstrap resamples of the breaks criterion's interval.
        stack: stack lesions in one forward pass (exact); False runs one forward per lesion and
            batch through ``lesion()``: slower, the reference the stacked passes are checked against.
        pass_tokens: tokens per forward pass (default: logits within 128 MB).
        screen: ``None`` (lesion every unit exactly), ``"atp"`` or ``"atp*"`` (screen, then confirm).
        confirm: units confirmed exactly per behaviour after a screen.

    Returns:
        :class:`AtlasResult` (its docstring lists the columns).

    Example:
        >>> import llmscope
        >>> from llmscope import battery, lesion_atlas
        >>> model = llmscope.load("grammar-2l")
        >>> atlas = lesion_atlas(model, battery(model, n_docs=4, n_pairs=8), [("attn.0", [2])], n_controls=3,
        ...                      progress=False)
        >>> atlas.df[["class", "group_size"]].values.tolist()
        [['some', 1]]
    """
    if screen is not None:
        return _screened(model, battery, units, screen, confirm, group_size=group_size, n_sample=n_sample,
                         n_controls=n_controls, mode=mode, reference=reference, behaviours=behaviours,
                         min_effect=min_effect, n_boot=n_boot, seed=seed, stack=stack, pass_tokens=pass_tokens,
                         progress=progress)
    if confirm is not None:
        raise AnalysisError(f"confirm={confirm!r} confirms a screen's top units; pass screen='atp' or 'atp*' too "
                            "(or leave confirm out to lesion every unit exactly).")
    bat = check_battery(model, battery)
    bat = bat if behaviours is None else bat.select(behaviours)
    resolved = resolve_units(model, units if units is not None else [(f"attn.{L}", None) for L in range(model.cfg.n_layers)])
    group_size, n_controls = count(group_size, "group_size"), draws(n_controls, "n_controls", "pass")
    n_boot, seed = draws(n_boot, "n_boot", "resample"), checks.seed(seed)
    stack, progress = flag(stack, "stack"), flag(progress, "progress")
    check_mode(mode, reference)
    effects = _min_effects(bat, min_effect)
    pass_tokens = pass_tokens_of(model, pass_tokens)
    groups = _groups(resolved, group_size)
    n_groups = len(groups)
    rng_sample, rng_control, rng_boot = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    if n_sample is not None:
        n_sample = count(n_sample, "n_sample")
        if n_sample > len(groups):
            raise AnalysisError.Range(f"n_sample={n_sample} exceeds the {len(groups)} groups of these units; "
                                      f"use n_sample <= {len(groups)} or None (all).")
        groups = [groups[i] for i in np.sort(rng_sample.choice(len(groups), n_sample, replace=False))]
    controls = engine.random_sets(resolved, group_size, n_controls, rng_control)

    sums = engine.run(model, bat, [*groups, *controls], mode=mode, reference=reference, stack=stack,
                      pass_tokens=pass_tokens, progress=progress, desc="lesion atlas")
    values = _values(sums, effects, n_boot, rng_boot)
    df = _unit_table(values.iloc[1:1 + len(groups)], groups, bat.names, effects)
    meta = dict(model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(),
                behaviours=bat.names, mode=mode, group_size=group_size, n_groups=n_groups, n_lesioned=len(groups),
                n_controls=n_controls, n_boot=n_boot, seed=seed, stacked=stack, pass_tokens=pass_tokens,
                criterion="harm >= min_effect and the 95% cluster-bootstrap interval of harm above 0")
    return AtlasResult(df, meta, _data(bat, values, df, controls, effects))


def _screened(model: "TransformerBridge", battery: Battery, units: UnitsLike, method: str, k: int | None, *,
              group_size: int, stack: bool, behaviours: Sequence[str] | None, mode: str, reference: Any,
              pass_tokens: int | None, progress: bool, **confirming: Any) -> Any:
    """``lesion_atlas(screen=..., confirm=k)``: the attribution screen, then its exact confirmation."""
    from llmscope.analysis.attribution import confirm, screen

    if group_size != 1 or stack is not True:
        raise AnalysisError(f"a screen ranks single units and is confirmed by stacked lesions; use group_size=1 and "
                            f"stack=True with screen= (got group_size={group_size!r}, stack={stack!r}).")
    screened = screen(model, battery, units, method=method, mode=mode, reference=reference, behaviours=behaviours,
                      pass_tokens=pass_tokens, progress=progress)
    return confirm(model, battery, screened, 10 if k is None else k, pass_tokens=pass_tokens, progress=progress,
                   **confirming)


# ---------------------------------------------------------------- the lesion test


class LesionTest(Result):
    """What :func:`lesion_test` returns: one row of ``.df`` per behaviour.

    =========================  ============================================================
    baseline, lesioned         the behaviour's value, intact and with the units lesioned
    harm                       lesioned - intact, signed so that harm is positive (a loss
                               rises, a share correct falls)
    ci_low, ci_high            its 95% cluster-bootstrap interval (sequences resampled)
    harm_control               the mean harm of the random sets (as many units, same sites)
    excess                     ``harm - harm_control``: the harm beyond a random lesion's
    excess_ci_low, _ci_high    its interval, and ``p`` its two-sided p-value, from the same
                               draws (the interval excludes 0 exactly when p < 0.05)
    ratio                      ``harm / harm_control``, only where the control's harm is
                               bounded away from zero (its interval excludes 0), else NaN;
                               ``ratio_ci_low``, ``ratio_ci_high`` from the same draws
    =========================  ============================================================

    ``.data``: ``harm_control`` per random set and behaviour (``control`` x ``behaviour``), and
    ``members_control`` (each set's ``"site:unit"`` labels). ``.meta``: ``model``, ``units``
    (labels), ``n_units``, ``mode``, ``n_controls``, ``n_boot``, ``seed``, ``stacked``,
    ``pass_tokens``, ``control``.
    """

    kind: ClassVar[str] = "lesion_test"

    def plot(self) -> "go.Figure":
        """Each behaviour's harm (with its interval) beside the random sets' harms."""
        import plotly.graph_objects as go

        names = [str(b) for b in self.df.index]
        df = self.df
        fig = go.Figure([
            go.Bar(x=names, y=df["harm"], name="lesioned units",
                   error_y=dict(type="data", symmetric=False, array=df["ci_high"] - df["harm"],
                                arrayminus=df["harm"] - df["ci_low"]),
                   hovertemplate="%{x}<br>harm %{y:.4g}<extra></extra>"),
            go.Box(x=np.repeat(names, self.data.sizes["control"]),
                   y=self.data["harm_control"].transpose("behaviour", "control").values.ravel(),
                   name="random units", boxpoints="all",
                   hovertemplate="%{x}<br>random set: harm %{y:.4g}<extra></extra>")])
        fig.update_xaxes(type="category")
        return fig.update_layout(title=f"harm of lesioning {self.meta['n_units']} units ({self.meta['mode']}) beside "
                                       f"{self.meta['n_controls']} random sets of as many", yaxis_title="harm",
                                 boxmode="group")


def _test_table(sums: engine.Sums, n_boot: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per behaviour: the lesion's harm against the random sets' (rows 2.. of ``sums``)."""
    rows = []
    values, harms = sums.values(), sums.harm()
    for b in sums.battery:
        n, s = sums.counts(b.name), sums.sums[b.name]
        used = n > 0
        per_seq = b.sign * np.stack([s[1] - s[0], s[2:].mean(0) - s[0]])[:, used]
        draws_ = cluster_bootstrap(per_seq, n[used], n_boot, rng)  # [harm, control's harm] x n_boot, one resampling
        (low, high), (c_low, c_high) = interval(draws_)
        excess = draws_[0] - draws_[1]
        harm, control = float(harms[b.name].iloc[1]), float(harms[b.name].iloc[2:].mean())
        bounded = c_low > 0 or c_high < 0
        with np.errstate(invalid="ignore", divide="ignore"):
            r_low, r_high = interval(draws_[0] / draws_[1]) if bounded else (np.nan, np.nan)
        e_low, e_high = interval(excess)
        rows.append(dict(behaviour=b.name, baseline=float(values[b.name].iloc[0]),
                         lesioned=float(values[b.name].iloc[1]), harm=harm, ci_low=low + 0.0, ci_high=high + 0.0,
                         harm_control=control, excess=harm - control, excess_ci_low=e_low + 0.0,
                         excess_ci_high=e_high + 0.0, p=float(p_value(excess)),
                         ratio=harm / control if bounded else np.nan, ratio_ci_low=r_low, ratio_ci_high=r_high))
    return pd.DataFrame(rows).set_index("behaviour")


def lesion_test(model: "TransformerBridge", battery: Battery, units: UnitsLike, *, n_controls: int = 20,
                mode: str = "zero", reference: Any = None, behaviours: Sequence[str] | None = None,
                n_boot: int = 2000, seed: int = 0, stack: bool = True, pass_tokens: int | None = None,
                progress: bool = True) -> LesionTest:
    """Lesion ``units`` together and compare the harm to every behaviour with that of random
    units: ``n_controls`` sets of as many units from the same sites (as many per site, none of
    the lesioned ones), each lesioned the same way (runs the model).

    The harm and the random sets' mean harm are bootstrapped together, resampling whole
    sequences (:func:`llmscope.analysis.stats.cluster_bootstrap`), so their difference
    (``excess``) and ratio have intervals and the difference a p-value (see :class:`LesionTest`).

    Args:
        battery: what to measure (:func:`battery`, or a :class:`Battery` of your own, such as
            the loss on one class of tokens and on the others); ``behaviours`` keeps the named ones.
        units: any unit form of :mod:`llmscope.sites`, lesioned together.
        mode, reference, stack, pass_tokens: as in :func:`lesion_atlas`.

    Example:
        >>> import llmscope
        >>> from llmscope import battery
        >>> from llmscope.analysis import lesion_test
        >>> model = llmscope.load("grammar-2l")
        >>> bat = battery(model, n_docs=8, n_pairs=16, behaviours=["copying", "agreement"])
        >>> test = lesion_test(model, bat, ("attn.1", [0]), n_controls=3, progress=False)
        >>> bool(test.df.loc["copying", "excess_ci_low"] > 0), float(test.df.loc["agreement", "harm"])
        (True, 0.0)
    """
    import xarray as xr

    bat = check_battery(model, battery)
    bat = bat if behaviours is None else bat.select(behaviours)
    lesion = resolve_units(model, units)
    n_controls, n_boot = draws(n_controls, "n_controls", "pass"), draws(n_boot, "n_boot", "resample")
    seed, stack, progress = checks.seed(seed), flag(stack, "stack"), flag(progress, "progress")
    check_mode(mode, reference)
    pass_tokens = pass_tokens_of(model, pass_tokens)
    rng_control, rng_boot = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    controls = engine.same_sites(lesion, n_controls, rng_control)
    sums = engine.run(model, bat, [lesion, *controls], mode=mode, reference=reference, stack=stack,
                      pass_tokens=pass_tokens, progress=progress, desc="lesion test")
    harms = sums.harm()
    data = xr.Dataset({"harm_control": (("control", "behaviour"), harms.iloc[2:].to_numpy()),
                       "members_control": ("control", [" ".join(f"{s.name}:{i}" for s, idx in c for i in idx)
                                                       for c in controls])},
                      coords={"control": np.arange(n_controls), "behaviour": bat.names})
    index = pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in lesion for i in idx], names=["site", "unit"])
    meta = dict(model=str(model.cfg.model_name), fingerprint=identity.fingerprint(model).to_dict(),
                units=unit_labels(index), n_units=len(index), mode=mode, n_controls=n_controls, n_boot=n_boot,
                seed=seed, stacked=stack, pass_tokens=pass_tokens,
                control="random sets of as many units from the same sites (none of the lesioned), lesioned alike")
    return LesionTest(_test_table(sums, n_boot, rng_boot), meta, data)


__all__ = ["Behaviour", "Battery", "battery", "lesion_atlas", "AtlasResult", "lesion_test", "LesionTest"]
