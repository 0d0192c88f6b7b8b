"""Sparse autoencoders: train them on a recording, score them, and use their features as units.

* :class:`SAE` (``model.py``): the autoencoder, SAELens's names, shapes and architectures;
* :func:`train_sae` (``train.py``): training streamed from a recording's zarr store, seeded, resumable;
* :func:`evaluate` (``metrics.py``): L0, FVU, CE loss recovered, dead and dense features;
* :func:`record_features` (``features.py``): the features as a recording of the site ``"sae:<site>"``;
* ``edits.py``: lesion, gain and steer features through their decoder directions, splice the SAE in;
* ``scoring.py``: features, neurons and random directions scored against gold labels (F1);
* ``io.py``: SAELens's on-disk layout (``cfg.json`` + ``sae_weights.safetensors``).
"""

from llmscope.sae.model import SAE

__all__ = ["SAE"]
