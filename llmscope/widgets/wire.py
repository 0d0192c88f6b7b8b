"""The kernel's half of the wire protocol every llmscope widget speaks (the page's half is
``widgets/src/wire.js``).

Arrays cross to the page as binary buffers, never as JSON lists. :func:`array` describes one
as ``{"buffer": memoryview, "dtype", "shape"}`` (uint8, int32, float16 or float32,
little-endian, C order), optionally packed to the lower triangle of its last two axes
(``layout="tril"``: a causal attention pattern is half zeros) and zlib-compressed
(``compression="deflate"``: the browser inflates it natively, with no library). A reply is
JSON plus buffers: :func:`split_buffers` lifts every buffer out of a nested reply and records
its path, and the page puts each back where it was. :func:`unpack` reads a payload back in
Python (for static figures and tests).

Example:
    >>> import numpy as np
    >>> from llmscope.widgets.wire import array, split_buffers, unpack
    >>> a = array(np.array([[255, 0], [128, 64]], dtype=np.uint8), tril=True)
    >>> a["dtype"], a["shape"], a["layout"], bytes(a["buffer"])
    ('uint8', [2, 2], 'tril', b'\\xff\\x80@')
    >>> unpack(a).tolist()
    [[255, 0], [128, 64]]
    >>> data, paths, buffers = split_buffers({"pattern": a, "layer": 1})
    >>> data["pattern"]["buffer"], paths, len(buffers)
    (None, [['pattern', 'buffer']], 1)
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import torch

from llmscope.errors import WidgetError

DTYPES = ("uint8", "int32", "float16", "float32")
FAST_ZLIB_ABOVE = 2**20  # bytes: larger payloads are compressed at zlib level 1
Path = list[str | int]


def array(values: np.ndarray | torch.Tensor, *, tril: bool = False, compress: bool = False) -> dict[str, Any]:
    """An array as the page decodes it: ``{"buffer", "dtype", "shape"}`` plus the optional
    ``"layout": "tril"`` (only ``values[..., i, :i + 1]`` for each row ``i``, rows in order)
    and ``"compression": "deflate"``. ``shape`` is always the full shape."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if not isinstance(values, np.ndarray):
        raise WidgetError.Type(f"array() sends a numpy array or a torch tensor, got {type(values).__name__}.")
    if tril and (values.ndim < 2 or values.shape[-1] != values.shape[-2]):
        raise WidgetError(f"tril=True needs square matrices in the last two axes, got shape {values.shape}.")
    flat = values
    if tril:
        rows, cols = np.tril_indices(values.shape[-1])
        flat = values[..., rows, cols]
    return packed(flat, values.shape, tril=tril, compress=compress)


def packed(values: np.ndarray, shape: tuple[int, ...], *, tril: bool = False, compress: bool = False) -> dict[str, Any]:
    """A payload of values already laid out as the page reads them: ``values`` holds the array
    of ``shape`` in C order, or with ``tril`` only the lower triangle of its last two axes, row
    by row (what :func:`array` makes of a full array). zlib runs at its default level up to
    ``FAST_ZLIB_ABOVE`` bytes and at level 1 beyond: a long prompt's patterns are megabytes a
    head, where level 1 was about four times faster for about 40% more bytes (SmolLM2 at 2,048
    tokens: 9 ms and 151 kB a head, against 36 ms and 108 kB)."""
    if values.dtype.name not in DTYPES:
        raise WidgetError.Unknown(f"array() sends dtypes {list(DTYPES)}; got {values.dtype.name} (cast it first: "
                                  "uint8 codes for pictures, float16 for values).")
    n = shape[-1] if tril else 1
    size = int(np.prod(shape[:-2], dtype=np.int64)) * n * (n + 1) // 2 if tril else int(np.prod(shape, dtype=np.int64))
    if values.size != size:
        raise WidgetError(f"{values.size} values do not fill an array of shape {tuple(shape)}"
                          f"{' (lower triangle)' if tril else ''}: {size} do.")
    raw = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
    out: dict[str, Any] = {"dtype": values.dtype.name, "shape": [int(d) for d in shape]}
    level = 1 if raw.nbytes > FAST_ZLIB_ABOVE else zlib.Z_DEFAULT_COMPRESSION
    out["buffer"] = memoryview(zlib.compress(raw, level) if compress else raw)
    if tril:
        out["layout"] = "tril"
    if compress:
        out["compression"] = "deflate"
    return out


def unpack(payload: dict[str, Any]) -> np.ndarray:
    """The array an :func:`array` payload describes (what the page decodes, done in Python)."""
    raw = bytes(payload["buffer"])
    if payload.get("compression") == "deflate":
        raw = zlib.decompress(raw)
    flat = np.frombuffer(raw, dtype=np.dtype(payload["dtype"]).newbyteorder("<"))
    shape = tuple(payload["shape"])
    if payload.get("layout") != "tril":
        return flat.reshape(shape)
    full = np.zeros(shape, dtype=flat.dtype)
    rows, cols = np.tril_indices(shape[-1])
    full[..., rows, cols] = flat.reshape(*shape[:-2], -1)
    return full


def split_buffers(data: Any, path: Path | None = None) -> tuple[Any, list[Path], list[memoryview]]:
    """``data`` with every ``memoryview``/``bytes`` replaced by None, the paths where they were,
    and the buffers themselves, in the same order (lists and dicts are walked; the input is not
    changed)."""
    path = path or []
    if isinstance(data, (memoryview, bytes, bytearray)):
        return None, [path], [memoryview(data)]
    if isinstance(data, dict):
        items = [(k, split_buffers(v, [*path, k])) for k, v in data.items()]
        return ({k: d for k, (d, _, _) in items}, [p for _, (_, ps, _) in items for p in ps],
                [b for _, (_, _, bs) in items for b in bs])
    if isinstance(data, (list, tuple)):
        parts = [split_buffers(v, [*path, i]) for i, v in enumerate(data)]
        return [d for d, _, _ in parts], [p for _, ps, _ in parts for p in ps], [b for _, _, bs in parts for b in bs]
    return data, [], []


def reply_bytes(reply: Any, buffers: list[memoryview]) -> int:
    """What a reply costs on the websocket: its JSON and its buffers (framing left out)."""
    return len(json.dumps(reply, separators=(",", ":")).encode()) + sum(b.nbytes for b in buffers)


__all__ = ["array", "packed", "unpack", "split_buffers", "reply_bytes", "DTYPES"]
