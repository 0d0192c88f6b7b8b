"""Doctests of the package (``pytest --doctest-modules llmscope``) run in one shared namespace:

``model`` (the organism grammar-2l), ``stim`` (4 grammar documents), ``rec`` (an in-memory
recording of mlp.0, mlp.1, attn.0 and attn.1 on ``stim``), ``smol`` (SmolLM2-135M), and
``llmscope``, ``np``, ``pd``, ``torch`` and the public names of llmscope.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def _doctest_objects() -> dict:
    import numpy as np
    import pandas as pd
    import torch

    import llmscope
    from llmscope.stimuli import agreement, grammar, induction, ioi, templates

    model = llmscope.load("grammar-2l")
    stim = grammar(model, n_docs=4, seed=0)
    rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"], dtype="float32", progress=False)
    public = {name: getattr(llmscope, name) for name in llmscope.__all__}
    return dict(public, llmscope=llmscope, np=np, pd=pd, torch=torch, model=model, stim=stim, rec=rec,
                smol=llmscope.load("smollm2-135m"), grammar=grammar, agreement=agreement,
                induction=induction, ioi=ioi, templates=templates)


@pytest.fixture(autouse=True)
def _doctest_namespace(request, doctest_namespace) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        own = request.node.dtest.globs  # a module's own names win: wire.decode is not llmscope.decode
        for name in own:  # the namespace is one dict for the session: drop what an earlier module put there
            doctest_namespace.pop(name, None)
        doctest_namespace.update({k: v for k, v in request.getfixturevalue("_doctest_objects").items() if k not in own})
