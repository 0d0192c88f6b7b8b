"""The measured facts of an organism, recomputed from its weights on held-out text.

Facts: held-out loss per part of speech and the in-context copying ratio; agreement accuracy
on minimal pairs; previous-token and induction heads by attention scores, confirmed by a
lesion; part of speech decoded from MLP neurons, against a word-identity baseline and a
shuffled-label control. `failures` lists the facts that miss their `THRESHOLDS`.

Example:
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
from llmscope.progress import progress_bar

from llmscope.errors import ModelNotAvailable
from llmscope.behaviour import next_token_loss
from llmscope.stimuli.toy_grammar import PAD_ID, Grammar, predictable_repeats

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
        >>> read_card("grammar-2l")["training"]["config"]["n_layer"]
        2
    """
    return json.loads((organism_folder(name) / "card.json").read_text())


def verify(name: str | Path, write: bool = True, n_docs: int = N_DOCS,
           n_pairs: int = N_PAIRS) -> dict:
    """Recompute an organism's facts on held-out documents and minimal pairs (fixed seeds,
    so the result is reproducible); with `write`, store them and `THRESHOLDS` in its card.

    Example:
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
    tokens = grammar.sample(n_docs, seed=HELD_OUT_SEED, max_tokens=model.cfg.n_ctx)
    run = _Run(model, tokens)
    heads = run.head_scores()
    return {
        "held_out": {"n_docs": n_docs, "n_tokens": int((tokens.pos > 0).sum()), "seed": HELD_OUT_SEED},
        "loss": _losses(tokens, run.loss),
        "agreement": agreement(model, grammar.minimal_pairs(n_pairs, seed=PAIRS_SEED)),
        "heads": heads,
        "lesion": run.lesion(heads["induction_head"]),
        "pos_decoding": _pos_decoding(tokens, run.neurons),
    }


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


class _Run:
    """One pass over held-out documents: per-token loss, head scores, MLP neurons.

    Per-token arrays (`loss`, `neurons[layer]`) are aligned with the rows of `tokens`."""

    def __init__(self, model: TransformerBridge, tokens: pd.DataFrame):
        self.model, self.tokens = model, tokens
        n_docs, n_ctx = int(tokens.doc.max()) + 1, model.cfg.n_ctx
        self.doc, self.pos = tokens.doc.to_numpy(copy=True), tokens.pos.to_numpy(copy=True)
        self.ids = torch.full((n_docs, n_ctx), PAD_ID, dtype=torch.long)
        self.ids[self.doc, self.pos] = torch.from_numpy(tokens.token.to_numpy(copy=True))
        self.repeat_of = np.full((n_docs, n_ctx), -1)
        self.repeat_of[self.doc, self.pos] = tokens.repeat_of.values
        self._record()

    def _batches(self, desc: str):
        return progress_bar([slice(i, i + BATCH) for i in range(0, len(self.ids), BATCH)], desc=desc, leave=False)

    def _rows(self, matrix: torch.Tensor) -> np.ndarray:
        """`[doc, pos, ...]` values at the rows of `tokens`."""
        return matrix[self.doc, self.pos].numpy()

    @torch.no_grad()
    def _record(self) -> None:
        cfg = self.model.cfg
        loss = torch.zeros(self.ids.shape)
        neurons = torch.zeros((cfg.n_layers, *self.ids.shape, cfg.d_mlp))
        sums, counts = np.zeros((2, cfg.n_layers, cfg.n_heads)), np.zeros(2)
        names = lambda n: n.endswith("attn.hook_pattern") or n.endswith("mlp.hook_post")
        for sl in self._batches("record"):
            logits, cache = self.model.run_with_cache(self.ids[sl], names_filter=names)
            loss[sl] = next_token_loss(logits, self.ids[sl])
            for layer in range(cfg.n_layers):
                neurons[layer, sl] = cache[f"blocks.{layer}.mlp.hook_post"]
                s, c = attention_scores(cache[f"blocks.{layer}.attn.hook_pattern"], self.ids[sl],
                                        self.repeat_of[sl])
                sums[:, layer] += s
            counts += c
        self.loss = self._rows(loss)
        self.neurons = {layer: self._rows(neurons[layer]) for layer in range(cfg.n_layers)}
        self.scores = sums / counts[:, None, None]  # [previous-token / induction, layer, head]

    def head_scores(self) -> dict:
        """Per-head previous-token and induction scores, and the best head of each kind."""
        out = {}
        for kind, scores in zip(("previous_token", "induction"), self.scores):
            best = np.unravel_index(scores.argmax(), scores.shape)
            out[kind] = {f"{l}.{h}": round(float(x), 4) for (l, h), x in np.ndenumerate(scores)}
            out[f"{kind}_head"] = [int(best[0]), int(best[1])]
            out[f"{kind}_score"] = round(float(scores[best]), 4)
        return out

    @torch.no_grad()
    def lesion(self, head: list[int]) -> dict:
        """Zero-ablate `head` ([layer, head]) and compare loss rises on repeats and fresh text."""
        layer, h = head

        def zero(z, hook):  # z: [batch, pos, head, d_head]
            z[:, :, h, :] = 0
            return z

        loss = torch.zeros(self.ids.shape)
        for sl in self._batches("lesion"):
            logits = self.model.run_with_hooks(self.ids[sl], fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])
            loss[sl] = next_token_loss(logits, self.ids[sl])
        rise = self._rows(loss) - self.loss
        repeat = predictable_repeats(self.tokens.repeat_of.values)
        fresh = ~self.tokens.is_repeat.values & (self.pos > 0)
        return {"head": head, "repeat_loss_rise": round(float(rise[repeat].mean()), 4),
                "fresh_loss_rise": round(float(rise[fresh].mean()), 4)}


def _losses(tokens: pd.DataFrame, loss: np.ndarray) -> dict:
    """Held-out loss overall, per POS class (the predicted token's, as in TransformerLens), and
    on repeats against their first occurrence. `loss` is aligned with the rows of `tokens`."""
    real = tokens.pos.values > 0
    repeat = predictable_repeats(tokens.repeat_of.values)
    first = loss[tokens.index.values[repeat] - tokens.pos.values[repeat] + tokens.repeat_of.values[repeat]]
    by_pos = pd.Series(loss[real]).groupby(tokens.pos_tag.values[real]).mean()
    return {"held_out": round(float(loss[real].mean()), 4),
            "by_pos": {k: round(float(v), 4) for k, v in by_pos.items()},
            "fresh": round(float(loss[real & ~tokens.is_repeat.values].mean()), 4),
            "repeat": round(float(loss[repeat].mean()), 4),
            "repeat_first_occurrence": round(float(first.mean()), 4),
            "copying_ratio": round(float(loss[repeat].mean() / first.mean()), 4)}


def agreement(model: TransformerBridge, pairs: pd.DataFrame) -> dict:
    """Accuracy (P(good) > P(bad)) and mean P(good | good or bad) on minimal pairs."""
    tok = model.tokenizer
    good = torch.tensor(tok.convert_tokens_to_ids(list(pairs.good)))
    bad = torch.tensor(tok.convert_tokens_to_ids(list(pairs.bad)))
    diff = torch.zeros(len(pairs))
    with torch.no_grad():
        for start in range(0, len(pairs), 4 * BATCH):
            ids = model.to_tokens(list(pairs.prefix[start:start + 4 * BATCH]))
            last = (ids != tok.pad_token_id).sum(1) - 1
            logits = model(ids)[torch.arange(len(ids)), last]
            sl = slice(start, start + len(ids))
            diff[sl] = logits[torch.arange(len(ids)), good[sl]] - logits[torch.arange(len(ids)), bad[sl]]
    correct = (diff > 0).numpy()
    att = pairs.attractor.values
    return {"n_pairs": len(pairs), "accuracy": round(float(correct.mean()), 4),
            "accuracy_attractor": round(float(correct[att].mean()), 4),
            "accuracy_no_attractor": round(float(correct[~att].mean()), 4),
            "p_correct": round(float(torch.sigmoid(diff).mean()), 4)}


def _pos_decoding(tokens: pd.DataFrame, neurons: dict[int, np.ndarray]) -> dict:
    """Logistic regression from each MLP layer's neurons to POS, fit and tested on different
    documents; the best layer is compared with the word-identity baseline and shuffled labels."""
    real = tokens.pos.values > 0
    train = real & (tokens.doc.values < TRAIN_SHARE * (tokens.doc.max() + 1))
    test = real & ~train
    y, amb = tokens.pos_tag.values, tokens.ambiguous.values

    def fit(x: np.ndarray, labels: np.ndarray):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
        # One BLAS thread: these matrices are small, and spinning threads on busy cores cost 4x.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)  # shuffled labels never converge
            return clf.fit(x[train], labels[train]).predict(x[test])

    layers = {}
    for layer, x in progress_bar(neurons.items(), desc="decode POS", leave=False):
        pred = fit(x, y)
        layers[layer] = {"accuracy": round(float((pred == y[test]).mean()), 4),
                         "ambiguous_accuracy": round(float((pred == y[test])[amb[test]].mean()), 4)}
    best = max(layers, key=lambda k: layers[k]["accuracy"])
    shuffled_y = y.copy()
    shuffled_y[train] = np.random.default_rng(SHUFFLE_SEED).permutation(y[train])
    shuffled = fit(neurons[best], shuffled_y)
    words = tokens.word.values
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
