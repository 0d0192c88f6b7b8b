"""The neuroscientist's toolkit: one module per family, each returning a :class:`~llmscope.Result`.

Analyses read recordings and never run the model: :mod:`~llmscope.analysis.tuning` (tuning
curves, selectivity, FDR, shuffle control), :mod:`~llmscope.analysis.examples` (top examples),
:mod:`~llmscope.analysis.spikes` (spikes, raster, PSTH). Experiments run the model and say so:
:mod:`~llmscope.analysis.effect`, :mod:`~llmscope.analysis.patching`, and
:mod:`~llmscope.analysis.heads` (``localize_heads`` reads attention patterns from one forward
pass per batch; ``confirm_by_lesion`` lesions). Shared rules live in
:mod:`~llmscope.analysis.trials` (which rows and labels take part),
:mod:`~llmscope.analysis.stats` (argument checks, FDR, bootstrap) and
:mod:`~llmscope.analysis.responses` (one number per unit and token, in blocks).
"""
