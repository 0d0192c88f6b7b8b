"""Indirect-object identification (IOI) stimuli: English name templates.

"When Mary and John went to the store, John gave a drink to" -> " Mary". The repeated name is
the subject (S), the other the indirect object (IO); a model that solves the task predicts
the IO at the last token. Names are drawn from a list of common first names, keeping only
those that the model's tokenizer makes one token (after a space), so each name is one
position and one logit.

Trial-table columns added by :func:`ioi`:

* ``io``, ``s``: the two names; ``io_id``, ``s_id``: their token ids (with the leading space);
* ``template``: which template; ``order``: "ABB" when the IO is named first, "BAB" otherwise;
* ``role``: "IO", "S1", "S2" on the name tokens, "" elsewhere;
* ``is_target``: True on the last token, where the IO is predicted: the logit difference
  ``logits[io_id] - logits[s_id]`` there measures the behaviour.

Example:
    >>> import llmscope
    >>> from llmscope.stimuli import ioi
    >>> smol = llmscope.load("smollm2-135m")
    >>> stim = ioi(smol, n=16, seed=0)
    >>> stim.tokens.query("is_target")[["text", "io", "s"]].head(2).values.tolist()
    [[' to', 'Amy', 'Daniel'], [' to', 'Mary', 'Tom']]
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from llmscope import checks
from llmscope.checks import count
from llmscope.stimuli.core import Stimuli
from llmscope.stimuli.subwords import encode_words, single_token_id
from llmscope.errors import PromptError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

NAMES = (
    "Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Emma", "Michael",
    "Lisa", "Mark", "Laura", "Peter", "Kate", "George", "Alice", "Robert", "Jane", "Daniel",
    "Rachel", "Steven", "Susan", "Richard", "Amy", "Chris", "Helen", "Kevin", "Linda", "Eric",
)
PLACES = ("store", "park", "school", "office", "station", "garden", "hospital", "restaurant")
OBJECTS = ("drink", "book", "ring", "letter", "gift", "key", "bag", "ball")
# {a} is named first, {b} second; {s} is the repeated name.
TEMPLATES = (
    "When {a} and {b} went to the {place}, {s} gave a {object} to",
    "After {a} and {b} arrived at the {place}, {s} handed a {object} to",
    "While {a} and {b} were working at the {place}, {s} passed a {object} to",
    "Then, {a} and {b} had a long day at the {place}. {s} gave a {object} to",
)
_ROLES = ("a", "b", "s")


def single_token_names(model: "TransformerBridge") -> list[str]:
    """The names of :data:`NAMES` that ``model`` tokenizes as one token after a space."""
    return [n for n in NAMES if single_token_id(model, " " + n) is not None]


def _fill(template: str, names: dict[str, str], place: str, obj: str) -> tuple[str, list, list]:
    """The sentence, the character spans of its names, and those names' keys, in order."""
    text, spans, keys = "", [], []
    for literal, key, _, _ in string.Formatter().parse(template):
        text += literal
        if key in _ROLES:
            spans.append((len(text), len(text) + len(names[key])))
            keys.append(key)
            text += names[key]
        elif key is not None:
            text += {"place": place, "object": obj}[key]
    return text, spans, keys


def ioi(model: "TransformerBridge", n: int = 32, seed: int = 0,
        corrupt: bool = False) -> Stimuli:
    """``n`` IOI prompts, alternating the IO named first ("ABB") and second ("BAB").

    Args:
        model: an English model; at least two of :data:`NAMES` must be single tokens in it.
        n: number of prompts (sequences).
        seed: seeds names, places, objects and templates.
        corrupt: also build the corrupted twin, as ``.corrupt`` of the returned Stimuli: each
            prompt with the second mention of S replaced by the IO's name, so the answer is no longer given by
            who was named twice. Same lengths and labels (``io_id``, ``s_id`` of the clean
            prompt), ready for :func:`llmscope.patching`.

    Raises:
        PromptError: fewer than two names are single tokens in this model's vocabulary.

    Example:
        >>> import llmscope
        >>> from llmscope.stimuli import ioi
        >>> smol = llmscope.load("smollm2-135m")
        >>> stim = ioi(smol, n=4, seed=0)
        >>> stim.tokens.query("role != ''").role.tolist()[:3]
        ['IO', 'S1', 'S2']
    """
    seed, corrupt = checks.seed(seed, "seed", PromptError), checks.flag(corrupt, "corrupt", PromptError)
    names = single_token_names(model)
    if len(names) < 2:
        raise PromptError(
            "IOI needs English first names that are one token each; this model's tokenizer "
            f"has {len(names)} of {len(NAMES)} (use an English model such as 'smollm2-135m')."
        )
    count(n, "ioi's n (sequences)", error=PromptError)
    rng = np.random.default_rng(seed)
    seqs, tables = [], []
    for i in range(n):
        io, s = rng.choice(names, size=2, replace=False)
        order = "ABB" if i % 2 == 0 else "BAB"
        cast = {"a": io, "b": s} if order == "ABB" else {"a": s, "b": io}
        t = int(rng.integers(len(TEMPLATES)))
        text, spans, keys = _fill(TEMPLATES[t], {**cast, "s": s},
                                  str(rng.choice(PLACES)), str(rng.choice(OBJECTS)))
        ids, n_bos, word_of = encode_words(model, text, spans)
        roles = ["S2" if k == "s" else ("IO" if cast[k] == io else "S1") for k in keys]
        io_id, s_id = single_token_id(model, " " + io), single_token_id(model, " " + s)
        name_ids = [ids[j] for j in np.flatnonzero(word_of >= 0)]
        if name_ids != [io_id if r == "IO" else s_id for r in roles]:
            raise ValueError(f"a name in {text!r} is not one token in context for this tokenizer.")
        seqs.append(ids)
        tables.append(pd.DataFrame({
            "io": io, "s": s, "io_id": io_id, "s_id": s_id, "template": t, "order": order,
            "role": [roles[w] if w >= 0 else "" for w in word_of],
            "is_target": np.arange(len(ids)) == len(ids) - 1,
        }))
    table = pd.concat(tables, ignore_index=True)
    clean = Stimuli.from_ids(model, seqs, table, name="ioi", n_bos=n_bos)
    if corrupt:
        flat = table["io_id"].where(table["role"] == "S2", np.concatenate(seqs)).to_numpy()
        twins = np.split(flat, np.cumsum([len(q) for q in seqs])[:-1])
        clean.corrupt = Stimuli.from_ids(model, twins, table, name="ioi (S2 -> IO)", n_bos=n_bos)
    return clean
