"""llmscope: a neuroscience lab for language models, inside Jupyter.

A model is shown stimuli, its units are recorded, the recording is analysed, and results are
seen as figures and live widgets; interventions change the model only inside a ``with`` block.
Every error llmscope raises is an :class:`LLMScopeError` (its kinds are in :mod:`llmscope.errors`).

Example:
    >>> import llmscope
    >>> model = llmscope.load("grammar-2l")
    >>> llmscope.site(model, "mlp.1")
    Site('mlp.1', hook='blocks.1.mlp.hook_post', 512 neurons, shape=(512,))
"""

from llmscope import analysis, errors, models, stimuli
from llmscope.analysis import (battery, behaviour_correlates, cka, confirm_by_lesion, decode, decode_curve, effect,
                               event_average, field_potential, granger, key_neurons, lesion_atlas, lfp_spectrum,
                               localize_heads, logit_lens, patching, pca, psth, rdm, rsa, sparsity, spikes, surprise,
                               top_examples, tuning)
from llmscope.behaviour import evaluate, logit_diff, metric, token_loss
from llmscope.errors import LLMScopeError
from llmscope.interventions import gain, intervene, lesion, patch, steer
from llmscope.models import available, load
from llmscope.recording import Recording, record
from llmscope.result import Result
from llmscope.sites import Site, site
from llmscope.stimuli import Stimuli
from llmscope.widgets import AblationPanel, AttentionMap, Raster

__all__ = [
    "models", "load", "available",
    "Site", "site",
    "stimuli", "Stimuli",
    "intervene", "lesion", "gain", "steer", "patch",
    "record", "Recording",
    "metric", "evaluate", "token_loss", "logit_diff", "Result",
    "analysis", "tuning", "top_examples", "spikes", "psth", "decode", "decode_curve", "pca", "rdm", "rsa", "cka",
    "sparsity", "field_potential", "lfp_spectrum", "event_average", "granger",
    "effect", "patching", "battery", "lesion_atlas", "localize_heads", "confirm_by_lesion", "behaviour_correlates",
    "logit_lens", "surprise", "key_neurons",
    "errors", "LLMScopeError",
    "AttentionMap", "AblationPanel", "Raster",
]
