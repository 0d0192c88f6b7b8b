"""Errors: every error llmscope raises is an :class:`LLMScopeError`, so one ``except`` catches them.

Each domain (sites, prompts, recordings, analyses...) has one class, a ``ValueError``. Each
domain class carries three *kinds* that also derive from the built-in a Python user would try:

==================  ====================================  =====================================
kind                raised for                             also a
==================  ====================================  =====================================
``X.Type``          an argument of the wrong type          ``TypeError``
``X.Range``         an index or number out of its range    ``IndexError``
``X.Unknown``       a name that is not one of the choices   ``KeyError`` (so a ``LookupError``)
==================  ====================================  =====================================

so ``except SiteError``, ``except IndexError`` and ``except LLMScopeError`` all catch
``SiteError.Range``. Every message names the bad value and the valid choices, and prints as
plain text (a ``KeyError`` would quote it).

Example:
    >>> from llmscope import LLMScopeError
    >>> from llmscope.errors import SiteError
    >>> try:
    ...     raise SiteError.Range("layer 9 out of range: valid layers are 0..1")
    ... except IndexError as exc:
    ...     print(type(exc).__qualname__, "-", exc, isinstance(exc, LLMScopeError))
    SiteError.Range - layer 9 out of range: valid layers are 0..1 True
"""

from __future__ import annotations

_KINDS = (
    ("Type", TypeError, "an argument of the wrong type"),
    ("Range", IndexError, "an index or a number out of its range"),
    ("Unknown", KeyError, "a name that is not one of the valid choices"),
)


class LLMScopeError(Exception):
    """The base of every error llmscope raises."""

    Type: type["LLMScopeError"]
    Range: type["LLMScopeError"]
    Unknown: type["LLMScopeError"]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "_kind_of" in cls.__dict__:  # a kind of a domain class: it has no kinds of its own
            return
        for name, builtin, what in _KINDS:
            kind = type(name, (cls, builtin), {
                "_kind_of": cls, "__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}.{name}",
                "__doc__": f"{cls.__name__} for {what} (also a {builtin.__name__})."})
            setattr(cls, name, kind)

    def __str__(self) -> str:  # plain text even when the class is also a KeyError
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({', '.join(map(repr, self.args))})"


class SiteError(LLMScopeError, ValueError):
    """An unknown site, a layer out of range, a unit index out of range, or a site of another model."""


class PromptError(LLMScopeError, ValueError):
    """An empty prompt, bad token ids, a prompt longer than the model's context, or stimuli of another model."""


class InterventionError(LLMScopeError, ValueError):
    """An intervention that cannot apply to this model or input (raised before any hook)."""


class RecordingError(LLMScopeError, ValueError):
    """A store that is not a recording, is damaged, or belongs to other model/stimuli/sites; or an
    argument that record() or a Recording cannot use."""


class ModelNotAvailable(LLMScopeError, KeyError):
    """A model name that cannot be loaded here (offline and not bundled, or not installed)."""


class AnalysisError(LLMScopeError, ValueError):
    """Arguments an analysis cannot work with: a wrong type, a value out of range, too little data,
    non-finite responses."""


class WidgetError(LLMScopeError, ValueError):
    """A malformed message from a widget's page, or a widget that cannot be built (missing bundle)."""


class ColumnError(LLMScopeError, KeyError):
    """A trial-table column that does not exist (or cannot be used as asked)."""


class SAEError(LLMScopeError, ValueError):
    """A sparse autoencoder that cannot be trained, loaded or used as asked: a bad training
    argument, a damaged or foreign file, or an SAE of another model or site."""


__all__ = ["LLMScopeError", "SiteError", "PromptError", "InterventionError", "RecordingError",
           "ModelNotAvailable", "AnalysisError", "ColumnError", "WidgetError", "SAEError"]
