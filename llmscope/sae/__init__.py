"""Sparse autoencoders: train them on a recording, score them, and use their features as units.

* :class:`SAE` (``model.py``): the autoencoder, with SAELens's names, shapes and architectures;
* :func:`train_sae` (``train.py``): training streamed from a recording's zarr store, seeded, resumable;
* :func:`evaluate` (``metrics.py``): L0, FVU, CE loss recovered, dead and dense features;
* :func:`record_features` (``features.py``): the features as a recording of the site ``"sae:<site>"``;
* ``edits.py``: lesion, gain and steer features through their decoder directions, or splice the SAE in;
* ``scoring.py``: features, neurons and random directions scored against gold labels (F1);
* ``io.py``: SAELens's on-disk layout (``cfg.json`` + ``sae_weights.safetensors``).

Example:
    >>> import llmscope
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> from llmscope.sae import train_sae
    >>> train_sae(rec, "mlp.1", width=1024, k=16, epochs=1, progress=False).d_sae
    1024
"""

from llmscope.sae.edits import gain_features, lesion_features, splice, steer_features
from llmscope.sae.features import record_features
from llmscope.sae.metrics import SAEMetrics, evaluate
from llmscope.sae.model import SAE
from llmscope.sae.train import train_sae

__all__ = ["SAE", "train_sae", "evaluate", "SAEMetrics", "record_features", "lesion_features", "gain_features",
           "steer_features", "splice"]
