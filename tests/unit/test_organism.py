"""The committed organism grammar-2l: its files, its card, and its facts re-measured.

Nothing is trained here. The facts are recomputed on the same held-out seeds as the card's,
so they match up to float noise; the stated tolerance is ACCURACY_TOL (absolute) for
accuracies and scores, LOSS_TOL (relative) for losses, and every threshold must still pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import llmscope
from llmscope.organisms import THRESHOLDS, Grammar, failures, read_card, verify
from llmscope.stimuli.toy_grammar import TAGS

NAME = "grammar-2l"
FOLDER = Path(llmscope.organisms.__file__).parent / NAME
ACCURACY_TOL, LOSS_TOL = 0.02, 0.05
FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
         "tokenizer_config.json", "card.json"}


@pytest.fixture(scope="module")
def card() -> dict:
    return read_card(NAME)


@pytest.fixture(scope="module")
def model():
    return llmscope.load(NAME)


@pytest.fixture(scope="module")
def facts() -> dict:
    return verify(NAME, write=False)


def test_folder_is_small_and_pickle_free():
    files = {p.name for p in FOLDER.iterdir()}
    assert files == FILES
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) <= 10 * 2**20


def test_card_records_training(card):
    tr = card["training"]
    assert tr["config"]["n_layer"] == 2 and tr["config"]["d_model"] == 128
    assert tr["tokens_seen"] >= tr["config"]["tokens"]
    assert tr["wall_time_s"] <= 20 * 60
    onset = tr["induction_onset"]
    assert 0 < onset["tokens"] < tr["tokens_seen"]
    assert onset["repeat_loss_at"] < onset["repeat_loss_before"]
    assert card["thresholds"] == THRESHOLDS and failures(card["facts"]) == []


def test_tokenizes_words(model):
    g = Grammar.from_config(read_card(NAME)["grammar"])
    text = "near the trees , the dog that chases the cats runs ."
    assert model.to_tokens(text)[0].tolist() == [g.vocab.index(w) for w in ["<bos>", *text.split()]]


def test_facts_pass_their_thresholds(facts):
    assert failures(facts) == []


def test_facts_match_the_card(facts, card):
    old = card["facts"]
    for key in ("held_out", "fresh", "repeat", "copying_ratio"):
        assert facts["loss"][key] == pytest.approx(old["loss"][key], rel=LOSS_TOL), key
    assert set(facts["loss"]["by_pos"]) == set(old["loss"]["by_pos"]) == set(TAGS) - {"BOS"}
    for tag, loss in old["loss"]["by_pos"].items():
        assert facts["loss"]["by_pos"][tag] == pytest.approx(loss, rel=LOSS_TOL), tag
    for key in ("accuracy", "accuracy_attractor"):
        assert facts["agreement"][key] == pytest.approx(old["agreement"][key], abs=ACCURACY_TOL)
    for kind in ("previous_token", "induction"):
        assert facts["heads"][f"{kind}_head"] == old["heads"][f"{kind}_head"]
        assert facts["heads"][f"{kind}_score"] == pytest.approx(old["heads"][f"{kind}_score"], abs=ACCURACY_TOL)
    for key in ("repeat_loss_rise", "fresh_loss_rise"):
        assert facts["lesion"][key] == pytest.approx(old["lesion"][key], rel=LOSS_TOL, abs=0.01)
    for key in ("accuracy", "ambiguous_accuracy", "word_baseline_ambiguous", "shuffled_accuracy"):
        assert facts["pos_decoding"][key] == pytest.approx(old["pos_decoding"][key], abs=ACCURACY_TOL), key


def test_loss_by_pos_carries_the_predicted_tokens_tag(facts, card, model):
    """`by_pos` puts the loss of predicting a token under that token's own tag, as
    TransformerLens aligns it. Grouped by the tag of the token before, the figures differ by
    up to 2.5 nats (predicting a DET costs 1.78, predicting after one 3.78; PUNCT 0.46 and
    2.98; NOUN 3.72 and 2.13)."""
    held = facts["held_out"]
    tokens = Grammar.from_config(card["grammar"]).sample(held["n_docs"], seed=held["seed"],
                                                         max_tokens=model.cfg.n_ctx)
    ids = np.zeros((held["n_docs"], model.cfg.n_ctx), dtype=np.int64)  # <pad> on the right
    ids[tokens.doc, tokens.pos] = tokens.token
    with torch.no_grad():
        # [doc, pos, vocab]: the prediction of token pos + 1
        logp = model(torch.from_numpy(ids)).log_softmax(-1).numpy()
    t = tokens[tokens.pos > 0]
    loss = -logp[t.doc, t.pos - 1, t.token]
    by_target = pd.Series(loss).groupby(t.pos_tag.values).mean()
    assert facts["loss"]["by_pos"] == pytest.approx(by_target.to_dict(), abs=1e-3)
    assert by_target["PUNCT"] < by_target["DET"] < by_target["NOUN"]


def test_lesion_leaves_the_model_pristine(model, facts):
    tokens = model.to_tokens("the dog runs . the dog runs .")
    before = model(tokens)
    layer, head = facts["lesion"]["head"]

    def zero(z, hook):
        z[:, :, head, :] = 0
        return z

    assert not torch.equal(model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)]), before)
    assert torch.equal(model(tokens), before)
