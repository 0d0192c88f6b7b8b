"""Tests and doctests run offline. Each doctest (``pytest --doctest-modules llmscope``) runs in its
module's own namespace and imports and builds what it uses, as a reader copying it would."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
