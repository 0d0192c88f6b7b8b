"""English template sentences with gold parts of speech from a small lexicon.

Every word comes from :data:`LEXICON`, where it has one Universal POS tag (the tag set spaCy
uses, so these stimuli and :func:`llmscope.stimuli.english.from_texts` share one vocabulary
of labels: ``DET ADJ NOUN VERB ADV ADP PRON CCONJ AUX PUNCT``). The gold tags land on subword
tokens by the policy of :mod:`llmscope.stimuli.subwords`, as in ``from_texts``.

Trial-table columns added by :func:`templates`: ``pos_tag`` (gold; ``"BOS"`` on the prepended
tokens), ``word``, ``word_index``, ``word_start`` (as in ``from_texts``) and ``template``
(which of :data:`TEMPLATES` made the sentence).

Example:
    >>> import llmscope
    >>> from llmscope.stimuli import templates
    >>> smol = llmscope.load("smollm2-135m")
    >>> stim = templates(smol, n=4, seed=0)
    >>> stim.tokens.query("word_start")[["word", "pos_tag"]].head(4).values.tolist()
    [['Every', 'DET'], ['green', 'ADJ'], ['car', 'NOUN'], ['chased', 'VERB']]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmscope import checks
from llmscope.checks import count
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.english import tagged_table
from llmscope.stimuli.subwords import prefix_ids
from llmscope.errors import PromptError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

# Slot -> words; a slot's gold tag is its name up to "_" (VERB_T and VERB_I are VERBs).
LEXICON: dict[str, tuple[str, ...]] = {
    "DET": ("the", "a", "this", "that", "every"),
    "ADJ": ("old", "young", "small", "big", "happy", "quiet", "green", "tired", "clever", "heavy"),
    "NOUN": ("dog", "cat", "teacher", "farmer", "child", "river", "car", "house", "bird", "doctor",
             "window", "garden"),
    "VERB_T": ("saw", "liked", "chased", "found", "painted", "carried", "visited", "watched"),
    "VERB_I": ("slept", "laughed", "arrived", "smiled", "waited", "danced"),
    "ADV": ("quickly", "slowly", "quietly", "happily", "suddenly"),
    "ADP": ("near", "behind", "under", "beside"),
    "PRON": ("she", "he", "they", "we"),
    "CCONJ": ("and", "or"),
    "AUX": ("was",),
    "PUNCT": (".",),
}
TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("DET", "ADJ", "NOUN", "VERB_T", "DET", "NOUN", "PUNCT"),
    ("DET", "NOUN", "VERB_I", "ADV", "PUNCT"),
    ("PRON", "VERB_T", "DET", "ADJ", "NOUN", "ADP", "DET", "NOUN", "PUNCT"),
    ("DET", "NOUN", "ADP", "DET", "NOUN", "VERB_I", "PUNCT"),
    ("DET", "NOUN", "CCONJ", "DET", "NOUN", "VERB_I", "ADV", "PUNCT"),
    ("DET", "NOUN", "AUX", "ADJ", "PUNCT"),
    ("PRON", "ADV", "VERB_T", "DET", "NOUN", "PUNCT"),
)


def _sentence(slots: tuple[str, ...], rng: np.random.Generator) -> tuple[str, list, list]:
    """Fill the slots: the sentence, its words' character spans and their gold tags."""
    words = [str(rng.choice(LEXICON[slot])) for slot in slots]
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][0] in "aeiou":
            words[i] = "an"
    words[0] = words[0].capitalize()
    text, spans = "", []
    for slot, word in zip(slots, words):
        if text and slot != "PUNCT":
            text += " "
        spans.append((len(text), len(text) + len(word)))
        text += word
    return text, spans, [slot.split("_")[0] for slot in slots]


def templates(model: "TransformerBridge", n: int = 64, seed: int = 0, bos: bool = True) -> Stimuli:
    """``n`` template sentences with gold POS tags, templates taken in turn.

    Args:
        model: the model whose tokenizer splits the sentences (BOS included).
        n: number of sentences (sequences).
        seed: seeds the words.
        bos: start each sentence with what the model prepends (marked ``is_bos``); see ``from_texts``.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import templates
        >>> smol = llmscope.load("smollm2-135m")
        >>> stim = templates(smol, n=7, seed=0)
        >>> sorted(stim.tokens.pos_tag.unique())
        ['ADJ', 'ADP', 'ADV', 'AUX', 'BOS', 'CCONJ', 'DET', 'NOUN', 'PRON', 'PUNCT', 'VERB']
    """
    count(n, "templates' n (sentences)", error=PromptError)
    seed, bos = checks.seed(seed, "seed", PromptError), checks.flag(bos, "bos", PromptError)
    rng = np.random.default_rng(seed)
    seqs, tables = [], []
    for i in range(n):
        t = i % len(TEMPLATES)
        text, spans, tags = _sentence(TEMPLATES[t], rng)
        ids, table = tagged_table(model, text, spans, tags, bos)
        seqs.append(ids)
        tables.append(table.assign(template=t))
    return Stimuli.from_ids(model, seqs, pd.concat(tables, ignore_index=True), name="templates",
                            n_bos=len(prefix_ids(model)) if bos else 0)
