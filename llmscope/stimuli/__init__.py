"""Stimuli and the paradigms that build them (see :mod:`llmscope.stimuli.core`).

Paradigms, each returning a :class:`Stimuli` whose trial table carries its labels:

* :func:`from_texts`: free English, tagged by spaCy (``pos_tag``, ``word``, ``word_start``);
  :func:`sentences`: 100 bundled everyday sentences, tagged the same way;
* :func:`templates`: English template sentences with gold POS tags;
* :func:`induction`: random tokens repeated twice (``is_repeat``, ``half``);
* :func:`ioi`: indirect-object identification prompts (``io_id``, ``s_id``, ``is_target``);
* :func:`grammar`, :func:`agreement`: the organisms' toy English with gold labels, and its
  number-agreement minimal pairs (``good_id``, ``bad_id``, ``is_target``).

Showing stimuli to a model is :func:`llmscope.recording.record`.
"""

from llmscope.stimuli.core import Stimuli, token_table, token_texts
from llmscope.stimuli.english import from_texts, sentences
from llmscope.stimuli.induction import induction
from llmscope.stimuli.ioi import ioi
from llmscope.stimuli.organism import agreement, grammar
from llmscope.stimuli.templates import templates

__all__ = ["Stimuli", "token_table", "token_texts", "from_texts", "sentences", "templates", "induction", "ioi", "grammar", "agreement"]
