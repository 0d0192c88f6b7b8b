"""Stimuli in the organisms' toy English, with the grammar's gold labels on every token.

:func:`grammar` samples documents; its trial table carries the grammar's own labels:
``word``, ``pos_tag`` (BOS DET ADJ NOUN VERB ADV ADP PRON CCONJ PUNCT, Universal POS tags), ``number``
("sg"/"pl" on nouns and verbs, else ""), ``is_repeat`` and ``repeat_of`` (verbatim copies of
earlier spans; ``repeat_onset`` on the first token of each copy), ``sent_pos``, ``controller``
(a verb's subject position), ``ambiguous``.

:func:`agreement` turns number-agreement minimal pairs into stimuli: one sequence per pair
holding BOS + the sentence up to the verb; every row carries the pair's ``good`` / ``bad``
verb forms, their ids ``good_id`` / ``bad_id``, ``number``, ``attractor`` and ``distance``, and
``is_target`` marks the last token, where the verb is predicted: the logit difference
``logits[good_id] - logits[bad_id]`` at that row measures agreement.

Both need a model whose tokenizer has one token per word of the grammar (an organism such as
``"grammar-2l"``).

Example:
    >>> import llmscope
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> grammar(model, n_docs=4, seed=0).tokens.pos_tag.value_counts().index[:3].tolist()
    ['NOUN', 'DET', 'VERB']
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Iterable

import numpy as np

from llmscope import checks
from llmscope.checks import count
from llmscope.stimuli.core import Stimuli, onsets
from llmscope.stimuli.subwords import prefix_ids, single_token_id
from llmscope.stimuli.toy_grammar import Grammar
from llmscope.errors import PromptError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@lru_cache(maxsize=4)
def _grammar(seed: int) -> Grammar:
    """The grammar (built once per seed: its lexicon takes a few seconds)."""
    return Grammar(seed=seed)


def word_ids(model: "TransformerBridge", words: Iterable[str]) -> dict[str, int]:
    """Each word's single token id in ``model``'s tokenizer; an error names words that are not one token."""
    ids = {w: single_token_id(model, w) for w in set(words)}
    bad = sorted(w for w, i in ids.items() if i is None)
    if bad:
        raise PromptError(
            f"this model's tokenizer does not make one token of the grammar's words {bad[:5]} "
            f"({len(bad)} in all): use an organism trained on the toy English, such as 'grammar-2l'."
        )
    return ids  # type: ignore[return-value]


def speaks_grammar(model: "TransformerBridge", grammar_seed: int = 0) -> bool:
    """True when ``model``'s tokenizer has one token for every word of the toy grammar (an organism).

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli.organism import speaks_grammar
        >>> model = llmscope.load("grammar-2l")
        >>> smol = llmscope.load("smollm2-135m")
        >>> speaks_grammar(model), speaks_grammar(smol)
        (True, False)
    """
    words = _grammar(grammar_seed).lexicon.word
    return all(single_token_id(model, w) is not None for w in words)


def grammar(model: "TransformerBridge", n_docs: int = 16, seed: int = 0,
            max_tokens: int | None = None, grammar_seed: int = 0) -> Stimuli:
    """Documents sampled from the toy grammar, with its gold labels on every token.

    Args:
        model: an organism whose tokenizer has one token per word of the grammar.
        n_docs: number of documents (sequences).
        seed: seeds the sampling.
        max_tokens: longest document, BOS included (default: the model's context, at most 128).
        grammar_seed: the lexicon's seed; organisms are trained on ``Grammar(seed=0)``.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=2, seed=0)
        >>> stim.tokens.loc[0, ["text", "pos_tag"]].tolist()
        ['<bos>', 'BOS']
    """
    count(n_docs, "n_docs", error=PromptError)
    seed, grammar_seed = checks.seed(seed, "seed", PromptError), checks.seed(grammar_seed, "grammar_seed", PromptError)
    top = min(128, model.cfg.n_ctx)
    max_tokens = top if max_tokens is None else count(max_tokens, "max_tokens", 8, model.cfg.n_ctx, PromptError)
    df = _grammar(grammar_seed).sample(n_docs, seed, max_tokens=max_tokens)
    ids = df.word.map(word_ids(model, df.word)).to_numpy()
    seqs = np.split(ids, np.cumsum(df.groupby("doc").size().to_numpy())[:-1])  # rows are in doc order
    labels = df.drop(columns=["doc", "pos", "token"])
    labels["repeat_onset"] = onsets(labels["is_repeat"], df["doc"])
    return Stimuli.from_ids(model, seqs, labels, name="grammar", n_bos=1)


def _other_noun(grammar_seed: int) -> dict[str, str]:
    """Each common noun form -> the same noun in the other number ("dog" <-> "dogs")."""
    lex = _grammar(grammar_seed).lexicon
    nouns = lex[(lex.pos_tag == "NOUN") & lex.number.isin(["sg", "pl"])].drop_duplicates(["lemma", "number"])
    forms = nouns.pivot(index="lemma", columns="number", values="word").dropna()
    return {**dict(zip(forms.sg, forms.pl)), **dict(zip(forms.pl, forms.sg))}


def agreement(model: "TransformerBridge", n: int = 64, seed: int = 0, grammar_seed: int = 0,
              corrupt: bool = False) -> Stimuli:
    """Subject-verb agreement minimal pairs: the prefix up to the verb, one sequence per pair.

    Half the pairs have an attractor (a noun of the other number between subject and verb).
    With ``corrupt=True`` the clean stimuli carry their corrupted twin as ``.corrupt``: there the
    subject noun takes the other number ("the dog" -> "the dogs"), so the agreeing verb changes,
    while lengths and labels (``good_id``/``bad_id`` of the clean pair) stay, as
    :func:`llmscope.patching` needs. Only pairs whose subject is a common noun are drawn then
    (names and pronouns have no other-number form here), so the attractor split may be uneven.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import agreement
        >>> model = llmscope.load("grammar-2l")
        >>> stim = agreement(model, n=8, seed=0)
        >>> t = stim.tokens[stim.tokens.is_target]
        >>> len(t), int(t.attractor.sum())
        (8, 4)
    """
    count(n, "agreement's n (pairs)", error=PromptError)
    seed, grammar_seed = checks.seed(seed, "seed", PromptError), checks.seed(grammar_seed, "grammar_seed", PromptError)
    corrupt = checks.flag(corrupt, "corrupt", PromptError)
    pairs = _grammar(grammar_seed).minimal_pairs(n * (4 if corrupt else 1), seed)
    prefixes = [p.split() for p in pairs.prefix]
    if corrupt:
        other = _other_noun(grammar_seed)
        keep = [i for i, (p, d) in enumerate(zip(prefixes, pairs.distance)) if p[len(p) - d] in other][:n]
        pairs, prefixes = pairs.iloc[keep].reset_index(drop=True), [prefixes[i] for i in keep]
        twins = [p[:len(p) - d] + [other[p[len(p) - d]]] + p[len(p) - d + 1:] for p, d in zip(prefixes, pairs.distance)]
    lookup = word_ids(model, [w for p in prefixes for w in p] + list(pairs.good) + list(pairs.bad)
                      + ([w for p in twins for w in p] if corrupt else []))
    bos = prefix_ids(model)
    seqs = [bos + [lookup[w] for w in p] for p in prefixes]
    lengths = np.array([len(s) for s in seqs])
    per_seq = pairs.drop(columns=["prefix"]).assign(
        good_id=pairs.good.map(lookup), bad_id=pairs.bad.map(lookup))
    labels = per_seq.loc[np.repeat(per_seq.index, lengths)].reset_index(drop=True)
    labels["is_target"] = np.isin(np.arange(lengths.sum()), np.cumsum(lengths) - 1)
    clean = Stimuli.from_ids(model, seqs, labels, name="agreement", n_bos=len(bos))
    if corrupt:
        twin_ids = [bos + [lookup[w] for w in p] for p in twins]
        clean.corrupt = Stimuli.from_ids(model, twin_ids, labels, name="agreement (subject number flipped)",
                                         n_bos=len(bos))
    return clean
