"""Replications of the seeds' studies as pipelines: ``python -m llmscope.replicate seed002 --model M``.

* :mod:`~llmscope.replicate.seed002` — "Spotting key neurons in grammar perception".
"""

from llmscope.replicate.seed002 import Seed002, seed002

STUDIES = {"seed002": seed002}

__all__ = ["seed002", "Seed002", "STUDIES"]
