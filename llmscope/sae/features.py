"""An SAE's features as a recording: the site ``"sae:<site>"``, one unit per feature.

:func:`record_features` encodes a recording of the SAE's site block by block (memory: one
block of rows) into a new recording of the same store format, aligned row for row with the same
trial table, holding one site: ``"sae:<site>"`` (kind ``"sae"``, unit ``"feature"``, shape
``(d_sae,)``). Every analysis that reads a recording reads it as it reads neurons: tuning,
top examples, spikes and rasters, decoding, geometry, sparsity. BOS rows are encoded too
(analyses leave them out by default); their features are what the SAE makes of them.

The store's ``llmscope`` metadata names the SAE (``sae``: its name, site and fingerprint), so
a recording of features knows which SAE made it.

Example:
    >>> import llmscope
    >>> from llmscope.sae import record_features
    >>> from llmscope.stimuli import grammar
    >>> model = llmscope.load("grammar-2l")
    >>> stim = grammar(model, n_docs=4, seed=0)
    >>> rec = llmscope.record(model, stim, ["mlp.0", "mlp.1", "attn.0", "attn.1"],
    ...                       dtype="float32", progress=False)
    >>> from llmscope.sae.train import train_sae
    >>> sae = train_sae(rec, "mlp.0", width=1024, k=16, epochs=1, progress=False)
    >>> feats = record_features(sae, rec, progress=False)
    >>> feats.sites, feats.responses("sae:mlp.0").shape == (len(rec), 1024)
    (['sae:mlp.0'], True)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.storage import MemoryStore

from llmscope.analysis import responses
from llmscope.checks import flag
from llmscope.errors import SAEError
from llmscope.progress import progress_bar
from llmscope.recording import (Recording, _chunk_rows, _consolidate, _create, _exclusive, _open_group,
                                _version)
from llmscope.sae.model import SAE, recording_model


def _meta(sae: SAE, recording: Recording) -> dict[str, Any]:
    source = recording._meta
    layer = recording.site(sae.site).layer
    n = source["stimuli"]["n_tokens"]
    site = {"name": sae.name, "hook": sae.hook or sae.name, "kind": "sae", "layer": layer, "shape": [sae.d_sae],
            "unit": "feature", "chunk_rows": _chunk_rows((sae.d_sae,), source["dtype"], n)}
    meta = {**source, "llmscope_version": _version(), "sites": [site],
            "sae": {"name": sae.name, "site": sae.site, "fingerprint": sae.fingerprint}}
    if "fingerprints" in source:  # a store that keeps the prints of the weights it depends on
        meta["fingerprints"] = {**source["fingerprints"], sae.name: {"name": sae.name, "weights": sae.fingerprint}}
    return meta


def _check(sae: SAE, recording: Recording) -> None:
    if not isinstance(sae, SAE):
        raise SAEError.Type(f"record_features takes an llmscope SAE; got {type(sae).__name__}.")
    if not isinstance(recording, Recording):
        raise SAEError.Type(f"record_features reads a Recording of the SAE's site; got {type(recording).__name__}.")
    if sae.site not in recording.sites:
        raise SAEError(f"the SAE reads {sae.site!r}; this recording holds {recording.sites}: record that site first.")
    if recording.site(sae.site).shape != (sae.d_in,):
        raise SAEError(f"the SAE reads {sae.d_in} values per token; {sae.site} here has shape "
                       f"{recording.site(sae.site).shape}: it is another model's site.")
    fp, legacy = recording_model(recording)
    made_by = sae.meta.get("recording_model")
    if (sae.model is not None and fp is not None and sae.model.weights != fp.weights) or (
            isinstance(made_by, dict) and legacy is not None and made_by.get("fingerprint") != legacy.get("fingerprint")):
        raise SAEError(f"the SAE was trained on a recording of {sae.model_name!r}; this recording was made "
                       f"by {recording.model_name!r} with other weights: its features would mean nothing.")
    if not recording.complete or len(recording) != recording._meta["stimuli"]["n_tokens"]:
        raise SAEError("features are derived from a whole, complete recording (not a selection or an interrupted "
                       "one): finish it with record(...) and pass it whole; select rows afterwards.")


def record_features(sae: SAE, recording: Recording, store: str | os.PathLike | None = None,
                    progress: bool = True) -> Recording:
    """The SAE's features on every row of ``recording``, as a :class:`~llmscope.Recording`.

    Args:
        sae: an SAE of one of the recorded sites.
        recording: a whole, complete recording holding the SAE's site, made by its model.
        store: None (in memory) or a folder for the new store. A store already holding the
            features of this SAE on this recording is returned as it is; an unfinished one
            is written again.
        progress: show a progress bar (tokens; ``TQDM_DISABLE=1`` hides it).

    Raises:
        SAEError: another model's recording, a missing site, an incomplete recording, a
            store that holds something else.
    """
    _check(sae, recording)
    flag(progress, "progress", SAEError)
    meta = _meta(sae, recording)
    if store is not None and not isinstance(store, (str, os.PathLike)):
        raise SAEError.Type(f"store must be None (in memory) or a folder path; got {type(store).__name__}.")
    path = None if store is None else Path(store).expanduser()
    if path is not None and (path / "zarr.json").is_file():
        old = _open_group(path, "r").attrs.get("llmscope")
        if not isinstance(old, dict) or old.get("sae", {}).get("fingerprint") != meta["sae"]["fingerprint"] \
                or old.get("stimuli") != meta["stimuli"]:
            raise SAEError(f"{path} holds something other than this SAE's features on this recording; "
                           "choose another path or delete it.")
        if _open_group(path, "r").attrs.get("done_seqs") == meta["stimuli"]["n_seqs"]:
            return Recording.open(path)
    with _exclusive(path):
        if path is None:
            group = zarr.open_group(MemoryStore(), mode="w", zarr_format=3)
        else:
            for child in path.iterdir():  # an unfinished store of the same features: written again
                if child.name != ".llmscope-recording.lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            group = _open_group(path, "a")
        _create(group, meta, recording.stimuli)
        out = group[sae.name]
        dtype = np.dtype(meta["dtype"])
        with progress_bar(total=len(recording), unit="tok", desc=f"encode {sae.name}", show=progress) as bar, \
                torch.no_grad():
            for rows, block in responses.blocks(recording, sae.site):
                out[rows.start:rows.stop] = sae.encode(torch.from_numpy(block)).numpy().astype(dtype)
                bar.update(rows.stop - rows.start)
        out.update_attributes({"written_rows": len(recording)})  # the rows this site holds (the store's ledger)
        group.attrs["done_seqs"] = meta["stimuli"]["n_seqs"]
        _consolidate(group)
    return Recording(group)


__all__ = ["record_features"]
