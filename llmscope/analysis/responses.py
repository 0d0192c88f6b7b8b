"""Unit responses as analyses read them: one number per unit and token, streamed in row blocks.

A neuron's response is its activation. A unit with more than one value per token (a head of
``attn.L``, whose ``hook_z`` slice is ``[d_head]``) responds with the L2 norm of its values:
how strongly the head writes at that token.

Example:
    >>> X = scalar(rec, "attn.1")          # [n_tokens, n_heads] float32
    >>> X.shape == (len(rec), 4)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from llmscope.errors import SiteError

if TYPE_CHECKING:
    from llmscope.recording import Recording

BLOCK_BYTES = 64 << 20  # float32 bytes held per block: bounded memory whatever the recording's size


def _reduce(data: np.ndarray) -> np.ndarray:
    if data.ndim == 2:
        return data
    return np.sqrt(np.square(data).reshape(*data.shape[:2], -1).sum(-1))


def check_site(recording: "Recording", site: str) -> str:
    """The recorded site's short name, or a SiteError listing the recorded sites."""
    if not isinstance(site, str):
        raise SiteError(f"a site is named by a string such as 'mlp.0'; got {site!r}. "
                        f"This recording holds {recording.sites}.")
    return recording.site(site).name


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
        yield rows, _reduce(part.responses(s.name, units=None if units is None else idx))


def _mask(n: int, rows: slice) -> np.ndarray:
    keep = np.zeros(n, dtype=bool)
    keep[rows] = True
    return keep


def scalar(recording: "Recording", site: str, units: Sequence[int] | None = None) -> np.ndarray:
    """All responses of ``site``'s units as one float32 array ``[n_tokens, n_units]``."""
    s = recording.site(site)
    n = len(s.check_units(units))
    out = np.empty((len(recording), n), dtype=np.float32)
    for rows, block in blocks(recording, site, units):
        out[rows] = block
    return out


__all__ = ["scalar", "blocks", "check_site", "BLOCK_BYTES"]
