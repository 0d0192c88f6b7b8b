"""The neuroscientist's toolkit: one module per family, each returning a :class:`~llmscope.Result`.

Analyses read recordings and never run the model: :mod:`~llmscope.analysis.tuning` (tuning
curves, selectivity, FDR, shuffle control), :mod:`~llmscope.analysis.examples` (top examples),
:mod:`~llmscope.analysis.spikes` (spikes, raster, PSTH), :mod:`~llmscope.analysis.decoding`
(cross-validated probes), :mod:`~llmscope.analysis.geometry` (PCA, RDM/RSA, CKA),
:mod:`~llmscope.analysis.sparsity` and :mod:`~llmscope.analysis.lfp` (field potentials,
spectra, event averages, Granger).

Experiments run the model and say so: :mod:`~llmscope.analysis.effect`,
:mod:`~llmscope.analysis.patching`, :mod:`~llmscope.analysis.atlas` (the lesion atlas),
:mod:`~llmscope.analysis.heads` (``localize_heads`` reads attention patterns from one forward
pass per batch; ``confirm_by_lesion`` lesions), :mod:`~llmscope.analysis.lens` (logit lens,
surprise), :mod:`~llmscope.analysis.correlates` (runs the model once for behaviour) and
:mod:`~llmscope.analysis.key_neurons` (attributions, seed 002).

Shared rules live in :mod:`~llmscope.stimuli.trials` (which rows and labels take part),
:mod:`~llmscope.analysis.stats` (FDR, bootstrap), :mod:`~llmscope.checks` (argument checks),
:mod:`~llmscope.analysis.events` (event rows, shuffled events, peri-event weights) and
:mod:`~llmscope.analysis.responses` (one number per unit and token, in blocks; units of a recording).
"""

from llmscope.analysis.atlas import AtlasResult, Battery, LesionTest, battery, lesion_atlas, lesion_test
from llmscope.analysis.attribution import ConfirmResult, PatchingConfirmation, PatchingScreen, ScreenResult
from llmscope.analysis.correlates import CorrelatesResult, behaviour_correlates
from llmscope.analysis.decoding import DecodingCurveResult, DecodingResult, decode, decode_curve
from llmscope.analysis.effect import EffectResult, effect
from llmscope.analysis.examples import ExamplesResult, top_examples
from llmscope.analysis.geometry import CKAResult, PCAResult, RDMResult, RSAResult, cka, pca, rdm, rsa
from llmscope.analysis.heads import HeadScores, LesionConfirmation, confirm_by_lesion, localize_heads
from llmscope.analysis.key_neurons import Attributions, KeyNeurons, attributions, key_neurons
from llmscope.analysis.lens import LensResult, Surprise, logit_lens, surprise
from llmscope.analysis.lfp import (EventAverageResult, FieldPotential, GrangerResult, SpectrumResult, event_average,
                                   field_potential, granger, lfp_spectrum)
from llmscope.analysis.patching import PatchingResult, patching
from llmscope.analysis.sparsity import SparsityResult, sparsity
from llmscope.analysis.spikes import PSTHResult, Spikes, psth, spikes
from llmscope.analysis.tuning import TuningResult, tuning
from llmscope.behaviour import EvaluationResult, MetricResult, TokenLossResult

__all__ = [
    # analyses of a recording
    "tuning", "top_examples", "spikes", "psth", "decode", "decode_curve", "pca", "rdm", "rsa", "cka", "sparsity",
    "field_potential", "lfp_spectrum", "event_average", "granger",
    # experiments (they run the model)
    "effect", "patching", "battery", "Battery", "lesion_atlas", "localize_heads", "confirm_by_lesion",
    "behaviour_correlates", "logit_lens", "surprise", "key_neurons", "attributions", "lesion_test",
    # what they return
    "TuningResult", "ExamplesResult", "Spikes", "PSTHResult", "DecodingResult", "DecodingCurveResult", "PCAResult",
    "RDMResult", "RSAResult", "CKAResult", "SparsityResult", "FieldPotential", "SpectrumResult", "EventAverageResult",
    "GrangerResult", "EffectResult", "PatchingResult", "AtlasResult", "HeadScores", "CorrelatesResult",
    "LensResult", "Surprise", "KeyNeurons", "MetricResult", "EvaluationResult", "TokenLossResult",
    "LesionConfirmation", "LesionTest", "Attributions", "ScreenResult", "ConfirmResult", "PatchingScreen",
    "PatchingConfirmation",
]
