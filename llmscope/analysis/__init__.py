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
