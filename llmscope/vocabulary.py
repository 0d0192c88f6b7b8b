"""One vocabulary: every parameter name of the public API, what it means, and its default rule.

A concept has one name in every function (``units=`` for which units, ``where=`` for which rows,
``n_controls=`` for how many control draws, ``window=`` for tokens around an event). A test walks
every public function and fails on a parameter that is not in :data:`VOCABULARY`.

Names used before this vocabulary still work for one release, with a ``FutureWarning``
naming the new one (:func:`renamed`).

Example:
    >>> from llmscope.vocabulary import VOCABULARY, renamed
    >>> VOCABULARY["where"][:44]
    'the one row selector: a boolean trial-table '
    >>> @renamed(n_perm="n_controls")
    ... def f(*, n_controls=1):
    ...     return n_controls
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     f(n_perm=5), str(w[0].message)[:46]
    (5, 'f(n_perm=...) is now f(n_controls=...); n_perm')
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable, TypeVar

from llmscope.errors import AnalysisError

F = TypeVar("F", bound=Callable[..., Any])

VOCABULARY: dict[str, str] = {
    # what a call works on (positional nouns)
    "model": "the model (a TransformerBridge from llmscope.load) the call runs, or that its arguments must fit",
    "stimuli": "Stimuli shown to the model (a string or a list of strings is free text)",
    "recording": "a Recording the analysis reads (llmscope.record or Recording.open)",
    "source": "where a call takes its data when several kinds are accepted (a Recording or a result; a prompt)",
    "battery": "a Battery of behaviours (analysis.atlas.battery)",
    "result": "a Result of an earlier analysis",
    "name": "a name: of a model to load, of stimuli, of a site",
    # units and rows
    "units": "which units: a site ('mlp.1'), a site and indices (('mlp.1', [3, 7])), a list of these, or a unit "
             "table / Result indexed by (site, unit), such as tuning(...).top(8); None: every unit recorded",
    "sites": "whole sites a call records, patches or reads as hooks (record, patch, patching, logit_lens)",
    "site": "one whole site (steer adds its vector there)",
    "other_units": "units of the other recording (default: the same as units)",
    "label": "a trial-table column of categories (pos_tag, number, is_repeat...)",
    "where": "the one row selector: a boolean trial-table column name or a query on its columns "
             "(\"pos_tag == 'NOUN'\"); rows where it is true take part, or are the events",
    "window": "tokens around an event: an int n (n before and n after) or (before, after)",
    "include_bos": "True to analyse the rows of the tokens the model prepends (default False: BOS rows out)",
    "seq": "one sequence of the stimuli, by index",
    "positions": "token positions (negative ones count from the end)",
    # interventions
    "mode": "how a unit is silenced: 'zero', 'mean' or 'resample'",
    "reference": "what a mean or resample lesion draws its values from: a Recording or Stimuli",
    "factor": "a gain: 0 silences, 1 leaves intact, above 1 stimulates",
    "vector": "a steering direction with the site's per-token shape",
    "alpha": "a strength: the steering scale; or a significance level",
    "interventions": "lesion, gain, steer or patch objects",
    "intervention": "one intervention or a list of them",
    "indices": "unit indices of the site named just before",
    # behaviour
    "metric": "what is measured of the model's predictions: 'loss', 'correct', 'confidence', 'entropy', "
              "'logit_diff', a callable fn(logits, stimuli), or a mapping of column -> such a metric",
    "behaviours": "names of a battery's behaviours",
    "behaviour": "one behaviour's name",
    "by": "a column (or columns) to group or rank by",
    "align": "where a loss is written: 'target' (the predicted token, the default) or 'context'",
    "good": "the trial-table column of the correct next-token ids",
    "bad": "the trial-table column of the wrong next-token ids",
    # controls and statistics
    "control": "which control the call runs beside the real measure (None: none)",
    "n_controls": "how many control draws (shuffles, permutations, random unit sets, null shifts); capped by "
                  "what one draw costs (llmscope.checks.draws)",
    "n_boot": "bootstrap resamples of an interval (sequences are resampled as clusters)",
    "seed": "seeds every random draw of the call; the same seed gives the same result",
    "folds": "cross-validation folds (whole sequences: grouped by seq)",
    "target": "which token's label is decoded: 'current' or 'next'",
    "threshold": "a spike threshold (see method)",
    "thresholds": "several thresholds",
    "method": "how a quantity is computed (named choices per function)",
    "style": "how a figure draws its data (named choices per figure)",
    "measure": "which measure a figure shows (named choices per figure)",
    "k": "how many: units per class, examples, set size",
    "ks": "several k",
    "n": "how many items a builder makes or top() returns",
    # attributes of the nouns (constructors and fields)
    "df": "a Result's table",
    "meta": "a Result's parameters and provenance",
    "data": "a Result's array-shaped extras, one xarray Dataset",
    "ascending": "rank from the lowest value instead of the highest",
    "lengths": "real tokens per sequence",
    "tokens": "the trial table (one row per token), or a slice of token columns",
    "pad_id": "the id padding short sequences",
    "hook": "a TransformerLens hook name",
    "kind": "what a site is: 'mlp', 'attn', 'resid', 'hook' or 'sae'; how an SAE is trained: 'topk', 'batchtopk', "
            "'relu_l1' or 'jumprelu'",
    "layer": "a block's index",
    "shape": "a site's per-token shape",
    "unit": "what one unit of a site is: 'neuron', 'head', 'dim'",
    "group": "the zarr group holding a recording",
    "rows": "row indices into a recording's trial table",
    "path": "a folder on disk",
    "labelled": "return a DataFrame labelled by trial rows and units instead of a bare array",
    "seqs": "sequences: lists of token ids, or indices of the stimuli's sequences",
    "labels": "per-token label columns (a DataFrame or a mapping of column -> values)",
    "n_bos": "how many leading tokens of each sequence the model prepends",
    "start_seq": "the first sequence",
    "logits": "a batch's logits [batch, pos, vocab]",
    "matrix": "a sparse [units, tokens] spike matrix",
    # running
    "batch_size": "sequences per forward pass (train_sae: tokens per training step)",
    "progress": "show a progress bar (TQDM_DISABLE=1 hides every bar)",
    "device": "a torch device ('cpu')",
    "store": "a folder for a zarr store on disk (None: in memory)",
    "dtype": "how responses are stored or returned ('float16' or 'float32')",
    "truncate": "keep the last n_ctx tokens of a longer prompt (with a warning)",
    "prepend_bos": "prepend the model's BOS token (None: the model's default)",
    "prompt": "a prompt: a string, a list of strings or a token tensor",
    "spec": "a site name ('mlp.1') or a TransformerLens hook name",
    # stimuli builders
    "n_docs": "documents of the toy grammar",
    "n_pairs": "minimal pairs",
    "n_seqs": "sequences",
    "half_len": "tokens in each half of an induction sequence",
    "max_tokens": "the longest document, BOS included",
    "grammar_seed": "the toy grammar's lexicon seed (organisms are trained on 0)",
    "corrupt": "the corrupted twin of clean stimuli (the same prompts, the answer-giving token changed); a "
               "builder given corrupt=True returns clean Stimuli whose .corrupt holds it",
    "texts": "English texts, one sequence each",
    "tag": "tag parts of speech with spaCy",
    "bos": "start each sequence with what the model prepends",
    "ids": "token ids",
    "columns": "extra per-token columns",
    # analysis-specific settings
    "other": "a second Recording to compare with",
    "n_components": "principal components",
    "negative": "how negative responses count in sparsity: 'clip', 'abs' or 'keep'",
    "nperseg": "Welch segment length (tokens)",
    "maxlag": "Granger lags (tokens of the past)",
    "sort_by": "a trial-table column whose categories order units by preference",
    "context": "tokens shown on each side of an example",
    "group_size": "units lesioned together",
    "n_sample": "how many of the groups to lesion (None: all)",
    "min_effect": "the smallest effect that counts as breaking a behaviour",
    "stack": "stack several lesions into one forward pass (exact; False: one pass per lesion)",
    "pass_tokens": "padded tokens per forward pass",
    "screen": "estimate every unit's effect from gradients first ('atp' or 'atp*'), then confirm the top exactly",
    "confirm": "how many top units (or cells) of a screen are confirmed exactly, per behaviour",
    "category": "one category of a label (a class such as 'NOUN')",
    "per_head": "patch each head of an attn site on its own",
    "clean": "the clean Stimuli of a patching experiment",
    "steps": "integration points of Integrated Gradients",
    "top_frac": "the share of a layer's neurons kept per sample",
    "label_of": "whose label counts: the predicted ('next') or the current token",
    "match": "a column pairs are matched on for a control",
    "tail": "tokens appended after the critical one",
    "unit_offset": "which token after the critical one a unit's surprise is read at",
    # sparse autoencoders (llmscope.sae; d_in and architecture are SAELens's names)
    "sae": "a sparse autoencoder (llmscope.sae.SAE) of one site; its features are the units of the site 'sae:<site>'",
    "width": "how many features an SAE has (SAELens's d_sae)",
    "d_in": "values per token at the site an SAE reads",
    "architecture": "how an SAE computes its features at inference: 'standard', 'topk' or 'jumprelu' (SAELens's)",
    "activations": "a site's values per token, [..., d_in] (what an SAE encodes)",
    "features": "an SAE's feature values per token, [..., width] (what it decodes)",
    "penalty": "the weight of an SAE's sparsity penalty in its training loss",
    "epochs": "passes over the training rows",
    "lr": "the optimiser's (peak) learning rate",
    "checkpoint": "where a training run keeps its state to resume: None (beside the recording), False, or a folder",
}


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Accept the old keyword names of a function for one release: each is passed on under its new
    name with a ``FutureWarning``; giving both is an error.

    An old name may also be a parameter of the new signature (``site`` + ``units`` became ``units`` +
    ``indices``): it is read the old way only when its slot is already taken (given by position, or
    by another old name), as in the old call ``spikes(rec, "mlp.0", units=[1, 2])``.

    Example:
        >>> from llmscope.vocabulary import renamed
        >>> @renamed(subset="where")
        ... def g(*, where=None):
        ...     return where
        >>> g(where="is_repeat")
        'is_repeat'
    """
    def wrap(fn: F) -> F:
        params = list(inspect.signature(fn).parameters)
        reused = [old for old in old_to_new if old in params]  # handled first: their slot is about to fill
        order = reused + [old for old in old_to_new if old not in params]

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            taken = set(params[:len(args)]) | {new for old, new in old_to_new.items()
                                               if old in kwargs and old not in params}
            for old in order:
                new = old_to_new[old]
                if old not in kwargs or (old in params and old not in taken):
                    continue
                if new in kwargs or new in params[:len(args)]:
                    raise AnalysisError.Type(f"{fn.__name__}() got {old}= and {new}=; {old} is the old name "
                                             f"of {new}: pass {new} only.")
                warnings.warn(f"{fn.__name__}({old}=...) is now {fn.__name__}({new}=...); {old} will be "
                              "removed in the next release.", FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        inner.__renamed__ = dict(old_to_new)  # type: ignore[attr-defined]
        return inner  # type: ignore[return-value]

    return wrap


__all__ = ["VOCABULARY", "renamed"]
