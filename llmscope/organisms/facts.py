"""The measured facts of an organism, recomputed from its weights on held-out text with the lab's
own tools, so that the card also tests them.

Facts: held-out loss per part of speech and the in-context copying ratio (the per-token loss of
:func:`llmscope.behaviour.loss`); agreement accuracy on minimal pairs
(:func:`llmscope.stimuli.agreement`, :func:`llmscope.behaviour.logit_diff`); previous-token and
induction heads by attention scores (:func:`llmscope.analysis.heads.localize_heads`), the
induction head confirmed by a lesion (the engine's :func:`llmscope.engine.lesions.run`); part of
speech decoded from MLP neurons (a :func:`llmscope.record` recording), against a word-identity
baseline and a shuffled-label control. `failures` lists the facts that miss their `THRESHOLDS`.

Two measures stay independent of the lab's, deliberately:

* the induction score reads the grammar's gold copy sources (``repeat_of``: attention from a
  copied token to the token after its source), which ``localize_heads``, working from token
  ids, cannot see (its induction score counts every earlier copy of a token);
* the POS decoders are one fixed split by document (the first 70% fit, the rest test), fit
  once per layer, as the card defines them: ``decode``'s grouped cross-validation costs about
  eight times as much here, and reproduces these figures within the card's tolerance.

Example:
    >>> from llmscope.organisms import failures, verify
    >>> facts = verify("grammar-2l", write=False)          # doctest: +SKIP
    >>> failures(facts)                                    # doctest: +SKIP
    []
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from llmscope.analysis.heads import localize_heads
from llmscope.behaviour import logit_diff, loss
from llmscope.engine import lesions
from llmscope.errors import ModelNotAvailable
from llmscope.progress import progress_bar
from llmscope.recording import record
from llmscope.sites import resolve_units
from llmscope.stimuli import agreement as agreement_pairs, grammar as grammar_docs
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.toy_grammar import PAD_ID, Grammar, Rates, predictable_repeats

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HERE = Path(__file__).parent
HELD_OUT_SEED, PAIRS_SEED, SHUFFLE_SEED = 2024, 2025, 0
N_DOCS, N_PAIRS, BATCH = 200, 1000, 50
TRAIN_SHARE = 0.7  # documents used to fit the POS decoders; the rest test them
MAX_ITER = 100  # L-BFGS steps of every decoder; true labels converge in fewer

# Head scores are mean attention weights (chance is about 1 / position): a head is found
# when the majority of its attention goes to its target.
THRESHOLDS = {
    "agreement_accuracy": 0.90,  # P(good verb) > P(bad verb) on held-out minimal pairs
    "previous_token_score": 0.5,  # mean attention to the previous token
    "induction_score": 0.5,  # mean attention to the token after the current token's earlier copy
    "lesion_ratio": 2.0,  # loss rise on repeats >= this x the rise on fresh tokens
    "pos_accuracy": 0.95,  # logistic regression from one MLP layer to POS, held-out documents
    "ambiguous_margin": 0.10,  # ... on ambiguous forms, above the word-identity baseline
}


def organism_folder(name: str | Path) -> Path:
    """The folder of a bundled organism (`"grammar-2l"`) or a model folder path."""
    folder = Path(name) if Path(name).is_dir() else HERE / str(name)
    if not (folder / "card.json").is_file():
        bundled = sorted(p.parent.name for p in HERE.glob("*/card.json"))
        raise ModelNotAvailable(f"{name!r} is not an organism (no card.json); bundled: {bundled}")
    return folder


def read_card(name: str | Path) -> dict:
    """The organism's model card: `grammar` (its config), `training` (config, tokens seen,
    wall time, losses, the induction onset and the training curve), `facts`, `thresholds`.

    Example:
        >>> from llmscope.organisms import read_card
        >>> read_card("grammar-2l")["training"]["config"]["n_layer"]
        2
    """
    return json.loads((organism_folder(name) / "card.json").read_text())


def verify(name: str | Path, write: bool = True, n_docs: int = N_DOCS,
           n_pairs: int = N_PAIRS) -> dict:
    """Recompute an organism's facts on held-out documents and minimal pairs (fixed seeds,
    so the result is reproducible); with `write`, store them and `THRESHOLDS` in its card.

    Example:
        >>> from llmscope.organisms import THRESHOLDS, verify
        >>> facts = verify("grammar-2l", write=False)                # doctest: +SKIP
        >>> facts["agreement"]["accuracy"] >= THRESHOLDS["agreement_accuracy"]  # doctest: +SKIP
        True
    """
    from llmscope.models import load

    folder = organism_folder(name)
    card = read_card(folder)
    facts = measure(load(str(folder)), Grammar.from_config(card["grammar"]), n_docs, n_pairs)
    if write:
        card["facts"] = facts
        card["thresholds"] = THRESHOLDS
        (folder / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    return facts


def failures(facts: dict) -> list[str]:
    """The facts that miss their thresholds, one line each; empty when all pass.

    Example:
        >>> from llmscope.organisms import failures, read_card
        >>> failures(read_card("grammar-2l")["facts"])
        []
    """
    t, bad = THRESHOLDS, []
    agree = facts["agreement"]["accuracy"]
    if agree < t["agreement_accuracy"]:
        bad.append(f"agreement accuracy {agree:.3f} < {t['agreement_accuracy']}")
    heads = facts["heads"]
    for kind in ("previous_token", "induction"):
        if heads[f"{kind}_score"] < t[f"{kind}_score"]:
            bad.append(f"best {kind} head scores {heads[f'{kind}_score']:.3f} < {t[f'{kind}_score']}")
    les = facts["lesion"]
    if not (les["repeat_loss_rise"] > 0 and les["repeat_loss_rise"] >= t["lesion_ratio"] * les["fresh_loss_rise"]):
        bad.append(f"lesion of {les['head']}: repeat rise {les['repeat_loss_rise']:.3f} is not "
                   f">= {t['lesion_ratio']} x fresh rise {les['fresh_loss_rise']:.3f}")
    pos = facts["pos_decoding"]
    if pos["accuracy"] < t["pos_accuracy"]:
        bad.append(f"POS decoding accuracy {pos['accuracy']:.3f} < {t['pos_accuracy']}")
    margin = pos["ambiguous_accuracy"] - pos["word_baseline_ambiguous"]
    if margin < t["ambiguous_margin"]:
        bad.append(f"POS on ambiguous forms beats the word baseline by {margin:.3f} < {t['ambiguous_margin']}")
    if pos["shuffled_accuracy"] > pos["majority_rate"]:
        bad.append(f"shuffled-label decoder {pos['shuffled_accuracy']:.3f} > majority rate {pos['majority_rate']:.3f}")
    return bad


def measure(model: TransformerBridge, grammar: Grammar, n_docs: int = N_DOCS,
            n_pairs: int = N_PAIRS) -> dict:
    """All facts for a `model` trained on `grammar`: `loss`, `agreement`, `heads`, `lesion`,
    `pos_decoding` (see the module docstring), and the `held_out` set they were measured on."""
    if grammar.rates != Rates():
        raise ModelNotAvailable("facts are measured on llmscope.stimuli.grammar's documents, which the toy grammar "
                                f"writes with its default rates; this organism's grammar has rates {grammar.rates}.")
    docs = grammar_docs(model, n_docs=n_docs, seed=HELD_OUT_SEED, max_tokens=model.cfg.n_ctx,
                        grammar_seed=grammar.seed)
    pairs = agreement_pairs(model, n=n_pairs, seed=PAIRS_SEED, grammar_seed=grammar.seed)
    heads = _heads(model, docs)
    t = docs.tokens
    return {
        "held_out": {"n_docs": n_docs, "n_tokens": int((t["pos"] > 0).sum()), "seed": HELD_OUT_SEED},
        "loss": _losses(t, _per_row(model, docs, loss)),
        "agreement": _agreement(pairs, _per_row(model, pairs, logit_diff)),
        "heads": heads,
        "lesion": _lesion(model, docs, heads["induction_head"]),
        "pos_decoding": _pos_decoding(t, record(model, docs, [f"mlp.{L}" for L in range(model.cfg.n_layers)],
                                                dtype="float32", progress=False)),
    }


def _per_row(model: TransformerBridge, stimuli: Stimuli, metric) -> np.ndarray:
    """A behaviour metric (``loss``, ``logit_diff``) per trial row of ``stimuli``, in batches."""
    out = []
    with torch.no_grad():
        for lo, _ in progress_bar(list(stimuli.batches(BATCH)), desc=metric.__name__, leave=False):
            part = stimuli.select_seqs(np.arange(lo, min(lo + BATCH, stimuli.n_seqs)))
            out.append(metric(model(part.ids), part))
    return np.concatenate(out)


def attention_scores(pattern: torch.Tensor, ids: torch.Tensor, repeat_of: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Previous-token and induction attention of one layer's heads, summed over queries.

    Args:
        pattern: attention `[batch, head, query, key]` (hook `blocks.L.attn.hook_pattern`).
        ids: token ids `[batch, pos]`, right-padded with `<pad>`.
        repeat_of: `[batch, pos]`, the position each copied token copies, else -1.
    Returns:
        sums `[2, head]` (attention to the previous token; attention from a copied token to the
        token after its source, where the copy continues) and the two query counts `[2]`.
    """
    src = torch.from_numpy(repeat_of)
    b, q = torch.nonzero(ids[:, 1:] != PAD_ID, as_tuple=True)
    q = q + 1
    nxt = torch.cat([src[:, 1:], torch.full_like(src[:, :1], -1)], dim=1)
    bi, qi = torch.nonzero((src >= 0) & (nxt == src + 1), as_tuple=True)
    sums = torch.stack([pattern[b, :, q, q - 1].sum(0), pattern[bi, :, qi, src[bi, qi] + 1].sum(0)])
    return sums.float().numpy(), np.array([len(b), len(bi)])


def _induction(model: TransformerBridge, docs: Stimuli) -> np.ndarray:
    """Each head's induction score ``[layer, head]`` on the grammar's gold copies (see the module
    docstring: deliberately not ``localize_heads``'s)."""
    t, cfg = docs.tokens, model.cfg
    repeat_of = np.full(docs.ids.shape, -1)
    repeat_of[t["seq"].to_numpy(), t["pos"].to_numpy()] = t["repeat_of"].to_numpy()
    sums, n = np.zeros((cfg.n_layers, cfg.n_heads)), 0
    with torch.no_grad():
        for lo, ids in progress_bar(list(docs.batches(BATCH)), desc="induction", leave=False):
            _, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("attn.hook_pattern"))
            for layer in range(cfg.n_layers):
                s, c = attention_scores(cache[f"blocks.{layer}.attn.hook_pattern"], ids,
                                        repeat_of[lo:lo + len(ids), : ids.shape[1]])
                sums[layer] += s[1]
            n += c[1]
    return sums / n


def _heads(model: TransformerBridge, docs: Stimuli) -> dict:
    """Per-head previous-token scores (``localize_heads``, BOS as a key counted, as the card
    defines them) and induction scores, and the best head of each kind."""
    scores = localize_heads(model, docs, include_bos=True, progress=False).df
    previous = scores["previous_token"].to_numpy().reshape(model.cfg.n_layers, model.cfg.n_heads)
    out = {}
    for kind, grid in (("previous_token", previous), ("induction", _induction(model, docs))):
        best = np.unravel_index(grid.argmax(), grid.shape)
        out[kind] = {f"{l}.{h}": round(float(x), 4) for (l, h), x in np.ndenumerate(grid)}
        out[f"{kind}_head"] = [int(best[0]), int(best[1])]
        out[f"{kind}_score"] = round(float(grid[best]), 4)
    return out


def _lesion(model: TransformerBridge, docs: Stimuli, head: list[int]) -> dict:
    """Zero-lesion ``head`` ([layer, head]) on the engine and compare the loss rises on
    predictable repeats and on fresh tokens."""
    t = docs.tokens
    repeat = predictable_repeats(t["repeat_of"].to_numpy())
    fresh = ~t["is_repeat"].to_numpy(dtype=bool) & (t["pos"].to_numpy() > 0)
    battery = lesions.Battery([lesions.Behaviour("repeat", docs, "loss", repeat),
                               lesions.Behaviour("fresh", docs, "loss", fresh)])
    harm = lesions.run(model, battery, [resolve_units(model, (f"attn.{head[0]}", [head[1]]))],
                       progress=False).harm().iloc[1]
    return {"head": head, "repeat_loss_rise": round(float(harm["repeat"]), 4),
            "fresh_loss_rise": round(float(harm["fresh"]), 4)}


def _losses(tokens: pd.DataFrame, loss: np.ndarray) -> dict:
    """Held-out loss overall, per POS class (the predicted token's, as in TransformerLens), and
    on repeats against their first occurrence. `loss` is aligned with the rows of `tokens`."""
    pos, repeat_of = tokens["pos"].to_numpy(), tokens["repeat_of"].to_numpy()
    real = pos > 0
    repeat = predictable_repeats(repeat_of)
    rows = np.flatnonzero(repeat)
    first = loss[rows - pos[rows] + repeat_of[rows]]  # the copied token's own row, earlier in its document
    fresh = real & ~tokens["is_repeat"].to_numpy(dtype=bool)
    by_pos = pd.Series(loss[real]).groupby(tokens["pos_tag"].to_numpy()[real]).mean()
    return {"held_out": round(float(loss[real].mean()), 4),
            "by_pos": {k: round(float(v), 4) for k, v in by_pos.items()},
            "fresh": round(float(loss[fresh].mean()), 4),
            "repeat": round(float(loss[repeat].mean()), 4),
            "repeat_first_occurrence": round(float(first.mean()), 4),
            "copying_ratio": round(float(loss[repeat].mean() / first.mean()), 4)}


def _agreement(pairs: Stimuli, diff: np.ndarray) -> dict:
    """Accuracy (logit of the agreeing verb above the other's) and mean P(good | good or bad) on
    minimal pairs, from each pair's logit difference at its target row."""
    target = pairs.tokens["is_target"].to_numpy(dtype=bool)
    diff, att = diff[target], pairs.tokens["attractor"].to_numpy(dtype=bool)[target]
    correct = diff > 0
    return {"n_pairs": int(target.sum()), "accuracy": round(float(correct.mean()), 4),
            "accuracy_attractor": round(float(correct[att].mean()), 4),
            "accuracy_no_attractor": round(float(correct[~att].mean()), 4),
            "p_correct": round(float((1 / (1 + np.exp(-diff))).mean()), 4)}


def _pos_decoding(tokens: pd.DataFrame, rec) -> dict:
    """Logistic regression from each MLP layer's neurons (recorded) to POS, fit and tested on
    different documents; the best layer is compared with the word-identity baseline and shuffled
    labels."""
    real = tokens["pos"].to_numpy() > 0
    seq = tokens["seq"].to_numpy()
    train = real & (seq < TRAIN_SHARE * (seq.max() + 1))
    test = real & ~train
    y, amb = tokens["pos_tag"].to_numpy(), tokens["ambiguous"].to_numpy(dtype=bool)

    def fit(x: np.ndarray, labels: np.ndarray):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
        # One BLAS thread: these matrices are small, and spinning threads on busy cores cost 4x.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)  # shuffled labels never converge
            return clf.fit(x[train], labels[train]).predict(x[test])

    neurons = {int(site.split(".")[1]): rec.responses(site) for site in rec.sites}
    layers = {}
    for layer, x in progress_bar(neurons.items(), desc="decode POS", leave=False):
        pred = fit(x, y)
        layers[layer] = {"accuracy": round(float((pred == y[test]).mean()), 4),
                         "ambiguous_accuracy": round(float((pred == y[test])[amb[test]].mean()), 4)}
    best = max(layers, key=lambda k: layers[k]["accuracy"])
    shuffled_y = y.copy()
    shuffled_y[train] = np.random.default_rng(SHUFFLE_SEED).permutation(y[train])
    shuffled = fit(neurons[best], shuffled_y)
    words = tokens["word"].to_numpy()
    most = pd.Series(y[train]).groupby(words[train]).agg(lambda s: s.value_counts().index[0])
    fallback = pd.Series(y[train]).value_counts().index[0]
    test_amb = test & amb
    baseline = pd.Series(words[test_amb]).map(most).fillna(fallback).values == y[test_amb]
    return {"layer": int(best), **layers[best],
            "word_baseline_ambiguous": round(float(baseline.mean()), 4),
            "shuffled_accuracy": round(float((shuffled == y[test]).mean()), 4),
            "majority_rate": round(float(pd.Series(y[test]).value_counts(normalize=True).iloc[0]), 4),
            "by_layer": {str(k): v for k, v in layers.items()},
            "n_train": int(train.sum()), "n_test": int(test.sum()), "n_test_ambiguous": int(test_amb.sum())}
