"""Word lists of the toy English and their inflection.

Content words are real English stems, inflected by `plural` (nouns) and `third_person`
(verbs). Ambiguous stems are listed once and enter two classes, as in English: "walk" is a
singular NOUN after "the" and a plural VERB after "the dogs".

Example:
    >>> from llmscope.stimuli.lexicon import plural, third_person
    >>> plural("box"), third_person("cry")
    ('boxes', 'cries')
"""

from __future__ import annotations

IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "woman": "women", "mouse": "mice", "goose": "geese",
    "wolf": "wolves", "thief": "thieves", "leaf": "leaves", "shelf": "shelves",
    "knife": "knives", "scarf": "scarves", "foot": "feet", "tooth": "teeth",
}


def plural(noun: str) -> str:
    """The plural of a noun stem: "dog" -> "dogs", "box" -> "boxes", "city" -> "cities"."""
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    return _add_s(noun)


def third_person(verb: str) -> str:
    """The third-person singular of a verb stem: "run" -> "runs", "catch" -> "catches"."""
    return _add_s(verb)


def _add_s(stem: str) -> str:
    if stem.endswith(("s", "sh", "ch", "x", "z")):
        return stem + "es"
    if stem.endswith("y") and stem[-2] not in "aeiou":
        return stem[:-1] + "ies"
    return stem + "s"


def _words(text: str) -> list[str]:
    return text.split()


NOUNS = _words("""
dog cat bird horse cow pig goat duck frog fox wolf bear lion tiger rabbit mouse owl snake
whale shark bee ant spider monkey donkey eagle crow goose hen lamb puppy kitten turtle
zebra camel parrot beetle child man woman girl boy baby teacher doctor farmer king queen
sailor soldier student driver baker pilot nurse friend neighbor stranger poet singer
artist clown judge chef thief wizard giant uncle aunt sister brother mother father cousin
tree house car book table chair door window box cup bottle bag ball hat shoe coat key lamp
clock bed boat ship train bus bike road bridge river lake hill mountain forest garden field
farm city village tower castle church school street wall roof floor stone rock apple bread
cake egg cookie banana carrot lemon flower leaf seed cloud star island beach valley cave
pond fence gate ladder basket blanket pillow candle mirror picture letter card coin ring
crown sword shield drum guitar violin song story idea game toy puzzle map ticket pencil
notebook desk shelf knife fork spoon plate bowl pot pan jar glass kettle oven engine wheel
rope chain tent flag barrel bucket comb button pocket jacket scarf glove boot sock wagon
rocket robot computer phone radio camera kitchen office room hall library museum market
station harbor palace temple cottage barn cabin hotel park foot tooth
""")

# Names are singular nouns without a determiner ("near the trees max runs").
NAMES = _words("""
alice bob carol dave emma finn grace henry iris jack kate liam mia noah olivia paul quinn
ruby sam tara victor wendy yara zack leo nora oscar ella hugo ivy felix luna omar ravi
sofia theo vera
""")

# Stems that are both NOUN and VERB ("the walks" / "the dogs walk"), split by transitivity.
NOUN_VERBS_INTRANSITIVE = _words("""
walk run jump dance sleep smile laugh cry swim rest shout nod sigh wait yawn dive float
slide fall sail talk race dream sneeze cough
""")
NOUN_VERBS_TRANSITIVE = _words("""
call kick push pull kiss hug watch visit paint cook drink touch hunt ride climb plan catch
guide lift mark chase trap wash sketch punch
""")

VERBS_INTRANSITIVE = _words("""
arrive vanish wander glow shine shiver tremble giggle whisper sing hide sit stand kneel
listen blink frown grin pause relax snore stumble rise appear hurry linger wobble sparkle
bounce crawl fly creep drift hop march skip roar bark growl howl chirp squeak buzz hum pray
""")
VERBS_TRANSITIVE = _words("""
see find like want take make know bring carry follow meet hear build eat read write keep
break fix grab hit hold need notice praise protect remember forget admire borrow buy sell
choose collect cover describe destroy discover enjoy feed greet hate ignore invite join lose
miss obey own pass pay prefer prepare reach receive rescue save scare seize send shake share
show steal teach tease throw thank trust understand wake warn wear
""")

# Stems that are both ADJ and (transitive) VERB: "the clean room" / "the boys clean the room".
ADJ_VERBS = _words("clean open empty warm dry free clear calm slow smooth cool tame")
# Forms that are both ADJ and ADV: "the fast dog" / "the dog runs fast".
ADJ_ADVERBS = _words("fast hard late early high low deep straight")

ADJECTIVES = _words("""
big small tall short old young new red blue green yellow black white brown happy sad angry
brave quiet loud kind cruel clever silly strange lazy busy hungry tired sleepy funny gentle
proud shy wild rich poor heavy tiny huge bright dark soft rough sharp sweet sour bitter
fresh golden wooden shiny dusty muddy noisy lucky polite rude curious famous friendly honest
nervous patient pretty ugly little round square thin thick wide narrow ancient modern purple
gray pink cheerful careful hidden gloomy cozy fierce
""")

# Adverbs that may stand before the verb ("the dog often runs") or after the verb phrase.
ADVERBS_PREVERBAL = _words("""
often always never sometimes usually rarely seldom suddenly quickly slowly quietly gently
happily sadly eagerly calmly boldly carefully soon
""")
# Adverbs only after the verb phrase ("the dog runs again").
ADVERBS_FINAL = _words("""
loudly softly badly again here there today tonight now twice together alone everywhere
""")

DETERMINERS = {
    "sg": _words("this every each one"),
    "pl": _words("these those many several few two three four"),
    "both": _words("the some no my our your their his its"),
}
PRONOUNS_SUBJECT = {"sg": _words("he she it"), "pl": _words("they we")}
PRONOUNS_OBJECT = _words("him them us me it")
# "a" becomes "an" before a vowel.
ARTICLE, ARTICLE_BEFORE_VOWEL = "a", "an"
RELATIVE_PRONOUN = "that"
PREPOSITIONS_FRONTABLE = _words("""
near under over behind beside by across around inside above below beyond among along
beneath within through in on at
""")
PREPOSITIONS_OTHER = _words("with without from into toward against of for about")
CONJUNCTIONS = _words("and but or so yet while because although though unless whereas")
PUNCTUATION = {"end": ".", "exclaim": "!", "comma": ","}
