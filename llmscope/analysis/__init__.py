"""The neuroscientist's toolkit: one module per family, each returning a :class:`~llmscope.Result`.

Analyses read recordings and never run the model; experiments (whose names say so) run it
under interventions. Shared rules live in :mod:`~llmscope.analysis.trials` (which rows and
labels take part) and :mod:`~llmscope.analysis.stats` (bootstrap, FDR, argument checks).
"""
