"""The engine: how experiments run the model. Analyses that run it are short configurations of it.

* :mod:`~llmscope.engine.lesions` — the stacked lesion runner (:func:`~llmscope.engine.lesions.run`)
  over a :class:`~llmscope.engine.lesions.Battery` of behaviours, with its random-unit control
  (:func:`~llmscope.engine.lesions.random_sets`, :func:`~llmscope.engine.lesions.same_sites`);
* :mod:`~llmscope.engine.passes` — partial forward passes (start at a block, stop before the
  unembedding, read out rows, fused activations);
* :mod:`~llmscope.engine.routes` — each short cut checked once per model against a plain pass;
* :mod:`~llmscope.engine.cache` — the one per-model cache, dropped when the weights change.

The lesion atlas, ``confirm_by_lesion``, ``lesion_test`` and the organism's lesion fact are
configurations of :func:`~llmscope.engine.lesions.run` (which units, which controls, which
behaviours, which statistic); key-neuron attribution runs on the passes and routes.
"""

from llmscope.engine.cache import forget, memo
from llmscope.engine.lesions import Battery, Behaviour, Lesion, Sums, random_sets, run, same_sites

__all__ = ["Battery", "Behaviour", "Lesion", "Sums", "run", "random_sets", "same_sites", "memo", "forget"]
