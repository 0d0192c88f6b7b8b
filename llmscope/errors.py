"""Errors: every error llmscope raises is an :class:`LLMScopeError`, so one ``except`` catches them.

Each subclass also derives from the built-in exception a Python user would expect
(``ValueError`` for a bad value, ``LookupError`` for a missing model), and every message names
the bad value and the valid choices. A missing column is a :class:`ColumnError`, a
``KeyError`` whose message prints as plain text (no quotes around it).

Example:
    >>> try:
    ...     raise ColumnError("no column 'pos'; the trial table has ['seq', 'token']")
    ... except LLMScopeError as exc:
    ...     print(exc)
    no column 'pos'; the trial table has ['seq', 'token']
"""

from __future__ import annotations


class LLMScopeError(Exception):
    """The base of every error llmscope raises."""


class SiteError(LLMScopeError, ValueError):
    """An unknown site, a layer out of range, or a unit index out of range."""


class PromptError(LLMScopeError, ValueError):
    """An empty prompt, bad token ids, or a prompt longer than the model's context."""


class InterventionError(LLMScopeError, ValueError):
    """An intervention that cannot apply to this model or input (raised before any hook)."""


class RecordingError(LLMScopeError, ValueError):
    """A store that is not a recording, is damaged, or belongs to other model/stimuli/sites; or an
    argument that record() or a Recording cannot use."""


class ModelNotAvailable(LLMScopeError, LookupError):
    """A model name that cannot be loaded here (offline and not bundled, or not installed)."""


class AnalysisError(LLMScopeError, ValueError):
    """Arguments an analysis cannot work with: a wrong type, a value out of range, too little data."""


class WidgetError(LLMScopeError, ValueError):
    """A malformed message from a widget's page, or a widget that cannot be built (missing bundle)."""


class ColumnError(LLMScopeError, KeyError):
    """A trial-table column that does not exist (or cannot be used as asked)."""

    def __str__(self) -> str:  # KeyError would print its message in quotes
        return str(self.args[0]) if self.args else ""


__all__ = ["LLMScopeError", "SiteError", "PromptError", "InterventionError", "RecordingError",
           "ModelNotAvailable", "AnalysisError", "ColumnError", "WidgetError"]
