"""How good an SAE is: SAELens's metrics, measured by running the model on stimuli.

Definitions (``x`` the site's activation at a token, ``x_hat`` the SAE's reconstruction,
``f`` its features; tokens are the stimuli's real tokens without BOS, as SAELens's evaluation
leaves special tokens out):

==========================  ================================================================
``l0``                      mean over tokens of the number of features with ``f > 0``
``explained_variance``      ``1 - E|x - x_hat|^2 / E|x - E[x]|^2`` over all tokens at once
                            (SAELens's ``explained_variance``; its per-token ``_legacy``
                            variant is not reported)
``fvu``                     ``1 - explained_variance``: the fraction of variance unexplained
``mse``                     ``E|x - x_hat|^2`` (summed over the site's values, per token)
``cossim``                  mean cosine of ``x`` and ``x_hat``
``ce_clean``                next-token loss (nats) of the intact model
``ce_sae``                  ... with the site replaced by ``x_hat`` (a TransformerLens hook)
``ce_mean_ablation``        ... with the site replaced by its mean over these tokens
``ce_zero_ablation``        ... with the site set to 0
``ce_loss_recovered``       ``(ce_mean_ablation - ce_sae) / (ce_mean_ablation - ce_clean)``:
                            the hard baseline (the site's mean keeps what every token shares)
``ce_loss_score``           ``(ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean)``:
                            SAELens's ``ce_loss_score`` (zero ablation)
``ce_delta``                ``ce_sae - ce_clean``: the loss the splice costs against clean
``dead_fraction``           features that never fire on these tokens (frequency 0)
``dense_fraction``          features firing on more than ``DENSE`` (10%) of them
==========================  ================================================================

Losses are SAELens's: the mean over predictions made at non-BOS positions (a loss at row
``pos`` predicts token ``pos`` from the tokens before it, as everywhere in llmscope). The
replacement, ablations included, touches non-BOS positions only (SAELens's ``torch.where``
on its ignore mask); BOS activations stay clean. The recovered fractions are ratios, so they
are NaN when the baseline does not raise the loss by at least ``1e-6`` nats.

Example:
    >>> import llmscope
    >>> from llmscope.sae import evaluate
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> from llmscope.sae.train import train_sae
    >>> sae = train_sae(rec, "mlp.0", width=1024, k=16, epochs=1, progress=False)
    >>> m = evaluate(sae, model, stim, progress=False)
    >>> 0 < m.value("fvu") < 1, m.value("l0") <= 16
    (True, True)
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from llmscope.analysis.sparsity import REFERENCE
from llmscope.behaviour import next_token_loss
from llmscope.checks import count, flag
from llmscope.errors import SAEError
from llmscope.progress import progress_bar
from llmscope.result import Result, unit_dataset
from llmscope.sae.model import SAE
from llmscope.stimuli.core import Stimuli, as_stimuli

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from transformer_lens.model_bridge import TransformerBridge

DENSE = 0.1  # a feature firing on more than this fraction of the tokens is dense
BINS = 60  # bars of the activation-frequency histogram

DEFINITIONS = {
    "l0": "mean number of active features per token",
    "explained_variance": "1 - E|x - x_hat|^2 / E|x - E x|^2",
    "fvu": "fraction of variance unexplained (1 - explained_variance)",
    "mse": "E|x - x_hat|^2 per token",
    "cossim": "mean cosine(x, x_hat)",
    "ce_clean": "next-token loss, intact model (nats)",
    "ce_sae": "next-token loss, SAE reconstruction spliced in",
    "ce_mean_ablation": "next-token loss, site set to its mean",
    "ce_zero_ablation": "next-token loss, site set to 0",
    "ce_loss_recovered": "(ce_mean_ablation - ce_sae) / (ce_mean_ablation - ce_clean)",
    "ce_loss_score": "(ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean) (SAELens)",
    "ce_delta": "ce_sae - ce_clean",
    "dead_fraction": "features never active on these tokens",
    "dense_fraction": "features active on more than 10% of the tokens",
    "n_tokens": "tokens measured (BOS out)",
    "n_predictions": "next-token predictions scored",
}


class SAEMetrics(Result):
    """What :func:`evaluate` returns.

    ``.df``: one row per metric (index ``metric``), columns ``value`` and ``definition``
    (the module docstring says each one exactly).

    ``.data``: per feature (dimension ``unit``, labelled ``"sae:mlp.0:12"``, with coordinates
    ``site`` and ``index``): ``frequency`` (fraction of tokens on which it fires) and
    ``mean_activation`` (its mean where it fires, NaN if never).

    ``.meta``: ``sae`` (its name), ``fingerprint`` (the SAE's), ``model``, ``stimuli``,
    ``dense`` (``DENSE``), ``batch_size``. ``.plot()`` is the activation-frequency histogram.
    """

    kind = "evaluate"
    rank_by = None

    def value(self, metric: str) -> float:
        """One metric's value, e.g. ``m.value("fvu")``."""
        if metric not in self.df.index:
            raise SAEError.Unknown(f"unknown metric {metric!r}; these are {list(self.df.index)}.")
        return float(self.df.loc[metric, "value"])

    @property
    def features(self) -> pd.DataFrame:
        """``.data``'s per-feature values as a unit table indexed by ``(site, unit)``, so
        ``m.features.nlargest(5, "frequency")`` passes straight to the feature edits."""
        index = pd.MultiIndex.from_arrays([self.data["site"].to_numpy(), self.data["index"].to_numpy()],
                                          names=["site", "unit"])
        return pd.DataFrame({name: self.data[name].to_numpy() for name in ("frequency", "mean_activation")},
                            index=index)

    def plot(self) -> "go.Figure":
        """The activation-frequency histogram: log10 of each live feature's firing frequency,
        with cortex's commonly estimated ~2% as a reference line (dead features are counted in the title)."""
        import plotly.graph_objects as go

        freq = self.data["frequency"].to_numpy()
        live = np.log10(freq[freq > 0])
        fig = go.Figure(go.Histogram(x=live, nbinsx=BINS, name="features", marker_color="#4c78a8"))
        fig.add_vline(x=math.log10(REFERENCE), line=dict(color="grey", dash="dash"),
                      annotation_text="~2% (cortex, a common estimate)", annotation_position="top right")
        dead = int((freq == 0).sum())
        fig.update_layout(
            title=(f"{html.escape(self.meta['sae'])}: activation frequency of {len(live)} live features "
                   f"({dead} dead, not shown); L0 {self.value('l0'):.1f}, FVU {self.value('fvu'):.3f}"),
            xaxis_title="log10(fraction of tokens on which the feature fires)", yaxis_title="features",
            bargap=0.02, showlegend=False)
        return fig


class _Sums:
    """Running sums over the measured tokens of one SAE."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.n, self.sq, self.err, self.cos, self.l0 = 0, 0.0, 0.0, 0.0, 0.0
        self.total = torch.zeros(d_in, dtype=torch.float64)
        self.active = torch.zeros(d_sae, dtype=torch.float64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)

    def add(self, x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> None:
        x64, e = x.double(), (x - x_hat).double()
        self.n += len(x)
        self.sq += float(x64.pow(2).sum())
        self.total += x64.sum(0)
        self.err += float(e.pow(2).sum())
        self.cos += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).double().sum())
        on = f > 0
        self.l0 += float(on.sum())
        self.active += on.sum(0).double()
        self.act_sum += f.double().sum(0)

    def mean(self) -> torch.Tensor:
        return self.total / self.n

    def variance(self) -> float:
        return self.sq / self.n - float(self.mean().pow(2).sum())


def _ratio(baseline: float, sae: float, clean: float) -> float:
    gap = baseline - clean
    return (baseline - sae) / gap if gap > 1e-6 else float("nan")


def evaluate(sae: SAE, model: "TransformerBridge", stimuli: Stimuli | Any, *, batch_size: int = 8,
             progress: bool = True) -> SAEMetrics:
    """SAELens's metrics of ``sae`` on ``stimuli`` (definitions in the module docstring).

    Runs the model twice per batch: once clean (reading the site), once with three copies of
    the batch stacked, the site spliced with the SAE, mean-ablated and zero-ablated.

    Args:
        sae: an SAE of one of ``model``'s sites.
        model: the model it was trained on (checked by fingerprint).
        stimuli: Stimuli (or text) to measure on; BOS rows are left out.
        batch_size: sequences per forward pass.
        progress: show a progress bar.

    Returns:
        :class:`SAEMetrics`; ``.plot()`` is the activation-frequency histogram.

    Raises:
        SAEError: not an SAE, an SAE of another model, bad arguments, no tokens left without BOS.
    """
    if not isinstance(sae, SAE):
        raise SAEError.Type(f"evaluate() takes an llmscope SAE; got {type(sae).__name__}.")
    sae._check_model(model)
    if sae.hook not in model.hook_dict:
        raise SAEError(f"the SAE's hook {sae.hook!r} is not a hook of this model.")
    stimuli = as_stimuli(model, stimuli)
    batch_size = count(batch_size, "batch_size", error=SAEError)
    flag(progress, "progress", SAEError)
    is_bos = np.zeros(stimuli.ids.shape, dtype=bool)
    t = stimuli.tokens
    is_bos[t.seq.to_numpy(), t.pos.to_numpy()] = t.is_bos.to_numpy(dtype=bool) if "is_bos" in t else False
    is_bos = torch.from_numpy(is_bos)
    real = torch.arange(stimuli.ids.shape[1]) < torch.as_tensor(stimuli.lengths)[:, None]
    site_rows = real & ~is_bos  # the tokens measured and replaced
    scored = torch.zeros_like(real)  # predictions made at non-BOS positions: targets 1.. of real tokens
    scored[:, 1:] = real[:, 1:] & site_rows[:, :-1]
    if not site_rows.any():
        raise SAEError("evaluate() needs tokens other than BOS; these stimuli have none.")

    sums = _Sums(sae.d_in, sae.d_sae)
    losses = {k: [] for k in ("clean", "sae", "mean", "zero")}
    batches = list(stimuli.batches(batch_size))
    bar = progress_bar(total=2 * len(batches), desc=f"evaluate {sae.name}", show=progress)
    caught: dict[str, torch.Tensor] = {}

    def read(act: torch.Tensor, hook: Any) -> torch.Tensor:
        caught["x"] = act.detach()
        return act

    with bar, torch.no_grad():
        for lo, ids in batches:  # pass 1: clean losses, the site's activations, the SAE's code
            sl = (slice(lo, lo + len(ids)), slice(0, ids.shape[1]))
            with model.hooks(fwd_hooks=[(sae.hook, read)]):
                logits = model(ids)
            losses["clean"].append(next_token_loss(logits, ids)[scored[sl]])
            x = caught.pop("x")[site_rows[sl]].float()
            f = sae.encode(x)
            sums.add(x, f, sae.decode(f))
            bar.update(1)
        mean = sums.mean().float()
        for lo, ids in batches:  # pass 2: spliced, mean- and zero-ablated, stacked in one batch
            sl = (slice(lo, lo + len(ids)), slice(0, ids.shape[1]))
            rows, b = site_rows[sl], len(ids)

            def replace(act: torch.Tensor, hook: Any) -> torch.Tensor:
                out = act.clone()
                spliced = sae(act[:b].float()).to(act.dtype)
                out[:b][rows] = spliced[rows]
                out[b:2 * b][rows] = mean.to(act.dtype)
                out[2 * b:][rows] = 0
                return out

            with model.hooks(fwd_hooks=[(sae.hook, replace)]):
                logits = model(ids.repeat(3, 1))
            loss = next_token_loss(logits, ids.repeat(3, 1))
            for i, key in enumerate(("sae", "mean", "zero")):
                losses[key].append(loss[i * b:(i + 1) * b][scored[sl]])
            bar.update(1)
    ce = {k: float(torch.cat(v).double().mean()) for k, v in losses.items()}
    variance = sums.variance()
    ev = 1 - (sums.err / sums.n) / variance if variance > 0 else float("nan")
    freq = (sums.active / sums.n).numpy()
    values = {
        "l0": sums.l0 / sums.n, "explained_variance": ev, "fvu": 1 - ev, "mse": sums.err / sums.n,
        "cossim": sums.cos / sums.n, "ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_mean_ablation": ce["mean"],
        "ce_zero_ablation": ce["zero"], "ce_loss_recovered": _ratio(ce["mean"], ce["sae"], ce["clean"]),
        "ce_loss_score": _ratio(ce["zero"], ce["sae"], ce["clean"]), "ce_delta": ce["sae"] - ce["clean"],
        "dead_fraction": float((freq == 0).mean()), "dense_fraction": float((freq > DENSE).mean()),
        "n_tokens": sums.n, "n_predictions": int(scored.sum()),
    }
    df = pd.DataFrame({"value": values, "definition": {k: DEFINITIONS[k] for k in values}})
    df.index.name = "metric"
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_act = np.where(sums.active.numpy() > 0, sums.act_sum.numpy() / sums.active.numpy(), np.nan)
    index = pd.MultiIndex.from_arrays([[sae.name] * sae.d_sae, np.arange(sae.d_sae)], names=["site", "unit"])
    meta = {"sae": sae.name, "fingerprint": sae.fingerprint, "model": str(model.cfg.model_name),
            "stimuli": stimuli.name, "dense": DENSE, "batch_size": batch_size}
    return SAEMetrics(df, meta, unit_dataset(index, {"frequency": freq, "mean_activation": mean_act}))


__all__ = ["evaluate", "SAEMetrics", "DEFINITIONS"]
