"""Paradigms: labels line up with the tokens the model sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmscope
from llmscope.stimuli import agreement, from_texts, grammar, induction, ioi, sentences, templates
from llmscope.stimuli.induction import ordinary_vocab
from llmscope.stimuli.subwords import encode_words, prefix_ids, single_token_id
from llmscope.stimuli.templates import LEXICON, TEMPLATES
from llmscope.tokens import PromptError

SENTENCE = "The quick brown fox, unbelievably, jumped over 2 lazy dogs."


def seq_ids(stim, i: int) -> list[int]:
    return stim.ids[i, : stim.lengths[i]].tolist()


# ---------------------------------------------------------------- from_texts


@pytest.mark.parametrize("name", ["tiny", pytest.param("smol", marks=pytest.mark.smollm2)])
def test_from_texts_ids_equal_to_tokens(name, request):
    model = request.getfixturevalue(name)
    texts = (["w1 w2 w3", "w4  w5 w6 w7", "w8"] if name == "tiny"
             else [SENTENCE, "She didn't  stop.\n\nNever!", "Paris"])
    for tag in (True, False):
        stim = from_texts(model, texts, tag=tag)
        assert stim.n_seqs == len(texts)
        for i, text in enumerate(texts):
            assert seq_ids(stim, i) == model.to_tokens(text, truncate=False)[0].tolist()
        assert ("pos_tag" in stim.tokens) == tag
    t = from_texts(model, texts).tokens
    assert (t.pos_tag[t.pos == 0] == "BOS").all() and not t.word_start[t.pos == 0].any()
    for seq, rows in t.groupby("seq"):  # the tokens spell the text (tiny's tokenizer drops spaces)
        spelled = " ".join(rows.text.iloc[1:]) if name == "tiny" else "".join(rows.text.iloc[1:])
        assert spelled == (" ".join(texts[seq].split()) if name == "tiny" else texts[seq])
        on_words = rows.word_index[rows.word_index >= 0]
        assert on_words.is_monotonic_increasing and len(set(on_words)) >= len(texts[seq].split())


@pytest.mark.smollm2
def test_from_texts_pos_policy_on_a_known_sentence(smol):
    t = from_texts(smol, SENTENCE).tokens
    got = list(zip(t.text, t.pos_tag, t.word, t.word_start))
    assert got == [
        ("<|im_start|>", "BOS", "", False), ("The", "DET", "The", True),
        (" quick", "ADJ", "quick", True), (" brown", "ADJ", "brown", True),
        (" fox", "NOUN", "fox", True), (",", "PUNCT", ",", True),
        (" unbelie", "ADV", "unbelievably", True), ("v", "ADV", "unbelievably", False),
        ("ably", "ADV", "unbelievably", False), (",", "PUNCT", ",", True),
        (" jumped", "VERB", "jumped", True), (" over", "ADP", "over", True),
        (" ", "SPACE", "", False), ("2", "NUM", "2", True), (" lazy", "ADJ", "lazy", True),
        (" dogs", "NOUN", "dogs", True), (".", "PUNCT", ".", True),
    ]


@pytest.mark.smollm2
def test_subword_policy_most_overlap_then_first(smol):
    text = " unbelievably"  # tokens " unbelie" (chars 0-8), "v" (8-9), "ably" (9-13)
    enc = smol.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["offset_mapping"] == [(0, 8), (8, 9), (9, 13)]
    cases = {
        ((1, 5), (5, 13)): [0, 1, 1],  # " unbelie": 4 chars of the first word, 3 of the second
        ((1, 4), (4, 13)): [1, 1, 1],  # 3 against 4: the second
        ((1, 4), (4, 7), (7, 13)): [0, 2, 2],  # 3, 3 and 1: a tie goes to the first
        ((9, 11), (11, 13)): [-1, -1, 0],  # no overlap: no word; "ably" ties 2-2: the first
    }
    for spans, expected in cases.items():
        ids, n_pre, word_of = encode_words(smol, text, list(spans))
        assert ids == smol.to_tokens(text)[0].tolist() and n_pre == 1
        assert word_of.tolist() == [-1, *expected], spans


def test_from_texts_rejects_empty_and_too_long(tiny):
    for bad in ([], [""], ["w1", "   "]):
        with pytest.raises(PromptError):
            from_texts(tiny, bad)
    with pytest.raises(PromptError, match="context"):
        from_texts(tiny, " ".join(["w1"] * 40), tag=False)


# ---------------------------------------------------------------- induction


@pytest.mark.parametrize("name", ["tiny", pytest.param("smol", marks=pytest.mark.smollm2)])
def test_induction_halves_repeat(name, request):
    model = request.getfixturevalue(name)
    stim = induction(model, n_seqs=5, half_len=7, seed=3)
    bos = prefix_ids(model)
    special = set(model.tokenizer.all_special_ids)
    for i in range(stim.n_seqs):
        ids = seq_ids(stim, i)
        first, second = ids[len(bos): len(bos) + 7], ids[len(bos) + 7:]
        assert ids[: len(bos)] == bos and first == second and len(set(first)) == 7
        assert not special & set(first)
    t = stim.tokens
    assert t.is_repeat.sum() == 35 and (t.half[t.is_repeat] == 2).all()
    rep = t[t.is_repeat]
    src = t.set_index(["seq", "pos"]).token
    assert (rep.token.to_numpy() == src.loc[list(zip(rep.seq, rep.repeat_of))].to_numpy()).all()
    assert torch.equal(induction(model, 5, 7, seed=3).ids, stim.ids)
    assert not torch.equal(induction(model, 5, 7, seed=4).ids, stim.ids)


def test_induction_errors(tiny):
    assert set(ordinary_vocab(tiny)) == set(range(3, 63))
    with pytest.raises(PromptError, match="context"):
        induction(tiny, n_seqs=2, half_len=16)  # 1 + 32 > n_ctx 32
    with pytest.raises(PromptError, match="exceeds"):
        induction(tiny, n_seqs=2, half_len=61)
    with pytest.raises(PromptError):
        induction(tiny, n_seqs=0)


# ---------------------------------------------------------------- templates


def test_templates_on_tiny_line_up(tiny):
    stim = templates(tiny, n=len(TEMPLATES), seed=0)
    t = stim.tokens
    assert len(t) == int(stim.lengths.sum()) and (t.pos_tag[t.pos == 0] == "BOS").all()
    assert set(t.template) == set(range(len(TEMPLATES)))


@pytest.mark.smollm2
def test_templates_gold_tags(smol):
    stim = templates(smol, n=14, seed=1)
    t = stim.tokens
    lexicon = {(w, slot.split("_")[0]) for slot, words in LEXICON.items() for w in words} | {("an", "DET")}
    starts = t[t.word_start]
    assert all((w.lower(), tag) in lexicon for w, tag in zip(starts.word, starts.pos_tag))
    for seq, rows in starts.groupby("seq"):  # every word has a token, in template order
        slots = TEMPLATES[int(rows.template.iloc[0])]
        assert rows.pos_tag.tolist() == [s.split("_")[0] for s in slots]
    # spaCy, run on the same sentences, gives the same ids and mostly the same tags.
    texts = [smol.tokenizer.decode(seq_ids(stim, i)[1:]) for i in range(stim.n_seqs)]
    tagged = from_texts(smol, texts)
    assert torch.equal(tagged.ids, stim.ids)
    agree = (tagged.tokens.pos_tag == t.pos_tag)[t.word_start].mean()
    assert agree >= 0.9


# ---------------------------------------------------------------- IOI


@pytest.mark.smollm2
def test_ioi_names_are_single_tokens(smol):
    stim = ioi(smol, n=8, seed=0)
    t = stim.tokens
    for seq, rows in t.groupby("seq"):
        r = rows.iloc[0]
        assert single_token_id(smol, " " + r.io) == r.io_id and single_token_id(smol, " " + r.s) == r.s_id
        assert r.io != r.s
        roles = rows[rows.role != ""]
        assert sorted(roles.role) == ["IO", "S1", "S2"] and roles.role.iloc[-1] == "S2"
        assert (roles.token == np.where(roles.role == "IO", r.io_id, r.s_id)).all()
        assert rows.is_target.tolist() == [False] * (len(rows) - 1) + [True]
        assert rows.text.iloc[-1] == " to"
    assert t.groupby("seq").order.first().tolist() == ["ABB", "BAB"] * 4


def test_ioi_needs_single_token_names(tiny):
    with pytest.raises(PromptError, match="one token"):
        ioi(tiny, n=2)


# ---------------------------------------------------------------- organism paradigms


@pytest.fixture(scope="module")
def grammar_model(tmp_path_factory):
    """A random GPT-2 with the organisms' word-level tokenizer (the trained one may not exist)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmscope.stimuli.toy_grammar import Grammar
    from llmscope.organisms.tokenizer import word_tokenizer

    folder = tmp_path_factory.mktemp("grammar-random")
    vocab = Grammar(0).vocab
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=32, n_layer=1,
                               n_head=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
                    ).save_pretrained(folder, safe_serialization=True)
    word_tokenizer(vocab).save_pretrained(folder)
    return llmscope.load(str(folder))


def test_grammar_labels_line_up(grammar_model):
    from llmscope.stimuli.toy_grammar import Grammar

    stim = grammar(grammar_model, n_docs=3, seed=5, max_tokens=64)
    gold = Grammar(0).sample(3, 5, max_tokens=64)
    t = stim.tokens
    assert stim.n_seqs == 3 and len(t) == len(gold)
    assert (t.token.to_numpy() == gold.token.to_numpy()).all()
    assert (t.text == t.word).all() and (t.pos_tag[t.pos == 0] == "BOS").all()
    for col in ("pos_tag", "number", "is_repeat", "controller", "ambiguous"):
        assert (t[col].to_numpy() == gold[col].to_numpy()).all(), col
    verbs = t[(t.controller >= 0)]
    assert (verbs.pos_tag == "VERB").all()


def test_agreement_targets(grammar_model):
    stim = agreement(grammar_model, n=6, seed=2)
    t = stim.tokens
    assert stim.n_seqs == 6 and t.groupby("seq").attractor.first().sum() == 3
    targets = t[t.is_target]
    assert targets.pos.tolist() == (stim.lengths - 1).tolist()
    vocab = grammar_model.tokenizer.convert_ids_to_tokens
    assert vocab(targets.good_id.tolist()) == targets.good.tolist()
    assert vocab(targets.bad_id.tolist()) == targets.bad.tolist()
    assert (targets.good != targets.bad).all()


def test_organism_paradigms_need_the_grammar_vocabulary(tiny):
    with pytest.raises(ValueError, match="one token"):
        grammar(tiny, n_docs=1, seed=0, max_tokens=16)


@pytest.mark.skipif("grammar-2l" not in llmscope.models.organisms(),
                    reason="the grammar-2l organism is not trained/committed yet")
def test_grammar_2l_prefers_the_agreeing_verb():
    model = llmscope.load("grammar-2l")
    stim = agreement(model, n=32, seed=0)
    with torch.no_grad():
        logits = model(stim.ids)
    t = stim.tokens[stim.tokens.is_target]
    last = logits[torch.tensor(t.seq.to_numpy()), torch.tensor(t.pos.to_numpy())]
    diff = last.gather(1, torch.as_tensor(t[["good_id", "bad_id"]].to_numpy())).diff(dim=1).neg()
    assert (diff > 0).float().mean() > 0.8
    stim = grammar(model, n_docs=2, seed=0)
    assert (stim.tokens.text == stim.tokens.word).all()


# ---------------------------------------------------------------- BOS, twins, counts


@pytest.mark.smollm2
def test_from_texts_bos_choice(smol):
    texts = ["The cat sat on the mat.", "Dogs bark."]
    with_bos, without = from_texts(smol, texts), from_texts(smol, texts, bos=False)
    first = with_bos.tokens[with_bos.tokens.pos == 0]
    assert first["is_bos"].all() and (first["text"] == "<|im_start|>").all()
    assert with_bos.tokens["is_bos"].sum() == 2 and not without.tokens["is_bos"].any()
    assert len(with_bos) - len(without) == 2
    assert without.tokens["text"].tolist() == with_bos.tokens.loc[~with_bos.tokens.is_bos, "text"].tolist()
    assert without.tokens["pos_tag"].tolist()[:2] == ["DET", "NOUN"]


def test_every_paradigm_marks_bos(tiny, organism):
    assert induction(tiny, n_seqs=2, half_len=4).tokens.query("pos == 0")["is_bos"].all()
    g = grammar(organism, n_docs=2, seed=0).tokens
    assert (g["is_bos"] == (g["pos_tag"] == "BOS")).all() and g["is_bos"].sum() == 2
    assert agreement(organism, n=4, seed=0).tokens["is_bos"].sum() == 4


@pytest.mark.smollm2
def test_ioi_corrupted_twin(smol):
    clean = ioi(smol, n=6, seed=1, corrupt=True)
    corrupt = clean.corrupt
    assert np.array_equal(clean.lengths, corrupt.lengths)
    changed = clean.tokens["token"].to_numpy() != corrupt.tokens["token"].to_numpy()
    s2 = (clean.tokens["role"] == "S2").to_numpy()
    assert np.array_equal(changed, s2) and s2.sum() == 6
    assert (corrupt.tokens.loc[s2, "token"] == clean.tokens.loc[s2, "io_id"]).all()
    assert ioi(smol, n=6, seed=1).tokens.equals(clean.tokens)


@pytest.mark.parametrize("call, match", [
    (lambda m: induction(m, n_seqs=2.5), "n_seqs must be an integer >= 1, got 2.5"),
    (lambda m: induction(m, n_seqs=2, half_len=0), "half_len must be an integer >= 1"),
    (lambda m: induction(m, n_seqs="4"), "n_seqs must be an integer"),
])
def test_counts_are_checked(tiny, call, match):
    with pytest.raises(PromptError, match=match):
        call(tiny)


def test_agreement_corrupted_twin_flips_the_subject(organism):
    from llmscope.behaviour import evaluate

    clean = agreement(organism, n=16, seed=2, corrupt=True)
    corrupt = clean.corrupt
    assert clean.n_seqs == 16 and np.array_equal(clean.lengths, corrupt.lengths)
    changed = clean.tokens["token"].to_numpy() != corrupt.tokens["token"].to_numpy()
    per_seq = clean.tokens.assign(changed=changed).groupby("seq")["changed"].sum()
    assert (per_seq == 1).all()  # exactly the subject noun differs
    at = clean.tokens.assign(changed=changed).query("changed")
    assert (at["pos"].to_numpy() == clean.lengths - at["distance"].to_numpy()).all()  # the controller
    good = evaluate(organism, clean, "logit_diff").df["logit_diff"].dropna()
    flipped = evaluate(organism, corrupt, "logit_diff").df["logit_diff"].dropna()
    assert (good > 0).mean() > 0.9 and (flipped < 0).mean() > 0.7  # the twin wants the other verb


@pytest.mark.smollm2
def test_bundled_sentences_are_tagged_shuffled_by_seed_and_bounded(smol):
    a, b, c = sentences(smol, n=5, seed=0), sentences(smol, n=5, seed=0), sentences(smol, n=5, seed=1)
    assert a.tokens["text"].tolist() == b.tokens["text"].tolist() != c.tokens["text"].tolist()
    tags = set(sentences(smol).tokens["pos_tag"])
    assert {"NOUN", "VERB", "DET", "ADP", "ADJ", "ADV", "PRON"} <= tags
    for bad in (0, 101, 2.5):
        with pytest.raises(PromptError):
            sentences(smol, n=bad)
