"""Seed 003 on the organism, with ground truth: do an SAE's features match the grammar's parts
of speech better than random directions, and than single neurons? Does splicing the SAE in
keep the organism's card facts? Is there a feature for "inside a repeated span"?

Every unit, feature, neuron or random direction, gets the same rule (llmscope.sae.scoring):
the F1-optimal threshold and polarity on the training documents, scored on held-out ones.
Training is deterministic on one thread, so the measured numbers are pinned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmscope
from llmscope.interventions import intervene
from llmscope.behaviour import logit_diff
from llmscope.sae import scoring
from llmscope.sae.edits import splice
from llmscope.sae.features import record_features
from llmscope.sae.train import train_sae
from llmscope.stimuli import agreement, grammar

pytestmark = pytest.mark.slow  # two SAEs trained (~25 s each on one busy core) and scored

# Measured by test_features_beat_random_directions_for_every_pos_class (one thread): the best
# feature's held-out F1 against the best single mlp.0 neuron's. Features win on ADP only.
FEATURES_WIN = {"ADJ": False, "ADP": True, "ADV": False, "CCONJ": False, "DET": False, "NOUN": False,
                "PRON": False, "PUNCT": False, "VERB": False}


@pytest.fixture(scope="module")
def lab(organism):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    train_rec = llmscope.record(organism, grammar(organism, n_docs=200, seed=1), ["mlp.0", "resid.2"],
                                progress=False)
    test_stim = grammar(organism, n_docs=100, seed=2)
    test_rec = llmscope.record(organism, test_stim, ["mlp.0", "resid.2"], progress=False)
    # k = 128 of 512: with k = 8..32 the features split each class by word (absorption) and
    # lose to random directions on NOUN, DET and VERB (measured; see the module's note)
    pos_sae = train_sae(train_rec, "mlp.0", width=512, k=128, epochs=3, batch_size=512, progress=False)
    repeat_sae = train_sae(train_rec, "resid.2", width=1024, k=32, epochs=3, batch_size=512, progress=False)
    yield dict(test_rec=test_rec, test_stim=test_stim, pos_sae=pos_sae, repeat_sae=repeat_sae)
    torch.set_num_threads(before)


def _families(lab, sae, site):
    rec = lab["test_rec"]
    keep = ~rec.tokens.is_bos.to_numpy()
    X = rec.responses(site)[keep]
    F = record_features(sae, rec, progress=False).responses(sae.name)[keep]
    R = (X - X.mean(0)) @ scoring.random_directions(X.shape[1], F.shape[1], seed=0)  # as many as features
    train = rec.tokens.seq.to_numpy()[keep] < 70  # thresholds on 70 documents, scored on 30 others
    return {"features": F, "basis": X, "random": R}, rec.tokens[keep], train


def test_features_beat_random_directions_for_every_pos_class(lab):
    families, tokens, train = _families(lab, lab["pos_sae"], "mlp.0")
    table = scoring.compare(families, tokens.pos_tag.to_numpy(), train)["f1_test"].unstack()
    assert (table["features"] > table["random"]).all(), table
    assert (table["features"] > table["basis"]).to_dict() == FEATURES_WIN, table  # "basis": mlp.0's neurons


def test_a_repeated_span_feature_at_resid_2(lab):
    """The induction head (1.0) writes into resid.2. The best feature detects "inside a
    repeated span" (is_repeat) well, better than any residual dimension, but not better than
    the best of as many random directions: the signal is one broad direction of the stream."""
    families, tokens, train = _families(lab, lab["repeat_sae"], "resid.2")
    table = scoring.compare(families, tokens.is_repeat.to_numpy(), train, classes=[True])["f1_test"].unstack()
    feature, basis, random = table.loc[True, "features"], table.loc[True, "basis"], table.loc[True, "random"]
    assert feature > 0.8 and feature > basis + 0.03, table
    assert feature < random, table  # measured: 0.854 against 0.869


def test_splicing_the_sae_keeps_the_card_facts(lab, organism):
    """Agreement accuracy drops by at most 0.05 (and stays above the card's 0.90); the induction
    loss gap (fresh - repeated tokens) keeps at least 80% of its clean size."""
    pairs = agreement(organism, n=300, seed=2025)
    target = pairs.tokens.is_target.to_numpy(dtype=bool)
    stim = lab["test_stim"]
    rows = stim.tokens
    repeat = rows.is_repeat.to_numpy() & (rows.repeat_onset.to_numpy() == False)  # noqa: E712 (copies already under way)
    fresh = ~rows.is_repeat.to_numpy() & (rows.pos.to_numpy() > 1)

    def facts():
        loss = llmscope.token_loss(organism, stim).df.loss.to_numpy()
        with torch.no_grad():
            accuracy = float((logit_diff(organism(pairs.ids), pairs)[target] > 0).mean())
        return accuracy, np.nanmean(loss[fresh]) - np.nanmean(loss[repeat])

    clean_acc, clean_gap = facts()
    for sae in (lab["pos_sae"], lab["repeat_sae"]):
        with intervene(organism, splice(sae)):
            acc, gap = facts()
        assert acc >= max(0.90, clean_acc - 0.05), (sae, acc, clean_acc)
        assert gap >= 0.8 * clean_gap, (sae, gap, clean_gap)
