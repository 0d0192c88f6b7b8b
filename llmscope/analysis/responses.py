"""Unit responses as analyses read them: one number per unit and token, streamed in row blocks.

A neuron's response is its activation. A unit with more than one value per token (a head of
``attn.L``, whose ``hook_z`` slice is ``[d_head]``) responds with the L2 norm of its values:
how strongly the head writes at that token.

Example:
    >>> import llmscope
    >>> from llmscope.analysis.responses import scalar
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> X = scalar(rec, "attn.1")          # [n_tokens, n_heads] float32
    >>> X.shape == (len(rec), 4)
    True
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator, Sequence

import numpy as np

import pandas as pd

from llmscope.checks import finite
from llmscope.errors import AnalysisError, SiteError
from llmscope.recording import IncompleteRecordingWarning, Recording
from llmscope import identity
from llmscope.sites import Site, UnitsLike, bound_model, parse_units

BLOCK_BYTES = 64 << 20  # float32 bytes held per block: bounded memory whatever the recording's size


def check_finite(recording: "Recording", site: Site, data: np.ndarray, first_row: int = 0,
                 units: Sequence[int] | None = None) -> np.ndarray:
    """``data`` (rows ``first_row...`` of ``site``'s responses) if every value is finite, else an
    AnalysisError naming the site, the first bad row (its sequence and position) and unit.
    One pass when the data are clean (float16: over the bits, ~2 GB/s; no conversion).

    Example:
        >>> import numpy as np
        >>> import llmscope
        >>> from llmscope.analysis.responses import AnalysisError, check_finite
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> bad = np.array([[0.0, np.nan]], dtype=np.float32)
        >>> try:
        ...     check_finite(rec, rec.site("mlp.0"), bad, 3)
        ... except AnalysisError as exc:
        ...     print(str(exc)[:97])
        the responses of mlp.0 hold 1 non-finite value (NaN or inf), the first at row 3 (seq 0, pos 3, to
    """
    if data.dtype == np.float16:  # a float16 is finite when its exponent bits are not all set
        clean = data.size == 0 or int((data.view(np.uint16) & 0x7FFF).max()) < 0x7C00
    else:
        clean = bool(np.isfinite(data).all())
    if clean:
        return data
    bad = np.argwhere(~np.isfinite(data))
    row = first_row + int(bad[0][0])
    unit = int(bad[0][1]) if data.ndim > 1 else 0
    unit = unit if units is None else int(np.asarray(units)[unit])
    at = recording.tokens.iloc[row]
    finite(data[bad[0][0]:bad[0][0] + 1], f"the responses of {site.name}",
           rows=[f"{row} (seq {int(at['seq'])}, pos {int(at['pos'])}, token {str(at['text'])!r})"],
           units=None if data.ndim < 2 else np.full(data.shape[1], unit))
    return data


def _reduce(data: np.ndarray) -> np.ndarray:
    if data.ndim == 2:
        return data
    return np.sqrt(np.square(data).reshape(*data.shape[:2], -1).sum(-1))


def check_recording(recording: Any, analysis: str) -> dict[str, Any]:
    """``recording``'s provenance for an analysis's ``.meta`` (model, stimuli, how complete);
    an AnalysisError if it is not a Recording, an IncompleteRecordingWarning if it is incomplete."""
    if not isinstance(recording, Recording):
        raise AnalysisError.Type(f"{analysis}() reads a Recording (llmscope.record or Recording.open); "
                            f"got {type(recording).__name__}.")
    if not recording.complete:
        warnings.warn(f"{analysis}: the recording {recording.name!r} is incomplete ({recording.done_seqs} of "
                      f"{recording.n_seqs} sequences); analysing the {len(recording)} tokens it holds. Finish it "
                      "with record(...) on the same store.", IncompleteRecordingWarning, stacklevel=3)
    return {"model": recording.model_name, "fingerprint": recording.fingerprint.to_dict(),
            "stimuli": recording.name, "complete": recording.complete,
            "recorded_seqs": recording.done_seqs, "stimuli_seqs": recording.n_seqs}


def check_site(recording: "Recording", site: str) -> str:
    """The recorded site's short name, or a SiteError listing the recorded sites."""
    if not isinstance(site, str):
        raise SiteError.Type(f"a site is named by a string such as 'mlp.0'; got {site!r}. "
                        f"This recording holds {recording.sites}.")
    return recording.site(site).name


def recorded_sites(recording: "Recording", site: str | Sequence[str]) -> list[str]:
    """One recorded site name or a non-empty list of them -> their short names, each once, in
    order; a SiteError names the recorded sites.

    Example:
        >>> import llmscope
        >>> from llmscope.analysis.responses import recorded_sites
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> recorded_sites(rec, ["mlp.1", "blocks.0.mlp.hook_post", "mlp.1"])
        ['mlp.1', 'mlp.0']
    """
    names = [site] if isinstance(site, str) else site
    if not isinstance(names, (list, tuple)) or not names:
        raise SiteError.Type(f"site must be a recorded site name or a non-empty list of them; got {site!r}. "
                        f"This recording holds {recording.sites}.")
    return list(dict.fromkeys(check_site(recording, s) for s in names))


def blocks(recording: "Recording", site: str, units: Sequence[int] | None = None,
           block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(rows, responses [n_rows, n_units] float32)`` over the recording, one block at a time."""
    s = recording.site(site)
    idx = s.check_units(units)
    row_bytes = 4 * len(idx) * int(np.prod(s.shape[1:], dtype=int))
    step = max(1, block_bytes // max(row_bytes, 1))
    for lo in range(0, len(recording), step):
        rows = slice(lo, min(lo + step, len(recording)))
        part = recording.select(_mask(len(recording), rows))
        data = part.responses(s.name, indices=None if units is None else idx)
        yield rows, _reduce(check_finite(recording, s, data, lo, idx))


def _mask(n: int, rows: slice) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    return keep


def scalar(recording: "Recording", site: str, units: Sequence[int] | None = None) -> np.ndarray:
    """All responses of ``site``'s units as one float32 array ``[n_tokens, n_units]``."""
    s = recording.site(site)
    if len(s.shape) == 1:  # one value per unit: the responses are the answer, read once
        return check_finite(recording, s, recording.responses(s.name, indices=units), 0, s.check_units(units))
    n = len(s.check_units(units))
    out = np.empty((len(recording), n), dtype=np.float32)
    for rows, block in blocks(recording, site, units):
        out[rows] = block
    return out


def resolve(recording: "Recording", units: UnitsLike) -> list[tuple[Site, np.ndarray]]:
    """Units (any form :func:`llmscope.sites.resolve_units` takes) resolved against the recorded
    sites: ``[(Site, sorted unique indices), ...]``; a SiteError names a site not recorded or
    an index out of range.

    Example:
        >>> import llmscope
        >>> from llmscope.analysis.responses import resolve
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> [(s.name, idx.tolist()) for s, idx in resolve(rec, [("mlp.1", [7, 3]), ("mlp.0", 2)])]
        [('mlp.1', [3, 7]), ('mlp.0', [2])]
    """
    if isinstance(units, (list, tuple)) and len(units) == 0:
        raise SiteError(f"no units given; this recording holds {recording.sites}.")
    identity.check(bound_model(units), recording.fingerprint, "these units", "arch", SiteError,
                   "Take units from an analysis of this recording's model.")
    out: dict[str, tuple[Site, np.ndarray]] = {}
    for spec, idx in parse_units(units):
        s = recording.site(spec.name if isinstance(spec, Site) else check_site(recording, spec))
        checked = s.check_units(idx)
        if s.name in out:
            checked = np.concatenate([out[s.name][1], checked])
        out[s.name] = (s, np.unique(checked))
    return list(out.values())


def matrix(recording: "Recording", units: UnitsLike, keep: np.ndarray | None = None) -> tuple[np.ndarray, pd.MultiIndex]:
    """The responses of ``units`` as one float32 array ``[n_kept_rows, n_units]`` (rows where
    ``keep`` is true, all rows if None) and its columns' ``(site, unit)`` MultiIndex.

    Example:
        >>> import llmscope
        >>> from llmscope.analysis.responses import matrix
        >>> from llmscope.stimuli import grammar
        >>> model = llmscope.load("grammar-2l")
        >>> stim = grammar(model, n_docs=4, seed=0)
        >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
        ...                       dtype="float32", progress=False)
        >>> X, index = matrix(rec, [("mlp.1", [7, 3]), ("attn.0", [2])])
        >>> X.shape == (len(rec), 3), index.tolist()
        (True, [('mlp.1', 3), ('mlp.1', 7), ('attn.0', 2)])
    """
    resolved = resolve(recording, units)
    parts = [scalar(recording, s.name, idx) for s, idx in resolved]
    X = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    if keep is not None:
        X = X[np.asarray(keep, dtype=bool)]
    index = pd.MultiIndex.from_tuples([(s.name, int(i)) for s, idx in resolved for i in idx], names=["site", "unit"])
    return X, index


__all__ = ["check_finite", "scalar", "blocks", "recorded_sites", "resolve", "matrix", "check_site", "check_recording", "BLOCK_BYTES"]
