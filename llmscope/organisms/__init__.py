"""Model organisms: small transformers trained here on a toy English whose grammar we know.

`Grammar` generates the language with gold labels; `verify(name)` recomputes an organism's
measured facts (`read_card(name)` has the committed ones); ``python -m
llmscope.organisms.train NAME`` retrains one. Load an organism with ``llmscope.load(NAME)``.

Example:
    >>> from llmscope.organisms import Grammar
    >>> Grammar(seed=0).sample(1, seed=0).pos_tag[0]
    'BOS'
"""

from llmscope.stimuli.toy_grammar import Grammar

_FACTS = ("verify", "failures", "read_card", "THRESHOLDS")


def __getattr__(name: str):
    # The facts module needs torch and scikit-learn: load it on first use only.
    if name in _FACTS:
        from llmscope.organisms import facts

        return getattr(facts, name)
    raise AttributeError(f"module 'llmscope.organisms' has no attribute {name!r}")


__all__ = ["Grammar", *_FACTS]
