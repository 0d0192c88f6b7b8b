"""Live widgets: two-way anywidget components that ask the kernel only for what they show.

* :class:`AttentionMap` — every attention head on a prompt; a focused head; token shading.
* :class:`AblationPanel` — gain sliders on units, live next-token distribution and metric.
* :class:`Raster` — units x tokens spikes with a live threshold, a unit's tuning and top examples on click.

Widgets are built on :mod:`llmscope.widgets.base` (commands that never crash, a ``version``
the page follows) and :mod:`llmscope.widgets.wire` (arrays as binary buffers); their
front-end sources are in the repository's ``widgets/`` folder, built into ``llmscope/static/``.
"""

from llmscope.widgets.ablation import AblationPanel
from llmscope.widgets.attention import AttentionMap
from llmscope.widgets.raster import Raster

__all__ = ["AttentionMap", "AblationPanel", "Raster"]
