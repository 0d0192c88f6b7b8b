"""Seed 002, "Spotting key neurons in grammar perception", as a pipeline on any model.

The paper (Llama 3) scores MLP neurons by Integrated Gradients to the next-word prediction,
keeps the top 5% per sample, keeps for each part-of-speech class the k = 100 neurons that recur
most often, and trains a classifier on those key neurons that predicts the POS of fresh data
(up to about 0.91 in the last layer); disrupting them resembles a lesion study. Here:

1. **Key neurons** — :func:`~llmscope.analysis.key_neurons.key_neurons` on *training* stimuli
   (IG to the log-probability of the actual next token, top ``top_frac`` per sample and layer,
   the k most recurrent per class and layer; the class is the predicted word's tag).
2. **Classifiers per layer** — :func:`~llmscope.decode` / :func:`~llmscope.decode_curve` on a
   recording of *other* stimuli (folds grouped by sequence): the key neurons of every class
   together (the union of each class's k), as many random neurons of the same layer
   (``n_controls`` draws: decode_curve's ``n_controls``), and all neurons; decoding the POS of the next token (the word being
   predicted, as in the paper) and of the current token; and accuracy against k.
3. **Lesion test** — for each layer and each of the ``n_classes`` commonest classes C, zero the
   k key neurons of C and measure the loss on predicted tokens of class C, on predicted tokens
   of other classes, and on class C after zeroing as many random neurons of the same layer.
   Specificity is two differences, each with a 95% cluster-bootstrap interval over sequences
   (one bootstrap for the three effects, so the differences are resampled together): the class
   effect minus the random effect, and minus the other-class effect. A lesion is *specific*
   when both intervals lie above zero. The ratio ``class_effect / random_effect`` is kept only
   where its denominator is bounded away from zero (the random effect's interval lies above
   zero); a harmless random lesion leaves it NaN, not infinite.

Choices where the paper is silent: decoding is scored on stimuli the key neurons were not
chosen on; a small model's layer has few neurons, so the headline k is ``k`` (default 10) per
class and the curve runs k = 1..100; the lesion is a zero-ablation (``lesion(mode="zero")``).

Example:
    >>> import llmscope
    >>> from llmscope.replicate import seed002
    >>> model = llmscope.load("grammar-2l")
    >>> r = seed002(model, n_docs=12, method="grad_x_act", ks=(1, 5), n_controls=2, folds=2, progress=False)
    >>> r.table.columns[:4].tolist()
    ['stimuli', 'layer', 'key_next', 'random_next']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from llmscope.analysis.decoding import decode, decode_curve
from llmscope.analysis.stats import cluster_bootstrap, interval
from llmscope.analysis.key_neurons import METHODS, KeyNeurons, key_neurons
from llmscope import checks
from llmscope.checks import count, draws
from llmscope.behaviour import scored_rows
from llmscope.errors import AnalysisError, SiteError
from llmscope.interventions import intervene, lesion
from llmscope.progress import progress_bar
from llmscope.vocabulary import renamed
from llmscope.recording import record
from llmscope.stimuli.core import Stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

KS = (1, 2, 5, 10, 20, 50, 100)
PAPER = {"last_layer_accuracy": 0.91, "k": 100, "top_frac": 0.05, "model": "Llama 3 (8B, 14,336 neurons a layer)"}
N_BOOT = 2000


@dataclass
class Seed002:
    """The replication's tables: ``table`` (one row per stimulus set and layer), ``curve``
    (accuracy against k: :func:`~llmscope.decode_curve`'s table, one row per stimulus set,
    layer, target and k, the key neurons' ``accuracy`` beside ``accuracy_control_units``),
    ``lesions`` (one row per stimulus set, layer and class), ``key`` (the
    :class:`~llmscope.analysis.key_neurons.KeyNeurons` of each stimulus set) and ``meta``."""

    table: pd.DataFrame
    curve: pd.DataFrame
    lesions: pd.DataFrame
    key: dict[str, KeyNeurons] = field(repr=False)
    meta: dict[str, Any]

    def figures(self) -> dict[str, "go.Figure"]:
        """Plotly figures: accuracy per layer (key, random, all; next and current token) and
        accuracy against k, for each stimulus set."""
        import plotly.express as px

        out = {}
        for name, part in self.table.groupby("stimuli", sort=False):
            long = part.melt(id_vars=["layer"], value_vars=[c for c in part.columns if c.split("_")[0] in
                                                             ("key", "random", "all") and not c.endswith("sd")],
                             var_name="probe", value_name="accuracy")
            out[f"accuracy_{name}"] = px.line(long, x="layer", y="accuracy", color="probe", markers=True,
                                              title=f"POS decoding per layer ({name})", range_y=[0, 1]).update_xaxes(dtick=1)
        for name, part in self.curve.groupby("stimuli", sort=False):
            agg = (part[["layer", "target", "k", "accuracy", "accuracy_control_units"]]
                   .rename(columns={"accuracy": "key", "accuracy_control_units": "random"})
                   .melt(id_vars=["layer", "target", "k"], var_name="neurons", value_name="accuracy"))
            out[f"curve_{name}"] = px.line(agg, x="k", y="accuracy", color="neurons", line_dash="target",
                                           facet_col="layer", log_x=True, markers=True, range_y=[0, 1],
                                           title=f"accuracy against k: key vs random neurons ({name})"
                                           ).update_xaxes(tickvals=sorted(agg["k"].unique()))  # else a log axis labels 1, 2, 5, 10, 2, 5
        return out

    def save(self, out: str | Path) -> list[Path]:
        """Write the tables as CSV and the figures as self-contained HTML (plotly.js inlined: no
        CDN) into ``out``; return the paths written."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in ("table", "curve", "lesions"):
            paths.append(out / f"{name}.csv")
            getattr(self, name).to_csv(paths[-1], index=False)
        for name, fig in self.figures().items():
            paths.append(out / f"{name}.html")
            fig.write_html(paths[-1], include_plotlyjs=True)
        return paths


def default_stimuli(model: "TransformerBridge", n_docs: int) -> dict[str, tuple[Stimuli, Stimuli]]:
    """``{name: (train, test)}``: the organism's gold-tagged documents, or for an English model
    gold-tagged template sentences and spaCy-tagged free sentences (the bundled 100, halved)."""
    from llmscope.stimuli import grammar, sentences, templates
    from llmscope.stimuli.organism import speaks_grammar

    if speaks_grammar(model):
        return {"gold": (grammar(model, n_docs=n_docs, seed=0), grammar(model, n_docs=n_docs, seed=1))}
    free = sentences(model, seed=0)
    half = free.n_seqs // 2
    return {"templates (gold)": (templates(model, n=n_docs, seed=0), templates(model, n=n_docs, seed=1)),
            "sentences (spaCy)": (free.select_seqs(np.arange(half)), free.select_seqs(np.arange(half, free.n_seqs)))}


def _key_set(key: KeyNeurons, site: str, k: int) -> pd.MultiIndex:
    """The union of every class's ``k`` key neurons in ``site``."""
    return pd.concat([key.units(c, site=site, k=k) for c in key.meta["classes"]]).index.unique().sort_values()


def _specificity(d: pd.DataFrame, n_boot: int, rng: np.random.Generator) -> dict:
    """The lesion test's numbers for one class from per-token loss changes ``d`` (columns ``seq``,
    ``is_c``: a row of the class, ``key``: the key lesion's change, ``rand``: the random
    lesions'): the three effects, the two differences and the bounded ratio, with 95% intervals
    from one cluster bootstrap over sequences.
    """
    parts = pd.DataFrame({"seq": d["seq"], "key_c": d["key"].where(d["is_c"], 0.0),
                          "rand_c": d["rand"].where(d["is_c"], 0.0), "key_o": d["key"].where(~d["is_c"], 0.0),
                          "n_c": d["is_c"].astype(float), "n_o": (~d["is_c"]).astype(float)}).groupby("seq").sum()
    sums = parts[["key_c", "rand_c", "key_o"]].to_numpy().T
    counts = parts[["n_c", "n_c", "n_o"]].to_numpy().T
    (cls, rand, other), boot = sums.sum(1) / counts.sum(1), cluster_bootstrap(sums, counts, n_boot, rng)
    (rand_low, rand_high), (mr_low, mr_high), (mo_low, mo_high) = interval(
        np.stack([boot[1], boot[0] - boot[1], boot[0] - boot[2]]))
    bounded = rand_low > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_low, ratio_high = interval(boot[0] / boot[1]) if bounded else (np.nan, np.nan)
    return dict(class_effect=cls, other_effect=other, random_effect=rand, random_low=rand_low, random_high=rand_high,
                class_minus_random=cls - rand, class_minus_random_low=mr_low, class_minus_random_high=mr_high,
                class_minus_other=cls - other, class_minus_other_low=mo_low, class_minus_other_high=mo_high,
                specific=bool(mr_low > 0 and mo_low > 0), specificity=cls / rand if bounded else np.nan,
                specificity_low=ratio_low, specificity_high=ratio_high)


@renamed(n_random="n_controls")
def lesion_test(model: "TransformerBridge", stimuli: Stimuli, key: KeyNeurons, site: str, k: int,
                n_classes: int = 4, n_controls: int = 3, seed: int = 0, batch_size: int = 16,
                n_boot: int = N_BOOT) -> pd.DataFrame:
    """Zero the ``k`` key neurons of each of the ``n_classes`` commonest classes in ``site`` (runs
    the model): loss change on predicted tokens of the class, of other classes, and of the class
    after zeroing ``k`` random neurons of the site (mean of ``n_controls`` draws). One row per class.

    Columns: ``site``, ``cls``, ``k``, ``n_class`` (predicted tokens of the class),
    ``class_effect``, ``other_effect``, ``random_effect`` (mean loss changes, nats) with the
    random effect's 95% interval (``random_low``, ``random_high``); ``class_minus_random`` and
    ``class_minus_other`` with theirs (``_low``, ``_high``); ``specific`` (both difference
    intervals above zero); ``specificity`` (``class_effect / random_effect``, NaN unless the
    random effect's interval lies above zero) with its interval (``specificity_low``,
    ``specificity_high``). Every interval comes from one cluster bootstrap over sequences
    (``n_boot`` draws); the random units' draw is not resampled.
    """
    label = key.meta["label"]
    n_boot = draws(n_boot, "n_boot", "resample")
    base = scored_rows(model, stimuli, "loss", batch_size=batch_size)
    classes = [c for c in key.n_samples.sort_values(ascending=False).index if c in set(base[label])][:n_classes]
    rng = np.random.default_rng(seed)
    n_units = model.cfg.d_mlp
    rows = []
    for cls in classes:
        units = key.units(cls, site=site, k=k)
        with intervene(model, lesion(units)):
            hit = scored_rows(model, stimuli, "loss", batch_size=batch_size)["value"]
        rand = []
        for _ in range(n_controls):
            with intervene(model, lesion(site, rng.choice(n_units, len(units), replace=False))):
                rand.append(scored_rows(model, stimuli, "loss", batch_size=batch_size)["value"])
        rows_c = base[label] == cls
        d = pd.DataFrame({"seq": base["seq"], "is_c": rows_c, "key": hit - base["value"],
                          "rand": pd.concat(rand, axis=1).mean(1) - base["value"]})
        rows.append(dict(site=site, cls=cls, k=len(units), n_class=int(rows_c.sum()), **_specificity(d, n_boot, rng)))
    return pd.DataFrame(rows)


def _layers(model: "TransformerBridge", layers: Any, name: str) -> list[int]:
    n = model.cfg.n_layers
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or not layers:
        raise AnalysisError.Type(f"{name} must be a non-empty list of layers in 0..{n - 1}, got {layers!r}.")
    out = [count(L, f"a layer of {name}", 0, n - 1, SiteError) for L in layers]
    return list(dict.fromkeys(out))


def _check_args(model: "TransformerBridge", layers: Any, lesion_layers: Any, ks: Any, k: Any, method: Any,
                steps: Any, top_frac: Any, n_classes: Any, n_controls: Any, folds: Any, n_docs: Any, seed: Any,
                progress: Any) -> tuple[list[int], list[int], list[int]]:
    """Every argument of :func:`seed002` checked before any work: ``(layers, lesion_layers, ks)``."""
    d_mlp = model.cfg.d_mlp
    count(k, "k", 1, d_mlp), count(steps, "steps"), count(n_classes, "n_classes"), count(n_docs, "n_docs", 2)
    count(n_controls, "n_controls"), count(folds, "folds", 2), checks.seed(seed), checks.flag(progress, "progress")
    checks.fraction(top_frac, "top_frac")
    checks.choice(method, "method", METHODS)
    layers = list(range(model.cfg.n_layers)) if layers is None else _layers(model, layers, "layers")
    lesion_layers = layers if lesion_layers is None else _layers(model, lesion_layers, "lesion_layers")
    outside = [L for L in lesion_layers if L not in layers]
    if outside:
        raise SiteError.Range(f"lesion layers {outside} are not among the decoded layers {layers}: the lesion "
                              "test runs on decoded layers only; add them to layers or drop them.")
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or not ks:
        raise AnalysisError.Type(f"ks must be a non-empty list of set sizes in 1..{d_mlp}, got {ks!r}.")
    ks = sorted({count(x, "a set size of ks", 1, d_mlp) for x in ks})
    return layers, lesion_layers, ks


@renamed(n_random="n_controls")
def seed002(model: "TransformerBridge", *, stimuli: dict[str, tuple[Stimuli, Stimuli]] | None = None,
            n_docs: int = 40, label: str = "pos_tag", method: str = "ig", k: int = 10, ks: Sequence[int] = KS,
            top_frac: float = 0.05, steps: int = 64, layers: Sequence[int] | None = None,
            lesion_layers: Sequence[int] | None = None, n_classes: int = 4, n_controls: int = 5, folds: int = 5,
            seed: int = 0, progress: bool = True) -> Seed002:
    """Run the seed-002 replication on ``model`` (runs the model: attributions, recordings, lesions).

    Args:
        model: any TransformerLens bridge with ``mlp.L`` sites.
        stimuli: ``{name: (train, test)}`` with a ``label`` column (default :func:`default_stimuli`).
        n_docs: documents (organism) or template sentences (English) per default train/test set.
        label: the class column (Universal POS tags).
        method: key-neuron scoring, ``"ig"`` (the paper's), ``"grad_x_act"`` or ``"activation"``.
        k: key neurons per class and layer for the per-layer table and the lesion test.
        ks: set sizes of the accuracy-against-k curve (each no larger than ``d_mlp``).
        top_frac: share of a layer's neurons kept per sample.
        steps: IG integration points (64 make the organism's layers add up within 5%; 32 miss mlp.0 by ~14%).
        layers: layers to decode (default all); ``lesion_layers``: layers of the lesion test
            (default all ``layers``).
        n_classes: commonest classes in the lesion test; ``n_controls``: random draws of every control.
        folds: cross-validation folds (whole sequences).
        seed: seeds the random controls.
        progress: show a tqdm bar over the steps.

    Returns:
        :class:`Seed002`. ``table`` columns: ``stimuli``, ``layer``, ``key_next``,
        ``random_next`` (mean over draws), ``random_next_sd``, ``all_next``, the same ``_current``,
        ``n_key`` (the union's size), ``ambiguous_key_next`` / ``ambiguous_all_next`` and the same
        ``_current`` (accuracy on the tokens whose label is decoded that are ``ambiguous`` word
        forms, when the stimuli mark them), ``lesion_specific`` (classes whose key lesion is
        specific, of ``lesion_classes`` tested: see :func:`lesion_test`).
    """
    layers, lesion_layers, ks = _check_args(model, layers, lesion_layers, ks, k, method, steps, top_frac,
                                            n_classes, n_controls, folds, n_docs, seed, progress)
    stimuli = default_stimuli(model, n_docs) if stimuli is None else stimuli
    sites = [f"mlp.{L}" for L in layers]
    table, curves, lesions, keys = [], [], [], {}
    steps_total = len(stimuli) * (2 + len(layers) * 2 + len(lesion_layers))
    with progress_bar(total=steps_total, desc="seed002", show=progress) as bar:
        for name, (train, test) in stimuli.items():
            key = keys[name] = key_neurons(model, train, label, method, units=sites, top_frac=top_frac,
                                           k=max([k, *ks]), steps=steps, progress=False)
            bar.update()
            rec = record(model, test, sites, dtype="float32", progress=False)
            where = "ambiguous" if "ambiguous" in test.tokens.columns and test.tokens["ambiguous"].any() else None
            bar.update()
            for L, site in zip(layers, sites):
                row: dict[str, Any] = dict(stimuli=name, layer=L)
                for target in ("next", "current"):
                    options = dict(target=target, folds=folds, where=where, seed=seed, progress=False)
                    curve = decode_curve(rec, {kk: _key_set(key, site, kk) for kk in ks}, label, n_controls=n_controls,
                                         **options).df
                    curves.append(curve.assign(stimuli=name, layer=L, target=target))
                    # the headline k: its row of the curve (each probe tunes its C, so none is fitted twice)
                    at_k = (curve if k in ks else decode_curve(rec, {k: _key_set(key, site, k)}, label,
                                                               n_controls=n_controls, **options).df)
                    head = at_k[at_k.k == k].iloc[0]
                    every = decode(rec, site, label, n_controls=0, **options).df.iloc[0]
                    row.update({f"key_{target}": head["accuracy"], f"random_{target}": head["accuracy_control_units"],
                                f"random_{target}_sd": head["accuracy_control_units_sd"],
                                f"all_{target}": every["accuracy"]})
                    if where:
                        row[f"ambiguous_key_{target}"] = head["accuracy_where"]
                        row[f"ambiguous_all_{target}"] = every["accuracy_where"]
                    bar.update()
                row["n_key"] = len(_key_set(key, site, k))
                if L in lesion_layers:
                    part = lesion_test(model, test, key, site, k, n_classes, n_controls=min(n_controls, 3), seed=seed)
                    lesions.append(part.assign(stimuli=name, layer=L))
                    row["lesion_specific"], row["lesion_classes"] = int(part["specific"].sum()), len(part)
                    bar.update()
                table.append(row)
    meta = dict(model=str(model.cfg.model_name), method=method, k=k, ks=ks, top_frac=top_frac, steps=steps,
                folds=folds, n_controls=n_controls, label=label, paper=PAPER,
                completeness_error={n: kn.meta.get("completeness_error") for n, kn in keys.items()})
    lesion_df = pd.concat(lesions, ignore_index=True) if lesions else pd.DataFrame()
    return Seed002(pd.DataFrame(table), pd.concat(curves, ignore_index=True), lesion_df, keys, meta)


__all__ = ["seed002", "Seed002", "lesion_test", "default_stimuli", "KS", "PAPER"]
