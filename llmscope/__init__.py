"""llmscope: a neuroscience lab for language models, inside Jupyter.

A model is shown stimuli, its units are recorded, the recording is analysed, and results are
seen as figures and live widgets; interventions change the model only inside a ``with`` block.
Every error llmscope raises is an :class:`LLMScopeError`.

Example:
    >>> import llmscope
    >>> model = llmscope.load("grammar-2l")
    >>> llmscope.site(model, "mlp.1")
    Site('mlp.1', hook='blocks.1.mlp.hook_post', 512 neurons, shape=(512,))
"""

from llmscope import analysis, models, stimuli
from llmscope.analysis.atlas import battery, lesion_atlas
from llmscope.analysis.correlates import behaviour_correlates
from llmscope.analysis.decoding import decode, decode_curve
from llmscope.analysis.effect import effect
from llmscope.analysis.examples import ExamplesResult, top_examples
from llmscope.analysis.geometry import cka, pca, rdm, rsa
from llmscope.analysis.heads import confirm_by_lesion, localize_heads
from llmscope.analysis.key_neurons import key_neurons
from llmscope.analysis.lens import logit_lens, surprise
from llmscope.analysis.lfp import event_average, field_potential, granger, lfp_spectrum
from llmscope.analysis.sparsity import sparsity
from llmscope.analysis.spikes import Spikes, psth, spikes
from llmscope.analysis.tuning import TuningResult, tuning
from llmscope.analysis.patching import patching
from llmscope.behaviour import evaluate, logit_diff, metric, token_loss
from llmscope.errors import (AnalysisError, ColumnError, InterventionError, LLMScopeError, ModelNotAvailable,
                             PromptError, RecordingError, SiteError, WidgetError)
from llmscope.interventions import gain, intervene, lesion, patch, steer
from llmscope.models import available, load
from llmscope.recording import IncompleteRecordingWarning, Recording, record
from llmscope.result import Result
from llmscope.sites import Site, site, unit_index
from llmscope.stimuli import Stimuli
from llmscope.tokens import tokenize
from llmscope.widgets import AblationPanel, AttentionMap, Raster

__all__ = [
    "models", "load", "available",
    "Site", "site", "unit_index",
    "stimuli", "Stimuli", "tokenize",
    "intervene", "lesion", "gain", "steer", "patch",
    "record", "Recording", "IncompleteRecordingWarning",
    "token_loss", "logit_diff", "metric", "evaluate", "Result",
    "analysis", "effect", "patching", "battery", "lesion_atlas", "localize_heads", "confirm_by_lesion", "spikes", "psth", "Spikes",
    "tuning", "TuningResult", "top_examples", "ExamplesResult",
    "decode", "decode_curve", "pca", "rdm", "rsa", "cka", "sparsity", "behaviour_correlates",
    "field_potential", "lfp_spectrum", "event_average", "granger", "logit_lens", "surprise", "key_neurons",
    "LLMScopeError", "SiteError", "PromptError", "InterventionError", "RecordingError", "ModelNotAvailable",
    "AnalysisError", "ColumnError", "WidgetError",
    "AttentionMap", "AblationPanel", "Raster",
]
