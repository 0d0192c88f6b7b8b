"""A seeded probabilistic grammar of a toy English, with gold labels on every token: the
language the organisms are trained on and the stimuli :func:`llmscope.stimuli.grammar` samples.

Sentences have subject-verb number agreement across prepositional phrases and relative
clauses, fronted phrases with a noun of their own ("near the trees the dog runs"), and
forms shared by two classes ("walk" is a NOUN after "the", a VERB after "the dogs").
Documents repeat earlier spans of whole sentences verbatim, so a repeat's continuation can
only be predicted in context.

Example:
    >>> from llmscope.stimuli.toy_grammar import Grammar
    >>> g = Grammar(seed=0)
    >>> tokens = g.sample(n_docs=2, seed=1)
    >>> tokens.word[0], tokens.pos_tag[0]
    ('<bos>', 'BOS')
    >>> pairs = g.minimal_pairs(4, seed=2)
    >>> list(pairs.columns[:4])
    ['prefix', 'good', 'bad', 'number']
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from itertools import accumulate

import numpy as np
import pandas as pd

from llmscope.stimuli import lexicon as lx

# Universal POS tags (https://universaldependencies.org/u/pos/, the set spaCy uses), so an
# analysis written on the organism runs unchanged on English; "BOS" marks `<bos>`. The classes
# are coarser than UD's: names are NOUN (UD: PROPN), "is"/"are" VERB (AUX), subordinators
# such as "because" CCONJ (SCONJ), and every determiner slot DET ("two": NUM, "my": PRON).
TAGS = ("BOS", "DET", "ADJ", "NOUN", "VERB", "ADV", "ADP", "PRON", "CCONJ", "PUNCT")
BOS, DET, ADJ, NOUN, VERB, ADV, ADP, PRON, CCONJ, PUNCT = range(len(TAGS))
NUMBERS = ("", "sg", "pl")
SG, PL = 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID = 0, 1


@dataclass(frozen=True)
class Rates:
    """Probabilities of the grammar's choices; each is P(choice) at its decision point."""

    front: float = 0.3  # a sentence opens with a fronted prepositional phrase
    front_comma: float = 0.4  # ... followed by a comma
    pronoun_subject: float = 0.15
    name: float = 0.3  # a singular noun phrase is a name
    adjective: float = 0.3  # a noun phrase has an adjective
    subject_pp: float = 0.25  # the subject carries a prepositional phrase (an attractor)
    subject_rc: float = 0.2  # the subject carries a relative clause
    object_rc: float = 0.4  # a relative clause is object-extracted ("that the cats chase")
    preverbal_adverb: float = 0.1
    copula: float = 0.12  # the verb phrase is "is/are ADJ"
    intransitive: float = 0.38
    verb_pp: float = 0.35  # an intransitive verb takes a prepositional phrase
    final_adverb: float = 0.2
    object_pronoun: float = 0.15
    conjunction: float = 0.15  # a second clause joined by a conjunction
    exclaim: float = 0.1  # the sentence ends in "!" rather than "."
    repeat: float = 0.5  # a fresh sentence is preceded by a verbatim repeat of earlier ones
    # Shares of the ambiguous stems in each slot, set so each form is seen in both classes.
    noun_verb_in_nouns: float = 0.25
    noun_verb_in_verbs: float = 0.45
    adj_verb_in_adjectives: float = 0.15
    adj_verb_in_verbs: float = 0.25
    adj_adverb_in_adjectives: float = 0.08
    adj_adverb_in_adverbs: float = 0.45


MAX_REPEAT = 40  # longest repeated span, in tokens
ZIPF = 0.8  # word frequencies within a class fall as rank ** -ZIPF


def predictable_repeats(repeat_of: np.ndarray) -> np.ndarray:
    """Which tokens can be predicted by copying: copied tokens (`repeat_of >= 0`) whose
    previous token is a copy of the token just before their source. Works along the last axis:
    on one document, on `encode()`'s `[doc, pos]` array, or on `sample()`'s rows of many
    documents (each starts with an uncopied `<bos>`).

    Example:
        >>> import numpy as np
        >>> from llmscope.stimuli.toy_grammar import predictable_repeats
        >>> predictable_repeats(np.array([-1, -1, -1, 1, 2]))
        array([False, False, False, False,  True])
    """
    prev = np.concatenate([np.full_like(repeat_of[..., :1], -1), repeat_of[..., :-1]], axis=-1)
    return (repeat_of >= 0) & (prev >= 0) & (prev == repeat_of - 1)


class _Pool:
    """Word ids with sampling weights: `draw(rng)` returns one id."""

    def __init__(self, parts: list[tuple[list[int], list[float], float]]):
        self.ids, weights = [], []
        for ids, w, share in parts:
            total = sum(w)
            self.ids += ids
            weights += [share * x / total for x in w]
        self.cum = list(accumulate(weights))

    def draw(self, rng: random.Random) -> int:
        return rng.choices(self.ids, cum_weights=self.cum)[0]


class Grammar:
    """The toy English. The lexicon and word frequencies are fixed by `seed`.

    Attributes:
        vocab: every token string, specials first; a word's index is its token id.
        lexicon: one row per (word, class): `word`, `pos_tag`, `number` ("sg"/"pl" for nouns
            and verbs), `transitive` (verbs), `lemma`, `ambiguous` (the word has two classes).
        ambiguous_ids: token ids of the words with two classes.

    Example:
        >>> from llmscope.stimuli.toy_grammar import Grammar
        >>> g = Grammar(seed=0)
        >>> len(g.lexicon.word.unique()) >= 600
        True
    """

    def __init__(self, seed: int = 0, rates: Rates = Rates()):
        self.seed, self.rates = seed, rates
        self._rng = random.Random(seed)
        self._rows: list[dict] = []
        self._entries: dict[tuple[str, int], dict] = {}
        self.vocab: list[str] = list(SPECIALS)
        self._id: dict[str, int] = {w: i for i, w in enumerate(SPECIALS)}
        self._other_number: dict[int, int] = {}  # verb form -> the same verb in the other number
        self._build()
        self.lexicon = pd.DataFrame(self._rows)
        classes = self.lexicon.groupby("word").pos_tag.nunique()
        designed = {f for s in lx.NOUN_VERBS_INTRANSITIVE + lx.NOUN_VERBS_TRANSITIVE
                    for f in (s, lx.plural(s))} | set(lx.ADJ_VERBS) | set(lx.ADJ_ADVERBS)
        if set(classes.index[classes > 1]) != designed:
            raise ValueError(f"unplanned ambiguous forms: {set(classes.index[classes > 1]) ^ designed}")
        self.ambiguous_ids = frozenset(self._id[w] for w in classes.index[classes > 1])
        self.lexicon["ambiguous"] = self.lexicon.word.map(classes > 1)

    # ---- lexicon ------------------------------------------------------------------------
    def _word(self, word: str, tag: int, number: int = 0, lemma: str = "",
              transitive: bool | None = None) -> int:
        """Add a (word, class) entry; return the word's id. A word may reappear in its class
        only with the same features ("it" is a subject and an object pronoun)."""
        row = dict(word=word, pos_tag=TAGS[tag], number=NUMBERS[number], transitive=transitive,
                   lemma=lemma or word)
        if (word, tag) in self._entries:
            if self._entries[word, tag] != row:
                raise ValueError(f"{word!r} is listed twice as {TAGS[tag]}")
            return self._id[word]
        if word not in self._id:
            self._id[word] = len(self.vocab)
            self.vocab.append(word)
        self._entries[word, tag] = row
        self._rows.append(row)
        return self._id[word]

    def _weights(self, n: int) -> list[float]:
        ranks = list(range(1, n + 1))
        self._rng.shuffle(ranks)
        return [r ** -ZIPF for r in ranks]

    def _nouns(self, stems: list[str]) -> dict[int, list[int]]:
        return {SG: [self._word(s, NOUN, SG, s) for s in stems],
                PL: [self._word(lx.plural(s), NOUN, PL, s) for s in stems]}

    def _verbs(self, stems: list[str], transitive: bool) -> dict[int, list[int]]:
        sg = [self._word(lx.third_person(s), VERB, SG, s, transitive) for s in stems]
        pl = [self._word(s, VERB, PL, s, transitive) for s in stems]
        self._other_number.update(zip(sg, pl))
        self._other_number.update(zip(pl, sg))
        return {SG: sg, PL: pl}

    def _build(self) -> None:
        r = self.rates
        stems = {k: getattr(lx, k) for k in (
            "NOUNS", "NOUN_VERBS_INTRANSITIVE", "NOUN_VERBS_TRANSITIVE", "VERBS_INTRANSITIVE",
            "VERBS_TRANSITIVE", "ADJ_VERBS", "ADJ_ADVERBS", "ADJECTIVES", "ADVERBS_PREVERBAL",
            "ADVERBS_FINAL", "NAMES")}
        w = {k: self._weights(len(v)) for k, v in stems.items()}
        nv = stems["NOUN_VERBS_INTRANSITIVE"] + stems["NOUN_VERBS_TRANSITIVE"]
        nv_w = w["NOUN_VERBS_INTRANSITIVE"] + w["NOUN_VERBS_TRANSITIVE"]

        nouns, nv_nouns = self._nouns(stems["NOUNS"]), self._nouns(nv)
        self._noun = {n: _Pool([(nouns[n], w["NOUNS"], 1 - r.noun_verb_in_nouns),
                                (nv_nouns[n], nv_w, r.noun_verb_in_nouns)]) for n in (SG, PL)}
        self._vowel_initial = {i for n in (SG, PL) for i in nouns[n] + nv_nouns[n]
                               if self.vocab[i][0] in "aeiou"}
        self._name = _Pool([([self._word(n, NOUN, SG) for n in stems["NAMES"]], w["NAMES"], 1.0)])

        adjectives = [self._word(a, ADJ) for a in stems["ADJECTIVES"]]
        adj_verbs = [self._word(a, ADJ) for a in stems["ADJ_VERBS"]]
        adj_advs = [self._word(a, ADJ) for a in stems["ADJ_ADVERBS"]]
        self._adjective = _Pool([
            (adjectives, w["ADJECTIVES"], 1 - r.adj_verb_in_adjectives - r.adj_adverb_in_adjectives),
            (adj_verbs, w["ADJ_VERBS"], r.adj_verb_in_adjectives),
            (adj_advs, w["ADJ_ADVERBS"], r.adj_adverb_in_adjectives)])
        self._vowel_initial |= {i for i in adjectives + adj_verbs + adj_advs
                                if self.vocab[i][0] in "aeiou"}

        verbs_i = self._verbs(stems["VERBS_INTRANSITIVE"], False)
        verbs_t = self._verbs(stems["VERBS_TRANSITIVE"], True)
        nv_i = self._verbs(stems["NOUN_VERBS_INTRANSITIVE"], False)
        nv_t = self._verbs(stems["NOUN_VERBS_TRANSITIVE"], True)
        av = self._verbs(stems["ADJ_VERBS"], True)
        self._intransitive = {n: _Pool([
            (verbs_i[n], w["VERBS_INTRANSITIVE"], 1 - r.noun_verb_in_verbs),
            (nv_i[n], w["NOUN_VERBS_INTRANSITIVE"], r.noun_verb_in_verbs)]) for n in (SG, PL)}
        self._transitive = {n: _Pool([
            (verbs_t[n], w["VERBS_TRANSITIVE"], 1 - r.noun_verb_in_verbs - r.adj_verb_in_verbs),
            (nv_t[n], w["NOUN_VERBS_TRANSITIVE"], r.noun_verb_in_verbs),
            (av[n], w["ADJ_VERBS"], r.adj_verb_in_verbs)]) for n in (SG, PL)}
        self._copula = {SG: self._word("is", VERB, SG, "be"), PL: self._word("are", VERB, PL, "be")}
        self._other_number.update({self._copula[SG]: self._copula[PL],
                                   self._copula[PL]: self._copula[SG]})

        pre = [self._word(a, ADV) for a in stems["ADVERBS_PREVERBAL"]]
        final = [self._word(a, ADV) for a in stems["ADVERBS_FINAL"]]
        adv_adj = [self._word(a, ADV) for a in stems["ADJ_ADVERBS"]]
        self._adverb_pre = _Pool([(pre, w["ADVERBS_PREVERBAL"], 1.0)])
        self._adverb_final = _Pool([
            (pre + final, w["ADVERBS_PREVERBAL"] + w["ADVERBS_FINAL"], 1 - r.adj_adverb_in_adverbs),
            (adv_adj, w["ADJ_ADVERBS"], r.adj_adverb_in_adverbs)])

        self._article = self._word(lx.ARTICLE, DET)
        self._article_vowel = self._word(lx.ARTICLE_BEFORE_VOWEL, DET)
        both = [self._word(d, DET) for d in lx.DETERMINERS["both"]]
        self._determiner = {}
        for n, key in ((SG, "sg"), (PL, "pl")):
            own = ([self._article] if n == SG else []) + [self._word(d, DET) for d in lx.DETERMINERS[key]]
            # "the" (first of `both`) is as frequent as all other determiners together.
            self._determiner[n] = _Pool([(both[:1], [1.0], 0.5),
                                         (both[1:] + own, self._weights(len(both) - 1 + len(own)), 0.5)])

        self._subject_pronoun = {n: [self._word(p, PRON) for p in lx.PRONOUNS_SUBJECT[k]]
                                 for n, k in ((SG, "sg"), (PL, "pl"))}
        self._object_pronoun = [self._word(p, PRON) for p in lx.PRONOUNS_OBJECT]
        self._relative = self._word(lx.RELATIVE_PRONOUN, PRON)
        front = [self._word(p, ADP) for p in lx.PREPOSITIONS_FRONTABLE]
        other = [self._word(p, ADP) for p in lx.PREPOSITIONS_OTHER]
        self._front_prep = _Pool([(front, self._weights(len(front)), 1.0)])
        self._prep = _Pool([(front + other, self._weights(len(front) + len(other)), 1.0)])
        conj = [self._word(c, CCONJ) for c in lx.CONJUNCTIONS]
        self._conjunction = _Pool([(conj, self._weights(len(conj)), 1.0)])
        self._period, self._exclaim, self._comma = (
            self._word(lx.PUNCTUATION[k], PUNCT) for k in ("end", "exclaim", "comma"))

    # ---- sentences: lists of tokens [word id, tag, number, controller index or -1] ---------
    def _number(self, rng: random.Random) -> int:
        return SG if rng.random() < 0.5 else PL

    def _noun_phrase(self, rng: random.Random, s: list, number: int) -> int:
        """Append DET (ADJ) NOUN, or a name if singular; return the noun's index."""
        if number == SG and rng.random() < self.rates.name:
            s.append([self._name.draw(rng), NOUN, SG, -1])
            return len(s) - 1
        det = self._determiner[number].draw(rng)
        words = [self._adjective.draw(rng)] if rng.random() < self.rates.adjective else []
        noun = self._noun[number].draw(rng)
        if det == self._article and (words[0] if words else noun) in self._vowel_initial:
            det = self._article_vowel
        s.append([det, DET, 0, -1])
        s.extend([a, ADJ, 0, -1] for a in words)
        s.append([noun, NOUN, number, -1])
        return len(s) - 1

    def _object(self, rng: random.Random, s: list) -> None:
        if rng.random() < self.rates.object_pronoun:
            s.append([rng.choice(self._object_pronoun), PRON, 0, -1])
        else:
            self._noun_phrase(rng, s, self._number(rng))

    def _prep_phrase(self, rng: random.Random, s: list, pool: _Pool) -> None:
        s.append([pool.draw(rng), ADP, 0, -1])
        self._noun_phrase(rng, s, self._number(rng))

    def _verb_phrase(self, rng: random.Random, s: list, subject: int, full: bool = True) -> None:
        """Append a verb that agrees with `s[subject]` and its complements."""
        r, number, x = self.rates, s[subject][2], rng.random()
        if x < r.copula:
            s.append([self._copula[number], VERB, number, subject])
            s.append([self._adjective.draw(rng), ADJ, 0, -1])
            return
        if x < r.copula + r.intransitive:
            s.append([self._intransitive[number].draw(rng), VERB, number, subject])
            if full and rng.random() < r.verb_pp:
                self._prep_phrase(rng, s, self._prep)
        else:
            s.append([self._transitive[number].draw(rng), VERB, number, subject])
            self._object(rng, s)
        if full and rng.random() < r.final_adverb:
            s.append([self._adverb_final.draw(rng), ADV, 0, -1])

    def _clause(self, rng: random.Random, s: list, front: bool) -> None:
        r = self.rates
        if front and rng.random() < r.front:
            self._prep_phrase(rng, s, self._front_prep)
            if rng.random() < r.front_comma:
                s.append([self._comma, PUNCT, 0, -1])
        number = self._number(rng)
        if rng.random() < r.pronoun_subject:
            s.append([rng.choice(self._subject_pronoun[number]), PRON, number, -1])
            subject = len(s) - 1
        else:
            subject = self._noun_phrase(rng, s, number)
            x = rng.random()
            if x < r.subject_pp:
                self._prep_phrase(rng, s, self._prep)
            elif x < r.subject_pp + r.subject_rc:
                s.append([self._relative, PRON, 0, -1])
                if rng.random() < r.object_rc:
                    inner = self._noun_phrase(rng, s, self._number(rng))
                    s.append([self._transitive[s[inner][2]].draw(rng), VERB, s[inner][2], inner])
                else:
                    self._verb_phrase(rng, s, subject, full=False)
        if rng.random() < r.preverbal_adverb:
            s.append([self._adverb_pre.draw(rng), ADV, 0, -1])
        self._verb_phrase(rng, s, subject)

    def _sentence(self, rng: random.Random) -> list[list[int]]:
        s: list[list[int]] = []
        self._clause(rng, s, front=True)
        if rng.random() < self.rates.conjunction:
            s.append([self._conjunction.draw(rng), CCONJ, 0, -1])
            self._clause(rng, s, front=False)
        s.append([self._exclaim if rng.random() < self.rates.exclaim else self._period, PUNCT, 0, -1])
        return s

    # ---- documents: tokens [word id, tag, number, controller, sent_pos, repeat_of] --------
    def _document(self, rng: random.Random, max_tokens: int) -> list[list[int]]:
        doc = [[BOS_ID, BOS, 0, -1, -1, -1]]
        sentences: list[tuple[int, int]] = []  # (start, end) positions in doc
        while True:
            if sentences and rng.random() < self.rates.repeat:
                self._repeat(rng, doc, sentences, max_tokens)
            s = self._sentence(rng)
            start = len(doc)
            if start + len(s) > max_tokens:
                return doc
            doc.extend([w, t, n, c + start if c >= 0 else -1, i, -1]
                       for i, (w, t, n, c) in enumerate(s))
            sentences.append((start, len(doc)))

    def _repeat(self, rng: random.Random, doc: list, sentences: list, max_tokens: int) -> None:
        """Copy 1 to 3 consecutive earlier sentences (at most MAX_REPEAT tokens) to the end."""
        first = rng.randrange(len(sentences))
        last = min(first + rng.randint(1, 3), len(sentences)) - 1
        while last >= first and sentences[last][1] - sentences[first][0] > MAX_REPEAT:
            last -= 1
        if last < first:
            return
        src, end = sentences[first][0], sentences[last][1]
        offset = len(doc) - src
        if len(doc) + end - src > max_tokens:
            return
        for j in range(first, last + 1):
            a, b = sentences[j]
            sentences.append((a + offset, b + offset))
        doc.extend([w, t, n, c + offset if c >= 0 else -1, sp, p]
                   for p, (w, t, n, c, sp, _) in enumerate(doc[src:end], start=src))

    # ---- public API ---------------------------------------------------------------------
    def sample(self, n_docs: int, seed: int, max_tokens: int = 128) -> pd.DataFrame:
        """Sample documents; one row per token, each document's `<bos>` row included.

        Columns: `doc`, `pos` (the model's token position: `<bos>` is 0), `token` (id in
        `vocab`), `word`, `pos_tag`, `number` ("sg"/"pl" on nouns and verbs, else ""),
        `is_repeat` (the token belongs to a verbatim copy of an earlier span), `repeat_of`
        (position of the token it copies, -1 if none), `sent_pos` (position in its sentence,
        -1 for `<bos>`), `controller` (for verbs, the position of the subject noun or
        pronoun it agrees with; -1 otherwise), `ambiguous` (the form has two classes).

        Example:
            >>> from llmscope.stimuli.toy_grammar import Grammar
            >>> df = Grammar(0).sample(3, seed=0, max_tokens=64)
            >>> int(df.groupby("doc").size().max()) <= 64
            True
        """
        rng = random.Random(seed)
        rows = [(d, p, *tok) for d in range(n_docs)
                for p, tok in enumerate(self._document(rng, max_tokens))]
        a = np.array(rows, dtype=np.int64).reshape(-1, 8)
        words = np.array(self.vocab, dtype=object)
        tag = a[:, 3]
        number = np.where((tag == NOUN) | (tag == VERB), a[:, 4], 0)
        return pd.DataFrame({
            "doc": a[:, 0], "pos": a[:, 1], "token": a[:, 2], "word": words[a[:, 2]],
            "pos_tag": np.array(TAGS, dtype=object)[tag],
            "number": np.array(NUMBERS, dtype=object)[number],
            "is_repeat": a[:, 7] >= 0, "repeat_of": a[:, 7], "sent_pos": a[:, 6],
            "controller": a[:, 5], "ambiguous": np.isin(a[:, 2], list(self.ambiguous_ids)),
        })

    def encode(self, n_docs: int, seed: int, max_tokens: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """The fast path used for training: token ids `[n_docs, max_tokens]`, right-padded with
        `<pad>` (id 0), and `repeat_of` of the same shape (-1 where not copied or padding).
        The same documents as `sample(n_docs, seed, max_tokens)`.

        Example:
            >>> from llmscope.stimuli.toy_grammar import Grammar
            >>> ids, repeat_of = Grammar(0).encode(2, seed=0, max_tokens=64)
            >>> ids.shape, int(ids[0, 0])
            ((2, 64), 1)
        """
        rng = random.Random(seed)
        ids = np.full((n_docs, max_tokens), PAD_ID, dtype=np.int64)
        repeat_of = np.full((n_docs, max_tokens), -1, dtype=np.int64)
        for d in range(n_docs):
            doc = self._document(rng, max_tokens)
            ids[d, :len(doc)] = [t[0] for t in doc]
            repeat_of[d, :len(doc)] = [t[5] for t in doc]
        return ids, repeat_of

    def minimal_pairs(self, n: int, seed: int) -> pd.DataFrame:
        """Agreement minimal pairs from fresh sentences, half of them with an attractor.

        Columns: `prefix` (the sentence up to the verb, words joined by spaces; no `<bos>`),
        `good` (the verb as generated), `bad` (the same verb in the other number), `number`
        (of the controller), `attractor` (a noun of the opposite number precedes the verb),
        `distance` (tokens from the controller to the verb).

        Example:
            >>> from llmscope.stimuli.toy_grammar import Grammar
            >>> pairs = Grammar(0).minimal_pairs(10, seed=0)
            >>> int(pairs.attractor.sum())
            5
        """
        rng = random.Random(seed)
        wanted = {True: n // 2, False: n - n // 2}
        rows = []
        while wanted[True] or wanted[False]:
            s = self._sentence(rng)
            i = rng.choice([j for j, t in enumerate(s) if t[1] == VERB])
            word, _, number, controller = s[i]
            attractor = any(t[1] == NOUN and t[2] != number and j != controller
                            for j, t in enumerate(s[:i]))
            if not wanted[attractor]:
                continue
            wanted[attractor] -= 1
            rows.append(dict(prefix=" ".join(self.vocab[t[0]] for t in s[:i]),
                             good=self.vocab[word], bad=self.vocab[self._other_number[word]],
                             number=NUMBERS[number], attractor=attractor,
                             distance=i - controller))
        return pd.DataFrame(rows)

    def fingerprint(self) -> str:
        """A hash of the vocabulary and of sample documents: it changes when this code or these
        settings would write a different language."""
        ids, _ = self.encode(8, seed=0)
        return hashlib.sha256("\n".join(self.vocab).encode() + ids.tobytes()).hexdigest()[:16]

    def config(self) -> dict:
        """The settings that rebuild this grammar: `Grammar.from_config(g.config())`."""
        return {"seed": self.seed, "rates": asdict(self.rates), "fingerprint": self.fingerprint()}

    @classmethod
    def from_config(cls, config: dict) -> Grammar:
        """The grammar that `config()` describes; raises ValueError if this code no longer
        writes the same language (so an organism's card no longer matches its training data).

        Example:
            >>> from llmscope.stimuli.toy_grammar import Grammar
            >>> g = Grammar(3)
            >>> Grammar.from_config(g.config()).vocab == g.vocab
            True
        """
        g = cls(config["seed"], Rates(**config["rates"]))
        if g.fingerprint() != config["fingerprint"]:
            raise ValueError("the grammar code has changed since this config was written: "
                             f"fingerprint {g.fingerprint()} != {config['fingerprint']}")
        return g
