"""The toy English: lexicon, gold labels, agreement, repeats, ambiguity, minimal pairs."""

from __future__ import annotations

import pandas as pd
import pytest

from llmscope.stimuli import lexicon as lx
from llmscope.stimuli.toy_grammar import SPECIALS, TAGS, Grammar, predictable_repeats
from llmscope.organisms.tokenizer import word_tokenizer
from llmscope.stimuli.templates import LEXICON

CLASSES = {"DET", "ADJ", "NOUN", "VERB", "ADV", "ADP", "PRON", "CCONJ", "PUNCT"}
# The 17 Universal POS tags, https://universaldependencies.org/u/pos/
UPOS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"}


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return Grammar(seed=0)


@pytest.fixture(scope="module")
def tokens(grammar: Grammar) -> pd.DataFrame:
    return grammar.sample(300, seed=11)


@pytest.fixture(scope="module")
def words(tokens: pd.DataFrame) -> pd.DataFrame:
    """The tokens without `<bos>` rows."""
    return tokens[tokens.pos_tag != "BOS"]


def test_lexicon_size_and_classes(grammar):
    assert grammar.lexicon.word.nunique() >= 600
    assert set(grammar.lexicon.pos_tag) == CLASSES
    assert grammar.vocab[: len(SPECIALS)] == list(SPECIALS)
    assert len(set(grammar.vocab)) == len(grammar.vocab)
    assert set(grammar.lexicon.word) == set(grammar.vocab) - set(SPECIALS)


def test_tags_are_universal_pos(grammar, words):
    """The organism's tags are Universal POS tags, which the English stimuli use too: a query
    such as `pos_tag == "ADP"` selects the prepositions on the organism and on SmolLM2 alike."""
    assert set(TAGS) == CLASSES | {"BOS"} and CLASSES <= UPOS
    assert set(words.pos_tag) == CLASSES
    assert CLASSES <= {slot.split("_")[0] for slot in LEXICON}
    lex = grammar.lexicon.groupby("pos_tag").word.agg(set)
    assert lex["ADP"] == set(lx.PREPOSITIONS_FRONTABLE + lx.PREPOSITIONS_OTHER)
    assert lex["CCONJ"] == set(lx.CONJUNCTIONS)


def test_inflection():
    assert [lx.plural(w) for w in ("dog", "box", "city", "key", "child")] == [
        "dogs", "boxes", "cities", "keys", "children"]
    assert [lx.third_person(w) for w in ("run", "catch", "cry", "pray")] == [
        "runs", "catches", "cries", "prays"]


def test_seed_fixes_lexicon_and_samples():
    a, b = Grammar(0), Grammar(1)
    assert a.vocab == b.vocab  # the same words...
    assert a.sample(5, seed=3).equals(Grammar(0).sample(5, seed=3))
    assert not a.sample(5, seed=3).word.equals(b.sample(5, seed=3).word)  # ...other frequencies
    assert not a.sample(5, seed=3).word.equals(a.sample(5, seed=4).word)


def test_documents_fit_and_start_with_bos(tokens):
    first = tokens.groupby("doc").first()
    assert (first.word == "<bos>").all() and (first.pos == 0).all()
    assert (tokens.groupby("doc").size() <= 128).all()
    assert (tokens.groupby("doc").pos.diff().dropna() == 1).all()
    short = Grammar(0).sample(20, seed=1, max_tokens=40)
    assert short.groupby("doc").size().max() <= 40


def test_number_only_on_nouns_and_verbs(words):
    has_number = words.number != ""
    assert set(words.pos_tag[has_number]) == {"NOUN", "VERB"}
    assert (words.number[words.pos_tag.isin(["NOUN", "VERB"])] != "").all()


def test_every_verb_agrees_with_its_controller(grammar, tokens):
    verbs = tokens[tokens.pos_tag == "VERB"]
    ctrl = tokens.loc[verbs.index - verbs.pos + verbs.controller]
    assert (verbs.controller.values < verbs.pos.values).all()
    assert set(ctrl.pos_tag) == {"NOUN", "PRON"}
    nouns = ctrl.pos_tag.values == "NOUN"
    assert (ctrl.number.values[nouns] == verbs.number.values[nouns]).all()
    for number in ("sg", "pl"):
        pron = ~nouns & (verbs.number.values == number)
        assert set(ctrl.word.values[pron]) <= set(lx.PRONOUNS_SUBJECT[number])


def test_shortcuts_fail_agreement(tokens):
    """Neither "agree with the first noun of the sentence" nor "with the last noun" passes."""
    t = tokens.assign(sent=(tokens.sent_pos == 0).cumsum())
    noun_number = t.number.where(t.pos_tag == "NOUN")
    first = noun_number.groupby(t.sent).transform("first")
    last = noun_number.groupby(t.doc).ffill()
    verbs = (t.pos_tag == "VERB") & first.notna()
    assert (first[verbs] != t.number[verbs]).mean() > 0.05
    assert (last[verbs] != t.number[verbs]).mean() > 0.05
    fronted = (t.sent_pos == 0) & (t.pos_tag == "ADP")
    assert fronted.sum() / (t.sent_pos == 0).sum() > 0.2


def test_repeats_copy_earlier_spans(tokens):
    rep = tokens[tokens.is_repeat]
    src = tokens.loc[rep.index - rep.pos + rep.repeat_of]
    assert (rep.repeat_of.values < rep.pos.values).all()
    for col in ("word", "pos_tag", "number", "sent_pos"):
        assert (src[col].values == rep[col].values).all(), col
    has_ctrl = rep.controller.values >= 0
    assert (rep.controller.values - rep.pos.values == src.controller.values - src.pos.values)[has_ctrl].all()
    # Spans are whole sentences of at most 40 tokens; about half the fresh sentences follow one.
    start = tokens.is_repeat & ~predictable_repeats(tokens.repeat_of.values)
    assert (tokens.sent_pos[start] == 0).all()
    assert rep.groupby(start.cumsum()[tokens.is_repeat]).size().max() <= 40
    fresh = (tokens.sent_pos == 0) & ~tokens.is_repeat & (tokens.pos > 1)
    assert 0.3 < tokens.is_repeat.shift(1)[fresh].mean() < 0.6
    assert 0.3 < tokens.is_repeat[tokens.pos > 0].mean() < 0.6


def test_predictable_repeats_skip_first_token_of_a_span(tokens):
    pred = predictable_repeats(tokens.repeat_of.values)
    assert (tokens.is_repeat.values[pred]).all()
    first = tokens.is_repeat.values & ~pred
    assert (tokens.sent_pos.values[first] == 0).all()


def test_ambiguous_forms_need_context(grammar, words):
    assert words.ambiguous.mean() >= 0.10
    lex = grammar.lexicon
    assert (lex[lex.ambiguous].groupby("word").size() == 2).all()
    amb = words[words.ambiguous]
    seen_in_both = amb.word.map(amb.groupby("word").pos_tag.nunique() == 2)
    assert seen_in_both.mean() > 0.95
    # The word-identity baseline is far from perfect on them...
    baseline = amb.groupby("word").pos_tag.agg(lambda s: s.value_counts().iloc[0]).sum() / len(amb)
    assert baseline < 0.8
    # ...but the two previous words settle the class: POS is decodable from left context.
    left = words.word.shift(2) + " " + words.word.shift(1) + "/" + words.pos_tag.shift(1)
    assert (amb.groupby([left[words.ambiguous], amb.word]).pos_tag.nunique() == 1).all()


def test_minimal_pairs(grammar):
    pairs = grammar.minimal_pairs(200, seed=5)
    assert len(pairs) == 200 and pairs.attractor.sum() == 100
    lex = grammar.lexicon[grammar.lexicon.pos_tag == "VERB"].set_index("word")
    assert (lex.number[pairs.good].values == pairs.number.values).all()
    assert (lex.number[pairs.bad].values != pairs.number.values).all()
    assert (lex.lemma[pairs.good].values == lex.lemma[pairs.bad].values).all()
    assert pairs.prefix.str.split().map(lambda ws: set(ws) <= set(grammar.vocab)).all()
    assert (pairs.distance[pairs.attractor] > 1).mean() > 0.3


def test_tokenizer_one_token_per_word(grammar):
    tok = word_tokenizer(grammar.vocab)
    words = [w for w in grammar.vocab if w not in SPECIALS]
    assert tok(" ".join(words))["input_ids"] == [grammar.vocab.index(w) for w in words]
    assert tok.convert_ids_to_tokens(tok("Near the trees, the dog runs!")["input_ids"]) == [
        "near", "the", "trees", ",", "the", "dog", "runs", "!"]
    assert tok.bos_token_id == grammar.vocab.index("<bos>")


def test_encode_matches_sample(grammar):
    ids, repeat_of = grammar.encode(4, seed=9, max_tokens=64)
    df = grammar.sample(4, seed=9, max_tokens=64)
    assert (ids[df.doc, df.pos] == df.token).all() and (repeat_of[df.doc, df.pos] == df.repeat_of).all()
    assert (ids != 0).sum() == len(df)


def test_config_round_trip_guards_the_language(grammar):
    assert Grammar.from_config(grammar.config()).vocab == grammar.vocab
    assert Grammar(1).config()["fingerprint"] != grammar.config()["fingerprint"]
    with pytest.raises(ValueError, match="grammar code has changed"):
        Grammar.from_config({**grammar.config(), "fingerprint": "0" * 16})
