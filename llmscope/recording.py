"""Recordings: the responses of a model's units to stimuli, streamed to a zarr store.

:func:`record` shows the stimuli to the model batch by batch and keeps, for every site, the
activation of every real (unpadded) token: one array ``[n_tokens, *site.shape]`` per site,
aligned row for row with the trial table ``stimuli.tokens``.

A recording lives in a zarr v3 group, in memory (``store=None``) or on disk (a path). Every
array sits at the root and names its axes (zarr ``dimension_names``), so the store is an
xarray Dataset as it stands:

============================  ===================================================================
``zarr.json``                 attrs ``llmscope`` (store format, ``fingerprints``: the recording
                              model's :class:`~llmscope.identity.Fingerprint` under ``model``,
                              sites, dtype, stimuli name and size, llmscope version),
                              ``done_seqs`` and ``columns`` (each trial-table column and how it
                              is stored); once :func:`record` returns, also the consolidated
                              metadata of every array
``<site>``                    ``[n_tokens, *shape]``, fp16 by default, chunked along tokens, raw
                              bytes + a crc32c checksum per chunk; dims ``("token",
                              "<site>.<unit>", ...)``; attr ``written_rows`` (see below)
``<site>.<unit>``, ...        the indices ``0..n-1`` along each unit axis of a site (coordinates)
``<column>``                  the trial table, one 1-D array per column, dims ``("token",)``
``.llmscope-recording.lock``  locked while :func:`record` writes: a second recorder is refused
============================  ===================================================================

On disk, each batch is written before ``done_seqs`` is advanced, and zarr writes each
chunk atomically, so an interrupted recording (killed, or stopped by a full disk) resumes
where it stopped when ``record`` is called again with the same path: no row is written twice
or missed. Memory stays bounded by one batch whatever the number of stimuli. A complete
store is returned by ``record`` without taking its lock or writing anything, so a read-only
copy works.

What is read is what was written, and a store is complete only if its rows were written:

- on disk, every chunk of every array (sites, unit indices, trial-table columns) ends with
  its crc32c checksum (zarr v3's ``crc32c`` codec), so bytes changed on disk fail on read
  with a :class:`~llmscope.errors.RecordingError` naming the site or column and the chunk; a
  chunk file deleted or cut short is caught by its size (raw bytes + 4) when the store is
  opened, and on read (a recording in memory has no disk to damage it, and no checksums);
- completeness is not the counter alone: after a batch's rows are written, each site array's
  own metadata records how many rows it holds (``written_rows``, the ledger), and only then
  does the root's ``done_seqs`` advance. :meth:`Recording.open` refuses a store whose
  ``done_seqs`` claims rows that some site's ledger does not hold (a counter raised by hand,
  or a damaged store), and ``record`` resumes such a store after the sequences every site
  holds;
- the model is the one that made it: ``fingerprints.model`` samples every parameter tensor
  (:mod:`llmscope.identity`), so ``Recording.open(path, model=...)`` and a resume refuse a model
  with other weights, another training checkpoint of the same model included. Prints of other
  weights a recording depends on (an SAE whose features a site holds) go beside it, each
  under its own key.

Dimensions: rows are ``token``, one per trial-table row, indexed by the token ids (the
``token`` column): ``ds.sel(token=id)`` picks every occurrence of a token, ``ds.isel(token=...)``
picks rows. Each site has unit axes of its own, named after it: ``mlp.L.neuron``,
``resid.L.dim``, ``attn.L.head`` and ``attn.L.d_head`` (a raw hook: ``<hook>.dim``,
``<hook>.axis1``, ...). Per-site axes never clash whatever the sites' sizes, and a reduced
array still says where its units live; to stack sites of one kind, rename their axis, e.g.
``xr.concat([ds[s].rename({f"{s}.neuron": "neuron"}) for s in sites], "site")``.

Dask and xarray read a store in parallel, without llmscope: ``xarray.open_zarr(path)`` opens a
finished store as one lazy Dataset (the sites its variables, the trial-table columns its
coordinates on ``token``). Load a label before grouping by it, as dask cannot group by a lazy
array: ``ds["mlp.0"].groupby(ds.pos_tag.load()).mean("token")``. While a store is being
recorded, or after it stopped early, rows past ``attrs["done_seqs"]`` sequences are NaN;
:meth:`Recording.to_xarray` gives the recorded rows only.

Example:
    >>> import llmscope
    >>> from llmscope import Recording, record
    >>> from llmscope.stimuli import induction
    >>> model = llmscope.load("grammar-2l")
    >>> import tempfile, xarray
    >>> path = tempfile.mkdtemp() + "/ind.zarr"
    >>> ind = record(model, induction(model, 8, 10), ["mlp.0", "attn.1"], store=path, progress=False)
    >>> ind.responses("mlp.0").shape
    (168, 512)
    >>> Recording.open(path).select("is_repeat").responses("attn.1", indices=[0, 3]).shape
    (80, 2, 32)
    >>> xarray.open_zarr(path)["mlp.0"].mean("token").shape
    (512,)
"""

from __future__ import annotations

import errno
import html
import importlib.metadata
import json
import math
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.errors import ZarrUserWarning
from zarr.storage import MemoryStore

from llmscope.errors import ColumnError, RecordingError
from llmscope.identity import Fingerprint, check, fingerprint
from llmscope.progress import progress_bar
from llmscope.sites import Site, SiteError, UnitsLike, parse_units
from llmscope.sites import sites as resolve_sites
from llmscope.checks import choice, count, flag
from llmscope.vocabulary import renamed
from llmscope.stimuli.core import Stimuli, as_stimuli

if TYPE_CHECKING:
    import xarray as xr
    from transformer_lens.model_bridge import TransformerBridge

FORMAT = 3  # 3: crc32c chunks, written_rows ledgers, identity fingerprints; 2: no checksums, 16-row
#             embedding hash; 1: responses/ and tokens/ groups
DTYPES = {"float16": torch.float16, "float32": torch.float32}
CHUNK_BYTES = 1 << 20  # about 1 MB of activations per chunk
_TABLE_CHUNK = 1 << 16
_LOCK = ".llmscope-recording.lock"  # held inside a store on disk while record() writes to it
_CHECKSUM: tuple[Crc32cCodec, ...] = (Crc32cCodec(),)  # ends every chunk on disk (the bench swaps it out to price it)
_LEDGER = "written_rows"  # a site array's attr: how many of its rows were written
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class IncompleteRecordingWarning(UserWarning):
    """A recording that was interrupted: rerun ``record`` with the same store to finish it."""


# ---------------------------------------------------------------- metadata


def _version() -> str:
    try:
        return importlib.metadata.version("llmscope")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _site_meta(s: Site) -> dict[str, Any]:
    return {"name": s.name, "hook": s.hook, "kind": s.kind, "layer": s.layer,
            "shape": list(s.shape), "unit": s.unit}


def _unit_dims(s: dict[str, Any]) -> list[str]:
    """The names of a site's per-token axes: ``<site>.<unit>``, then ``<site>.d_head`` for the
    values of a head, or ``<site>.axis<i>`` for further axes of a raw hook."""
    rest = ["d_head"] if s["kind"] == "attn" else [f"axis{i}" for i in range(1, len(s["shape"]))]
    return [f"{s['name']}.{axis}" for axis in [s["unit"], *rest]]


def _chunk_rows(shape: Sequence[int], dtype: str, n_tokens: int) -> int:
    row_bytes = math.prod(shape) * np.dtype(dtype).itemsize
    return int(np.clip(CHUNK_BYTES // row_bytes, 1, n_tokens))


def _metadata(model: "TransformerBridge", stimuli: Stimuli, sites: list[Site], dtype: str) -> dict[str, Any]:
    return {
        "format": FORMAT, "llmscope_version": _version(),
        "fingerprints": {"model": fingerprint(model).to_dict()},
        "stimuli": {"name": stimuli.name, "n_seqs": stimuli.n_seqs, "n_tokens": len(stimuli),
                    "pad_id": int(stimuli.pad_id)},
        "sites": [{**_site_meta(s), "chunk_rows": _chunk_rows(s.shape, dtype, len(stimuli))} for s in sites],
        "dtype": dtype,
    }


def _valid_meta(meta: Any) -> bool:
    st, sites = meta["stimuli"], meta["sites"]
    return (meta["format"] == FORMAT and Fingerprint.from_dict(meta["fingerprints"]["model"]) is not None
            and isinstance(st["name"], str)
            and all(isinstance(st[k], int) and st[k] >= 1 for k in ("n_seqs", "n_tokens"))
            and isinstance(st["pad_id"], int) and meta["dtype"] in DTYPES and bool(sites)
            and all(all(isinstance(s[k], str) for k in ("name", "hook", "kind", "unit"))
                    and all(isinstance(d, int) and d >= 1 for d in s["shape"])
                    and isinstance(s["chunk_rows"], int) and s["chunk_rows"] >= 1 for s in sites))


_REDO = "record it again into a new path, or delete this store and record it again there"


def _check_meta(meta: Any, where: str) -> dict[str, Any]:
    """The ``llmscope`` attrs of a store, or a RecordingError saying they are damaged."""
    if isinstance(meta, dict) and isinstance(meta.get("format"), int) and meta["format"] != FORMAT:
        raise RecordingError(f"the recording at {where} is in store format {meta['format']}; this llmscope "
                             f"({_version()}) reads format {FORMAT}: {_REDO}.")
    try:
        ok = _valid_meta(meta)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise RecordingError(f"the metadata of the recording at {where} is missing or damaged; {_REDO}.")
    return meta


# ---------------------------------------------------------------- reading arrays, checked


def _where(group: zarr.Group) -> str:
    return "memory" if isinstance(group.store, MemoryStore) else str(group.store.root)


def _chunk_ids(rows: slice | np.ndarray, chunk_rows: int, n: int) -> list[int]:
    """The chunks (along the rows) that hold ``rows``."""
    if isinstance(rows, slice):
        start, stop, _ = rows.indices(n)
        return list(range(start // chunk_rows, -(-stop // chunk_rows))) if stop > start else []
    return np.unique(np.asarray(rows, dtype=np.int64) // chunk_rows).tolist()


def _chunk_size(arr: zarr.Array) -> int | None:
    """The bytes of each chunk file of a raw array (values + 4 per checksum); None when
    compressed (only its presence can be checked)."""
    codecs = arr.metadata.codecs
    if not all(isinstance(c, (BytesCodec, Crc32cCodec)) for c in codecs):
        return None
    return math.prod(arr.chunks) * arr.dtype.itemsize + 4 * sum(isinstance(c, Crc32cCodec) for c in codecs)


def _gone(where: str) -> RecordingError:
    return RecordingError(f"the recording at {where} is gone (its folder was deleted or moved after it was "
                          "opened): Recording.open it where it is now, or record it again.")


def _check_chunks(arr: zarr.Array, what: str, where: str, ids: Sequence[int]) -> None:
    """On disk, the chunk files ``ids`` of ``arr`` exist, at their full size if it is raw: zarr
    would read a missing chunk as its fill value."""
    root = Path(where)
    if not root.is_dir():
        raise _gone(where)
    size, folder = _chunk_size(arr), root / arr.path
    for i in ids:
        path = folder.joinpath("c", str(i), *["0"] * (arr.ndim - 1))  # a chunk spans the other axes whole
        got = path.stat().st_size if path.is_file() else None
        if got is None or (size is not None and got != size):
            state = "is missing" if got is None else f"holds {got} bytes, not {size}"
            raise RecordingError(f"chunk {i} of {what} ({path}) {state}: the store is damaged; {_REDO}.")


def _read(arr: zarr.Array, what: str, where: str, rows: slice | np.ndarray, rest: tuple = ()) -> np.ndarray:
    """``arr[rows, *rest]`` (orthogonal indexing), or a RecordingError naming the chunk of
    ``what`` (``"site mlp.0"``) that is missing or fails its checksum, and what to do."""
    ids = _chunk_ids(rows, arr.chunks[0], arr.shape[0])
    if where != "memory":
        _check_chunks(arr, what, where, ids)
    try:
        return arr.get_orthogonal_selection((rows, *rest))
    except Exception as exc:  # a checksum that does not match, a chunk that does not decode
        for i in ids:  # name the first chunk that cannot be read on its own
            lo = i * arr.chunks[0]
            try:
                arr[lo: lo + arr.chunks[0]]
            except Exception as err:
                cause = err
                break
        else:
            i, cause = None, exc
        chunk = f"chunk {i} of {what}" if i is not None else what
        raise RecordingError(
            f"{chunk} in the recording at {where} cannot be read ({type(cause).__name__}: {cause}): its bytes "
            f"changed after they were recorded, so the store is damaged; {_REDO}.") from None


class _Checked:
    """An array as dask reads it (``dask.array.from_array``): every read goes through :func:`_read`."""

    def __init__(self, arr: zarr.Array, what: str, where: str):
        self.arr, self.what, self.where = arr, what, where
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        return _read(self.arr, self.what, self.where, key[0], key[1:])


# ---------------------------------------------------------------- the trial table in zarr


def _stored(col: pd.Series) -> tuple[str, np.ndarray]:
    """How a trial-table column is stored: its kind and its values as a numpy array."""
    if pd.api.types.is_bool_dtype(col):
        kind = "bool"
    elif pd.api.types.is_integer_dtype(col):
        kind = "int64"
    elif pd.api.types.is_float_dtype(col):
        kind = "float64"
    else:
        kind = "str"  # text, categories and anything else are stored as text, never pickled
    return kind, col.astype(str if kind == "str" else kind).to_numpy()


def _check_columns(table: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Column names become array names beside the sites' and, in xarray, coordinate names
    (listed with spaces): they must be plain and distinct from the site and unit arrays."""
    taken = {s["name"] for s in meta["sites"]} | {d for s in meta["sites"] for d in _unit_dims(s)}
    bad = [c for c in table.columns if not isinstance(c, str) or not c or "/" in c or c == "zarr.json"
           or any(ch.isspace() for ch in c) or c.startswith((".", "__")) or c in taken]
    if bad:
        raise RecordingError(f"trial-table column names must be plain strings (no '/', no spaces, no leading "
                             f"'.' or '__') and not the name of a site's array ({sorted(taken)}); rename {bad}.")


def _checksum(group: zarr.Group) -> tuple[Crc32cCodec, ...]:
    """The codecs that end every chunk: a checksum on disk, nothing in memory (no disk to damage it)."""
    return () if isinstance(group.store, MemoryStore) else _CHECKSUM


def _write_table(group: zarr.Group, table: pd.DataFrame) -> None:
    kinds = []
    for name in table.columns:
        kind, values = _stored(table[name])
        arr = group.create_array(name, shape=(len(table),), dtype=str if kind == "str" else kind,
                                 chunks=(min(len(table), _TABLE_CHUNK),), dimension_names=("token",),
                                 compressors=(ZstdCodec(), *_checksum(group)), overwrite=True)
        arr[:] = values
        kinds.append([name, kind])
    group.attrs["columns"] = kinds


def _same_table(stored: pd.DataFrame, table: pd.DataFrame) -> bool:
    return list(stored.columns) == list(table.columns) and all(
        np.array_equal(stored[c].to_numpy(), _stored(table[c])[1]) for c in table.columns)


def _read_table(group: zarr.Group, n_tokens: int, where: str) -> pd.DataFrame:
    try:
        columns = [(name, kind, group[name]) for name, kind in group.attrs["columns"]]
    except Exception as exc:  # missing array, damaged metadata, bad attrs: all mean damaged
        raise RecordingError(f"the trial table of the recording at {where} cannot be read ({type(exc).__name__}: "
                             f"{exc}): the store is damaged; {_REDO}.") from None
    cols = {}
    for name, kind, arr in columns:
        data = _read(arr, f"the trial-table column {name!r}", where, slice(None))
        cols[name] = data.astype(object) if kind == "str" else data.astype(kind)
    table = pd.DataFrame(cols)
    if len(table) != n_tokens or not {"seq", "pos", "token"} <= set(table.columns):
        raise RecordingError(f"the trial table at {where} has {len(table)} rows, not {n_tokens}: the store is "
                             f"damaged; {_REDO}.")
    return table


# ---------------------------------------------------------------- stores


def _check_arrays(group: zarr.Group, meta: dict[str, Any], offsets: np.ndarray, done: int) -> int:
    """Check every site array (present, with its shape and dtype) and return how many of the
    first ``done`` sequences every site's ledger holds (``offsets[k]``: the first row of
    sequence ``k``); on disk, the chunks of those rows must exist at their full size."""
    where = _where(group)
    arrays, n = {}, meta["stimuli"]["n_tokens"]
    for s in meta["sites"]:
        try:
            arr = arrays[s["name"]] = group[s["name"]]
        except Exception as exc:
            lost = isinstance(exc, KeyError)
            what = (f"the recording at {where} has lost the array of site {s['name']}" if lost else
                    f"the metadata of site {s['name']} in the recording at {where} cannot be read "
                    f"({type(exc).__name__}: {exc})")
            raise RecordingError(f"{what}: the store is damaged; {_REDO}.") from None
        shape, chunks = (n, *s["shape"]), (s["chunk_rows"], *s["shape"])
        if tuple(arr.shape) != shape or tuple(arr.chunks) != chunks or str(arr.dtype) != meta["dtype"]:
            raise RecordingError(
                f"the array of site {s['name']} at {where} is {tuple(arr.shape)} {arr.dtype}, not {shape} "
                f"{meta['dtype']}: the store is damaged; {_REDO}.")
    held = min(_ledger(arr) for arr in arrays.values())
    verified = min(done, int(np.searchsorted(offsets, held, side="right")) - 1)
    if where != "memory":
        for name, arr in arrays.items():
            _check_chunks(arr, f"site {name}", where, _chunk_ids(slice(0, int(offsets[verified])), arr.chunks[0], n))
    return verified


def _ledger(arr: zarr.Array) -> int:
    """How many rows of a site array were written (its ``written_rows`` attr; 0 if unreadable)."""
    rows = arr.attrs.get(_LEDGER)
    return rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0 else 0


def _open_group(path: str | os.PathLike, mode: str) -> zarr.Group:
    """The store's root group, read from each array's own metadata (never the consolidated
    copy, which would hide an array lost since)."""
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)
    except Exception as exc:
        meta = Path(path) / "zarr.json"
        if meta.is_file():
            raise RecordingError(
                f"the metadata file of the recording at {path} ({meta}) cannot be read ({type(exc).__name__}: "
                f"{exc}): without it the store cannot be read; {_REDO}.") from None
        raise RecordingError(f"{path} is not a zarr v3 recording ({type(exc).__name__}: {exc}).") from None


def _create(group: zarr.Group, meta: dict[str, Any], stimuli: Stimuli) -> None:
    """Lay out a fresh store: metadata (with done_seqs 0) first, then arrays and the table."""
    group.attrs.update({"llmscope": meta, "done_seqs": 0})
    n, coords = len(stimuli), " ".join(stimuli.tokens.columns)  # CF "coordinates": xarray's coords
    for s in meta["sites"]:
        dims = _unit_dims(s)
        group.create_array(
            s["name"], shape=(n, *s["shape"]), chunks=(s["chunk_rows"], *s["shape"]),
            dtype=meta["dtype"], fill_value=np.nan, compressors=_checksum(group), overwrite=True,
            config={"write_empty_chunks": True}, dimension_names=("token", *dims),
            attributes={"coordinates": coords, _LEDGER: 0})
        for dim, size in zip(dims, s["shape"]):
            group.create_array(dim, data=np.arange(size), dimension_names=(dim,),
                               compressors=(ZstdCodec(), *_checksum(group)), overwrite=True)
    _write_table(group, stimuli.tokens)


def _consolidate(group: zarr.Group) -> None:
    """Copy every array's metadata into the root ``zarr.json``, so that ``xarray.open_zarr``
    opens the store at once, without listing its folder or warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", ZarrUserWarning)
        warnings.filterwarnings("ignore", f"Object at {_LOCK} is not recognized", ZarrUserWarning)
        zarr.consolidate_metadata(group.store)


def _same_model(meta: dict[str, Any], model: "TransformerBridge", where: str,
                remedy: str = "Load that model, or record into a new path.") -> None:
    """A RecordingError unless ``model`` has the weights that made the recording."""
    check(Fingerprint.from_dict(meta["fingerprints"]["model"]), model, f"the recording at {where}", "weights",
          RecordingError, remedy)


def _describe(meta: dict[str, Any], key: str) -> str:
    if key == "sites":
        return ", ".join(f"{x['name']} {tuple(x['shape'])}" for x in meta["sites"])
    if key == "stimuli":
        st = meta["stimuli"]
        return f"{st['name']!r}: {st['n_seqs']} sequences, {st['n_tokens']} tokens"
    return str(meta[key])


def _resume_point(group: zarr.Group, meta: dict[str, Any], stimuli: Stimuli,
                  model: "TransformerBridge") -> int:
    """How many sequences an existing store already holds, after checking it records the same
    model, stimuli, sites and dtype: those its ``done_seqs`` counts and every site's ledger holds."""
    where = _where(group)
    old = _check_meta(group.attrs.get("llmscope"), where)
    _same_model(old, model, where)
    for key in ("stimuli", "dtype", "sites"):
        if old[key] != meta[key]:
            raise RecordingError(
                f"the recording at {where} holds other {key} ({_describe(old, key)}, not "
                f"{_describe(meta, key)}); to record these, use a new path or delete that store."
            )
    done = group.attrs.get("done_seqs")
    if not isinstance(done, int) or not 0 <= done <= stimuli.n_seqs:
        raise RecordingError(f"the recording at {where} has a damaged done_seqs counter ({done!r}); "
                             "delete it and record again.")
    if done:
        if not _same_table(_read_table(group, len(stimuli), where), stimuli.tokens):
            raise RecordingError(f"the recording at {where} was made from other {meta['stimuli']['name']!r} "
                                 "stimuli (other tokens or labels); use a new path or delete that store.")
        done = _check_arrays(group, old, stimuli.offsets(), done)
    return done


def _fresh(path: Path) -> bool:
    """No store yet: the folder is missing or holds nothing but the lock file (and temporary
    files of a write cut short)."""
    return not path.exists() or all(p.name == _LOCK or p.suffix == ".partial" for p in path.iterdir())


def _finished(store: str | os.PathLike | None, meta: dict[str, Any], stimuli: Stimuli,
              model: "TransformerBridge") -> "Recording | None":
    """The store, if it already holds this whole recording (checked, nothing written, no lock)."""
    if store is None:
        return None
    path = Path(store).expanduser()
    if not path.is_dir() or _fresh(path) or not (path / "zarr.json").is_file():
        return None
    group = _open_group(path, "r")
    if group.attrs.get("done_seqs") != stimuli.n_seqs or _resume_point(group, meta, stimuli, model) < stimuli.n_seqs:
        return None
    consolidated = json.loads((path / "zarr.json").read_text()).get("consolidated_metadata") is not None
    if not consolidated and os.access(path, os.W_OK):  # stopped before consolidating: let record() do it
        return None
    return Recording(group)


def _cannot_write(path: Path, exc: OSError) -> RecordingError:
    """The error for a store record() must write to but cannot (a read-only folder or disk)."""
    try:
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]
        done = f"{attrs['done_seqs']} of {attrs['llmscope']['stimuli']['n_seqs']}"
    except Exception:  # no store there yet (or not a readable one)
        return RecordingError(f"cannot write to {path} ({exc.strerror or exc}): record() makes its store there. "
                              "Give it a folder path you can write to.")
    return RecordingError(
        f"cannot write to {path} ({exc.strerror or exc}): the recording there holds {done} sequences and needs "
        "writing to be finished. Make the folder writable, or copy it somewhere writable and record there; "
        "Recording.open(path) reads what it holds so far.")


@contextmanager
def _exclusive(store: str | os.PathLike | None) -> Iterator[None]:
    """Hold a store's lock while recording into it, so that a second recorder (another
    kernel, another student on a shared folder) gets a clear error instead of interleaving
    its writes. The lock is the kernel's (flock): a killed recorder releases it."""
    if store is None:
        yield
        return
    from filelock import FileLock, Timeout

    path = Path(store).expanduser()
    if path.exists() and not path.is_dir():
        raise RecordingError(f"{path} is a file; give record() a folder path for its zarr store.")
    if not _fresh(path):  # checked before the lock file is made: a foreign folder stays untouched
        group = _open_group(path, "r") if (path / "zarr.json").is_file() else None
        if group is None or "llmscope" not in group.attrs:
            raise RecordingError(f"{path} holds something that is not an llmscope recording; choose another path.")
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / _LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RecordingError(f"something else is recording into {path} right now; wait for it to "
                             "finish (then record() resumes or returns it), or use another path.") from None
    try:
        yield
    finally:
        lock.release()


def _store(store: str | os.PathLike | None, meta: dict[str, Any], stimuli: Stimuli,
           model: "TransformerBridge") -> tuple[zarr.Group, int]:
    """The group to record into and the first sequence still to record."""
    if store is None:
        group = zarr.open_group(MemoryStore(), mode="w", zarr_format=3)
        _create(group, meta, stimuli)
        return group, 0
    path = Path(store).expanduser()
    for junk in path.rglob("*.partial"):  # temporary files of chunk writes cut short by a kill
        junk.unlink()
    if _fresh(path):  # the root's metadata is written once, whole, with the llmscope attrs
        group = zarr.open_group(str(path), mode="a", zarr_format=3, attributes={"llmscope": meta, "done_seqs": 0})
        done = 0
    else:
        group = _open_group(path, "r+")
        done = _resume_point(group, meta, stimuli, model)
    if done == 0:
        _create(group, meta, stimuli)
    return group, done


def _disk_full(store: str | os.PathLike, group: zarr.Group | None, meta: dict[str, Any],
               stimuli: Stimuli, exc: OSError) -> RecordingError:
    """The error for a full disk: the store, the space still needed, and that record() resumes."""
    path = Path(store).expanduser()
    done = group.attrs.get("done_seqs", 0) if group is not None else 0
    rows = len(stimuli) - int(stimuli.offsets()[done])
    row_bytes = sum(math.prod(s["shape"]) for s in meta["sites"]) * np.dtype(meta["dtype"]).itemsize
    free = shutil.disk_usage(path).free if path.exists() else 0
    need = (f"the {rows} rows still to record need about {_size(rows * row_bytes)} ({_size(row_bytes)} a row)"
            if rows else "only its closing metadata (a few kB) is still to write")
    return RecordingError(
        f"the disk holding the recording at {path} is full ({exc.strerror or exc}): it holds {done} of "
        f"{stimuli.n_seqs} sequences, and {need}; {_size(free)} are free. Free some space, then call record() "
        "again with the same arguments: it resumes where it stopped.")


def _size(n: float) -> str:
    """Bytes, readably: ``_size(3 << 20) == '3.0 MB'``."""
    for unit in ("bytes", "kB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# ---------------------------------------------------------------- recording


def _stop_at_layer(model: "TransformerBridge", sites: list[Site]) -> int | None:
    """The first block no site needs, so the forward pass can stop before it (None: run all)."""
    blocks = [int(s.hook.split(".")[1]) if s.hook.startswith("blocks.") else None for s in sites]
    if None in blocks or max(blocks) + 1 >= model.cfg.n_layers:
        return None
    return max(blocks) + 1


def record(
    model: "TransformerBridge",
    stimuli: Stimuli,
    sites: str | Site | Sequence[str | Site],
    store: str | os.PathLike | None = None,
    dtype: str = "float16",
    batch_size: int = 16,
    progress: bool = True,
) -> "Recording":
    """Show ``stimuli`` to ``model`` and record the responses of every unit of ``sites``.

    Args:
        model: a TransformerBridge (``llmscope.load``).
        stimuli: the stimuli; their trial table is saved with the responses.
        sites: one site or a list (``"mlp.1"``, ``"attn.0"``, ``"resid.2"``, or hook names).
        store: None to keep the recording in memory, or a folder path for a zarr store on
            disk. An existing store of the same model, stimuli, sites and dtype is resumed
            (or returned at once if complete, without writing to it: a read-only copy works).
        dtype: ``"float16"`` (default, half the disk) or ``"float32"``.
        batch_size: sequences per forward pass.
        progress: show a tqdm progress bar (tokens).

    Returns:
        The :class:`Recording`.

    Raises:
        PromptError: empty stimuli, or a sequence longer than the model's context (before
            the store is touched).
        SiteError: an unknown site.
        RecordingError: a bad argument (``dtype``, ``batch_size``, ``store``, a trial-table
            column named like a site array), ``store`` holds something else (another
            model, stimuli or sites), another process is recording into it now, it cannot
            be written (read-only), or the disk is full (the message says how much is
            needed; free it and call ``record`` again: it resumes).

    Example:
        >>> import llmscope
        >>> from llmscope import record
        >>> from llmscope.stimuli import induction
        >>> model = llmscope.load("grammar-2l")
        >>> ind = record(model, induction(model, n_seqs=8, half_len=10), ["mlp.0", "mlp.1"], progress=False)
        >>> ind.responses("mlp.1").shape
        (168, 512)
    """
    choice(dtype, "dtype", list(DTYPES), RecordingError)
    count(batch_size, "batch_size", 1, None, RecordingError)
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise RecordingError.Type(f"store must be None (in memory) or a folder path, got {type(store).__name__}.")
    flag(progress, "progress", RecordingError)
    resolved = resolve_sites(model, sites)
    stimuli = as_stimuli(model, stimuli)
    meta = _metadata(model, stimuli, resolved, dtype)
    _check_columns(stimuli.tokens, meta)
    finished = _finished(store, meta, stimuli, model)
    if finished is not None:
        return finished
    group = None
    try:
        with _exclusive(store):
            group, done = _store(store, meta, stimuli, model)
            _stream(model, stimuli, resolved, group, done, int(batch_size), DTYPES[dtype], progress)
            _consolidate(group)
    except OSError as exc:  # zarr's own, with no store path: say where, and what to do
        if exc.errno in _DISK_FULL:
            raise _disk_full(store, group, meta, stimuli, exc) from None
        if exc.errno in _READ_ONLY:
            raise _cannot_write(Path(store).expanduser(), exc) from None
        raise
    return Recording(group)


def _stream(model: "TransformerBridge", stimuli: Stimuli, sites: list[Site], group: zarr.Group,
            start: int, batch_size: int, dtype: torch.dtype, progress: bool) -> None:
    """Run the batches from sequence ``start`` on, write each, then advance ``done_seqs``."""
    offsets = stimuli.offsets()
    arrays = {s.name: group[s.name] for s in sites}
    hooks = [s.hook for s in sites]
    stop = _stop_at_layer(model, sites)
    overflow = False
    bar = progress_bar(total=len(stimuli), initial=int(offsets[start]), unit="tok", show=progress,
                       desc=f"record {stimuli.name}")
    with bar, torch.no_grad():
        for lo, ids in stimuli.batches(batch_size, start):
            hi = lo + ids.shape[0]
            lengths = torch.tensor(stimuli.lengths[lo:hi])  # a copy: a stored table's lengths are read-only
            _, cache = model.run_with_cache(ids, names_filter=hooks, stop_at_layer=stop)
            real = torch.arange(ids.shape[1]) < lengths[:, None]
            padded = not bool(real.all())
            for s in sites:
                act = cache[s.hook]
                rows = (act[real] if padded else act.reshape(-1, *s.shape)).to("cpu", dtype)
                if dtype == torch.float16 and not overflow and torch.isinf(rows).any():
                    overflow = True
                    warnings.warn(f"{s.name} has activations beyond the float16 range (±65504), stored "
                                  "as ±inf; record with dtype='float32' to keep them.", stacklevel=3)
                arrays[s.name][offsets[lo]:offsets[hi]] = rows.numpy()
            for s in sites:  # the ledger: each site says what it holds before done_seqs moves on
                arrays[s.name] = arrays[s.name].update_attributes({_LEDGER: int(offsets[hi])})
            group.attrs["done_seqs"] = hi
            bar.update(int(offsets[hi] - offsets[lo]))


# ---------------------------------------------------------------- reading


class Recording:
    """Unit responses to stimuli, aligned row for row with the trial table ``tokens``.

    Made by :func:`record` or :meth:`Recording.open`; :meth:`select` makes a view of some rows;
    :meth:`to_xarray` gives it as a lazy xarray Dataset.

    Attributes:
        tokens: the trial table (one row per recorded token).
        sites: the recorded sites' names.
        model_name: the name of the model that made the recording.
        name: the stimuli's name.
        dtype: how the responses are stored (``"float16"`` or ``"float32"``).
        path: the store's folder, or None in memory.
        done_seqs, n_seqs, complete: how many of the stimuli's sequences were recorded, of
            how many, and whether that is all of them (analyses put these in ``.meta``).

    Example:
        >>> import llmscope
        >>> from llmscope import Recording, record
        >>> from llmscope.stimuli import induction
        >>> model = llmscope.load("grammar-2l")
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/ind.zarr"
        >>> _ = record(model, induction(model, 8, 10), ["mlp.1"], store=path, progress=False)
        >>> Recording.open(path, model=model).select("is_repeat").responses("mlp.1", indices=[3, 7]).shape
        (80, 2)
    """

    def __init__(self, group: zarr.Group, rows: np.ndarray | None = None, tokens: pd.DataFrame | None = None):
        where = _where(group)
        self._group = group
        self._meta = _check_meta(group.attrs.get("llmscope"), where)
        self._done = int(group.attrs.get("done_seqs", 0))
        if tokens is None:
            table = _read_table(group, self._meta["stimuli"]["n_tokens"], where)
            done_rows = int(np.searchsorted(table.seq.to_numpy(), self._done))
            tokens = table.iloc[:done_rows]
        self.tokens = tokens.reset_index(drop=True)
        self._rows = np.arange(len(self.tokens)) if rows is None else rows
        self._sites = {s["name"]: Site(s["name"], s["hook"], s["kind"], s["layer"], tuple(s["shape"]), s["unit"],
                                       Fingerprint.from_dict(self._meta["fingerprints"]["model"]))
                       for s in self._meta["sites"]}
        self.path = None if where == "memory" else where

    @classmethod
    def open(cls, path: str | os.PathLike, model: "TransformerBridge | None" = None) -> "Recording":
        """Reopen a recording saved by :func:`record`.

        Args:
            path: the store's folder.
            model: if given, the recording must have been made by this model.

        Raises:
            RecordingError: no recording there, a damaged store (missing array, wrong shape,
                bad metadata, truncated chunk), a ``done_seqs`` that counts sequences the
                sites do not hold, or a recording by a model with other weights.

        An interrupted recording opens with an :class:`IncompleteRecordingWarning` and holds
        the sequences recorded so far; call ``record`` again with the same path to finish it.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise RecordingError(f"Recording.open takes the path of a store's folder, got {type(path).__name__}.")
        path = Path(path).expanduser()
        if not path.is_dir():
            raise RecordingError(f"no recording at {path}: it is not a folder.")
        again = f"call record(model, stimuli, sites, store={str(path)!r}) to record into it"
        if _fresh(path):
            raise RecordingError(f"nothing was recorded at {path} (the folder is empty, or a recording stopped "
                                 f"before its store was made): {again}.")
        group = _open_group(path, "r")
        if "llmscope" not in group.attrs:
            raise RecordingError(f"{path} is a zarr store but not an llmscope recording (no 'llmscope' metadata).")
        meta = _check_meta(group.attrs["llmscope"], str(path))
        if model is not None:
            _same_model(meta, model, str(path), "Pass the model that made it, or record the stimuli again with "
                        "this one (into a new path).")
        done = group.attrs.get("done_seqs")
        n_seqs = meta["stimuli"]["n_seqs"]
        if not isinstance(done, int) or not 0 <= done <= n_seqs:
            raise RecordingError(f"the recording at {path} has a damaged done_seqs counter ({done!r}).")
        try:
            table = _read_table(group, meta["stimuli"]["n_tokens"], str(path))
            offsets = np.searchsorted(table.seq.to_numpy(), np.arange(n_seqs + 1))
            held = _check_arrays(group, meta, offsets, done)
        except RecordingError:
            if done:
                raise
            raise RecordingError(f"the recording at {path} stopped while its store was being made, before any "
                                 f"sequence was recorded (parts of the store are missing): {again}; it starts "
                                 "over.") from None
        if held < done:
            raise RecordingError(
                f"the recording at {path} counts {done} of {n_seqs} sequences as recorded (done_seqs), but its "
                f"sites hold only the first {held}: the counter was changed by hand or the store is damaged. "
                f"To finish it, {again[5:]}: it records the sequences after those {held}.")
        rec = cls(group, tokens=table.iloc[: int(offsets[done])])
        if done < n_seqs:
            warnings.warn(
                f"the recording at {path} is incomplete: {done} of {n_seqs} sequences were recorded "
                "before it stopped. This Recording holds those; call record(model, stimuli, sites, "
                f"store={str(path)!r}) with the same stimuli and sites to finish it.",
                IncompleteRecordingWarning, stacklevel=2)
        return rec

    # ---- contents
    @property
    def sites(self) -> list[str]:
        """Names of the recorded sites, in recording order."""
        return list(self._sites)

    @property
    def fingerprint(self) -> Fingerprint:
        """The :class:`~llmscope.identity.Fingerprint` of the model that made this recording."""
        return Fingerprint.from_dict(self._meta["fingerprints"]["model"])

    @property
    def model_name(self) -> str:
        return self.fingerprint.name

    @property
    def name(self) -> str:
        return self._meta["stimuli"]["name"]

    @property
    def dtype(self) -> str:
        return self._meta["dtype"]

    @property
    def done_seqs(self) -> int:
        """How many sequences of the stimuli were recorded (a selection reports its recording's)."""
        return self._done

    @property
    def n_seqs(self) -> int:
        """How many sequences the stimuli hold."""
        return self._meta["stimuli"]["n_seqs"]

    @property
    def complete(self) -> bool:
        """True when every sequence of the stimuli was recorded."""
        return self._done == self.n_seqs

    def made_by(self, model: "TransformerBridge") -> bool:
        """True when ``model`` has the weights that made this recording (:func:`llmscope.identity.check`
        at the ``"weights"`` level)."""
        try:
            _same_model(self._meta, model, self.path or "memory")
        except RecordingError:
            return False
        return True

    def __len__(self) -> int:
        """Number of recorded tokens (rows)."""
        return len(self.tokens)

    def site(self, name: str) -> Site:
        """The recorded :class:`~llmscope.sites.Site` called ``name`` (short or hook name)."""
        for s in self._sites.values():
            if name in (s.name, s.hook):
                return s
        raise SiteError.Unknown(f"site {name!r} was not recorded; this recording holds {', '.join(self._sites)}.")

    def _row_index(self) -> slice | np.ndarray:
        """This view's rows of the store: a slice when they are contiguous (faster to read)."""
        if len(self._rows) == 0:
            return self._rows
        first, last = int(self._rows[0]), int(self._rows[-1])
        return slice(first, last + 1) if last - first + 1 == len(self._rows) else self._rows

    @renamed(site="units", units="indices")
    def responses(self, units: "str | Site | UnitsLike", indices: int | Sequence[int] | None = None,
                  labelled: bool = False, *, dtype: str | None = "float32") -> np.ndarray | pd.DataFrame:
        """Responses of units of one site, float32 ``[n_tokens, n_units, ...]``, rows as ``tokens``.

        Args:
            units: a recorded site (``"mlp.1"`` or its hook name), or units of one site in any
                form (``("mlp.1", [3, 7])``, a unit table of that site).
            indices: unit indices (neurons, heads...) of the site named by ``units``; None for all.
            labelled: False for the bare array; True for a DataFrame ``[n_tokens, n_units]``
                indexed like ``tokens``, its columns the ``(site, unit)`` MultiIndex of unit
                tables. Only for sites with one value per unit (``mlp.L``, ``resid.L``): a head
                of ``attn.L`` has ``d_head`` values, read them with :meth:`to_xarray` (or one
                number per head with ``llmscope.analysis.responses.scalar``).
            dtype: ``"float32"`` (the default) converts; None keeps the values as stored
                (:attr:`dtype`: float16 by default), half the memory and no conversion pass.

        Raises:
            SiteError: a site not recorded, units of several sites, a unit out of range, or
                ``labelled`` on a site with several values per unit.
            RecordingError: ``labelled`` not a bool, or ``dtype`` neither ``"float32"`` nor None.

        Example:
            >>> import llmscope
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
            ...                       dtype="float32", progress=False)
            >>> rec.responses("attn.0", [1]).shape
            (496, 1, 32)
            >>> rec.responses(("mlp.0", [3, 7]), labelled=True).columns.tolist()
            [('mlp.0', 3), ('mlp.0', 7)]
        """
        flag(labelled, "labelled", RecordingError)
        if dtype is not None and (not isinstance(dtype, str) or dtype != "float32"):
            raise RecordingError(f"dtype must be 'float32' or None (as stored: {self.dtype}), got {dtype!r}.")
        stored = np.dtype(self.dtype if dtype is None else dtype)
        s, every = self._one_site(units, indices)
        idx = s.check_units(every)
        if labelled and len(s.shape) > 1:
            raise SiteError(
                f"{s.name} has {math.prod(s.shape[1:])} values per {s.unit} (shape {s.shape}), and a labelled "
                f"table holds one value per unit. Use rec.to_xarray()[{s.name!r}] for all of them, or "
                f"llmscope.analysis.responses.scalar(rec, {s.name!r}) for one number per {s.unit} (its L2 norm).")
        if len(self._rows) == 0:
            data = np.empty((0, len(idx), *s.shape[1:]), dtype=stored)
        else:
            cols = slice(None) if every is None else idx
            data = _read(self._array(s.name), f"site {s.name}", _where(self._group), self._row_index(), (cols,))
            data = np.asarray(data, dtype=stored)
        if labelled:
            return pd.DataFrame(data, index=self.tokens.index, columns=s.unit_index(idx))
        return data

    def _one_site(self, units: Any, indices: Any) -> tuple[Site, Any]:
        """The one recorded site ``units`` name and its unit indices (None: all)."""
        if isinstance(units, (str, Site)):
            return self.site(units if isinstance(units, str) else units.name), indices
        pairs = parse_units(units, indices)
        if len(pairs) != 1:
            raise SiteError(f"responses() reads one site at a time; these units span {[str(getattr(p, 'name', p)) for p, _ in pairs]}: "
                            "call it once per site.")
        spec, idx = pairs[0]
        return self.site(spec if isinstance(spec, str) else spec.name), idx

    def _array(self, name: str) -> zarr.Array:
        """The store's array ``name``, or a RecordingError if the store is gone or damaged since it was opened."""
        where = _where(self._group)
        if where != "memory" and not Path(where).is_dir():
            raise _gone(where)
        try:
            return self._group[name]
        except Exception as exc:
            raise RecordingError(f"the array of {name} in the recording at {where} cannot be opened "
                                 f"({type(exc).__name__}: {exc}): the store is damaged; {_REDO}.") from None

    @renamed(mask="where")
    def select(self, where: str | np.ndarray | pd.Series | Sequence[bool]) -> "Recording":
        """A view of some rows: a boolean mask over ``tokens`` or a query on its columns
        (``DataFrame.eval`` syntax; ``@name`` is a variable of the caller).

        No data is read until :meth:`responses` is called.

        Raises:
            ColumnError: the query names a column the trial table lacks.
            RecordingError: a query that is not a boolean expression of the columns, or a
                mask that is not boolean or not one value per row.

        Example:
            >>> import llmscope
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
            ...                       dtype="float32", progress=False)
            >>> len(rec.select("pos_tag == 'NOUN'"))
            141
            >>> late = rec.select(rec.tokens.pos.to_numpy() > 10)
        """
        columns = list(self.tokens.columns)
        if isinstance(where, str):
            try:
                where = self.tokens.eval(where, level=2)  # level 2: "@name" is looked up where select() was called
            except pd.errors.UndefinedVariableError as exc:
                raise ColumnError.Unknown(f"select({where!r}): {exc}; the trial table's columns are {columns} "
                                  "(a Python variable is written @name).") from None
            except Exception as exc:  # pandas raises SyntaxError, TypeError, ValueError... for a bad query
                raise RecordingError(
                    f"select({where!r}) is not a query on the trial table ({type(exc).__name__}: {exc}); write a "
                    f"boolean expression of its columns {columns}, such as \"pos > 2 and seq == 0\".") from None
        keep = np.asarray(where)
        if keep.dtype != bool or keep.shape != (len(self),):
            raise RecordingError(f"select() takes a query string or a boolean mask of {len(self)} rows; "
                                 f"got {keep.dtype} of shape {keep.shape}.")
        return Recording(self._group, self._rows[keep], self.tokens[keep])

    def to_xarray(self) -> "xr.Dataset":
        """This recording as an xarray Dataset backed by dask arrays: nothing is read until computed.

        One float32 variable per site, dims ``("token", "<site>.<unit>", ...)`` as in the store
        (see the module's docstring); the trial-table columns as coordinates on ``token``
        (loaded, as grouping needs them in memory; the ``token`` ids index it); the unit
        indices as coordinates of the unit axes; the store's attrs (``llmscope``,
        ``done_seqs``, ``columns``) as ``attrs``. The rows are this Recording's: a
        selection's, or those recorded so far of an incomplete recording. A chunk missing
        or damaged when it is computed raises a RecordingError that names it.

        Example:
            >>> import llmscope
            >>> from llmscope.stimuli import grammar
            >>> model = llmscope.load("grammar-2l")
            >>> stim = grammar(model, n_docs=4, seed=0)
            >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
            ...                       dtype="float32", progress=False)
            >>> ds = rec.to_xarray()
            >>> ds["mlp.0"].groupby("pos_tag").mean("token").compute().shape
            (10, 512)
        """
        import dask.array
        import xarray as xr

        where = _where(self._group)
        arrays = {s: self._array(s) for s in self._sites}
        try:
            with warnings.catch_warnings():  # zarr names the lock file while it lists the folder: harmless
                warnings.filterwarnings("ignore", f"Object at {_LOCK} is not recognized", ZarrUserWarning)
                ds = xr.open_zarr(self._group.store, consolidated=False)
        except Exception as exc:
            raise RecordingError(f"the recording at {where} cannot be opened as a Dataset ({type(exc).__name__}: "
                                 f"{exc}): the store is damaged; {_REDO}.") from None
        ds = ds.assign({s: ds[s].copy(data=dask.array.from_array(  # read through _read: damage is named
            _Checked(arr, f"site {s}", where), chunks=arr.chunks, name=False)) for s, arr in arrays.items()})
        if len(self._rows) != ds.sizes["token"]:
            ds = ds.isel(token=self._row_index())
        ds = ds.assign({s: ds[s].astype(np.float32) for s in self._sites})
        try:
            coords = {c: ds[c].compute() for c in self.tokens.columns}
        except Exception as exc:  # a chunk of the table damaged since the table was read and checked
            raise RecordingError(f"the trial table of the recording at {where} cannot be read ({type(exc).__name__}: "
                                 f"{exc}): the store is damaged; {_REDO}.") from None
        return ds.assign_coords(coords)

    @property
    def stimuli(self) -> Stimuli:
        """The stimuli of a whole recording, rebuilt from its trial table."""
        if len(self._rows) != self._meta["stimuli"]["n_tokens"]:
            raise RecordingError("the stimuli can be rebuilt only from a whole recording, "
                                 "not from a selection or an incomplete one.")
        t, pad_id = self.tokens, self._meta["stimuli"]["pad_id"]
        lengths = t.groupby("seq").size().to_numpy()
        ids = torch.full((len(lengths), int(lengths.max())), pad_id, dtype=torch.long)
        seq, pos, token = (torch.tensor(t[c].to_numpy()) for c in ("seq", "pos", "token"))
        ids[seq, pos] = token
        return Stimuli(ids, lengths, t.copy(), name=self.name, pad_id=pad_id, model=self.fingerprint)

    # ---- display
    def _summary(self) -> str:
        sites = ", ".join(f"{s.name} ({s.n_units} {s.unit}s)" for s in self._sites.values())
        state = "" if self.complete else f", incomplete: {self._done}/{self._meta['stimuli']['n_seqs']} sequences"
        return (f"{self.name!r} by {self.model_name!r}: {len(self)} tokens x [{sites}], "
                f"{self.dtype}, {self.path or 'in memory'}{state}")

    def __repr__(self) -> str:
        return f"Recording({self._summary()})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(s.name)}</td><td>{html.escape(s.hook)}</td>"
            f"<td>{s.n_units} {html.escape(s.unit)}s</td><td>{html.escape(str(s.shape))}</td></tr>"
            for s in self._sites.values())
        return (f"<p><b>Recording</b> {html.escape(self._summary())}</p>"
                f"<table><tr><th>site</th><th>hook</th><th>units</th><th>shape per token</th></tr>{rows}</table>"
                f"{self.tokens.head(8).to_html(index=False, escape=True)}")
