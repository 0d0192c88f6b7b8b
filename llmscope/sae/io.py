"""SAEs on disk, in SAELens's layout: a folder with ``sae_weights.safetensors`` and ``cfg.json``.

sae-lens 6.x cannot be installed beside TransformerLens 4.x, so llmscope writes its files
itself, in the layout SAELens 6.x saves (``SAE.save_model``) and loads (``SAE.load_from_disk``):

``sae_weights.safetensors``
    ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, and
    ``threshold [d_sae]`` for ``jumprelu``; nothing else.
``cfg.json``
    ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input`` (true: the encoder reads
    ``x - b_dec``), ``normalize_activations`` (``"none"``: any input scaling used in training is
    folded into the weights), ``reshape_activations`` (``"none"``), ``architecture``
    (``"standard"``, ``"topk"``, ``"jumprelu"``), ``k`` and ``rescale_acts_by_decoder_norm``
    (false) for ``topk``, and ``metadata``: ``model_name``, ``hook_name``, ``model_class_name``,
    ``hook_head_index``, ``context_size``, ``prepend_bos``, ``exclude_special_tokens``,
    ``seqpos_slice``, ``model_from_pretrained_kwargs``, ``dataset_path``, ``sae_lens_version``,
    ``sae_lens_training_version``. ``metadata.sae_lens_version`` is ``"6.0.0"``: SAELens reads a
    config whose version is below 6 (or missing) as the flat pre-6 layout, so this number names
    the layout, not a SAELens that wrote it. llmscope's own fields (the site's short name, the
    training kind, the model's :class:`~llmscope.identity.Fingerprint`, the SAE's fingerprint,
    training settings and statistics) sit under one top-level key, ``llmscope``, which SAELens's
    loader drops (it keeps only its dataclass fields).

Reading accepts SAELens 6.x files and the flat pre-6 ``cfg.json`` (``hook_name``,
``model_name`` at the top, ``activation_fn_str``/``activation_fn`` with ``activation_fn_kwargs``
``{"k": ...}`` for TopK), in float32, float16 or bfloat16 (held as float32 in memory). Files are
read with safetensors only; nothing is ever unpickled.

Example:
    >>> from llmscope.sae import SAE
    >>> from llmscope.sae.io import load
    >>> import tempfile
    >>> folder = SAE(8, 32, "topk", k=4, seed=0).save(tempfile.mkdtemp())
    >>> sorted(p.name for p in folder.iterdir())
    ['cfg.json', 'sae_weights.safetensors']
    >>> load(folder).k
    4
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmscope.checks import choice
from llmscope.errors import SAEError
from llmscope.identity import Fingerprint
from llmscope.sae.model import ARCHITECTURES, SAE, weights_hash

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"
LAYOUT_VERSION = "6.0.0"
FORMAT = 1  # of the "llmscope" block
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
METADATA = ("model_name", "hook_name", "model_class_name", "hook_head_index", "context_size", "prepend_bos",
            "exclude_special_tokens", "seqpos_slice", "model_from_pretrained_kwargs", "dataset_path",
            "sae_lens_version", "sae_lens_training_version")
TOP = ("d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations", "reshape_activations",
       "metadata", "architecture")


def weight_shapes(architecture: str, d_in: int, d_sae: int) -> dict[str, tuple[int, ...]]:
    """The tensors of an SAE file and their shapes, by architecture."""
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    return shapes


def config(sae: SAE, dtype: str = "float32", fingerprint: str | None = None) -> dict[str, Any]:
    """The ``cfg.json`` of ``sae`` (see the module docstring); ``fingerprint`` is that of the
    weights as written (default: as held)."""
    info = sae.meta
    cfg: dict[str, Any] = {
        "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": dtype, "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {
            "model_name": sae.model.name if sae.model else None, "hook_name": sae.hook,
            "model_class_name": "TransformerBridge", "hook_head_index": None,
            "context_size": info.get("context_size"), "prepend_bos": info.get("prepend_bos", True),
            "exclude_special_tokens": info.get("exclude_special_tokens", True), "seqpos_slice": [None],
            "model_from_pretrained_kwargs": {}, "dataset_path": info.get("dataset_path"),
            "sae_lens_version": LAYOUT_VERSION, "sae_lens_training_version": None,
        },
        "architecture": sae.architecture,
    }
    if sae.architecture == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    cfg["llmscope"] = {"format": FORMAT, "site": sae.site, "kind": sae.kind,
                       "fingerprint": fingerprint or sae.fingerprint,
                       "model": sae.model.to_dict() if sae.model else None, "info": info}
    return cfg


def save(sae: SAE, folder: str | os.PathLike, dtype: str = "float32") -> Path:
    """Write ``sae`` into ``folder`` (created if missing); each file is written beside and
    renamed, so a reader never sees half a file. Returns the folder."""
    choice(dtype, "dtype", list(DTYPES), SAEError)
    if not isinstance(folder, (str, os.PathLike)):
        raise SAEError.Type(f"an SAE is saved into a folder path; got {type(folder).__name__}.")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise SAEError(f"{folder} is a file; give a folder path to save the SAE into.")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in sae._tensors().items()}
    tmp = folder / (WEIGHTS + ".partial")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)  # safetensors creates its file private; an SAE is shared like its cfg.json
    tmp.replace(folder / WEIGHTS)
    tmp = folder / (CONFIG + ".partial")
    written = weights_hash(sae.architecture, sae.k, tensors)
    tmp.write_text(json.dumps(config(sae, dtype, written), indent=1) + "\n")
    tmp.replace(folder / CONFIG)
    return folder


def _flat(cfg: dict[str, Any]) -> tuple[str, int | None, dict[str, Any]]:
    """Architecture, k and metadata of a pre-6 (flat) config."""
    act = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    arch = cfg.get("architecture", "standard")
    k = (cfg.get("activation_fn_kwargs") or {}).get("k") if act == "topk" else None
    if act == "topk":
        arch = "topk"
    meta = {key: cfg.get(key) for key in ("model_name", "hook_name", "context_size", "prepend_bos", "dataset_path")}
    return arch, k, meta


def load(folder: str | os.PathLike) -> SAE:
    """The SAE saved in ``folder`` (see the module docstring); an SAEError names what is
    missing, unknown or damaged."""
    if not isinstance(folder, (str, os.PathLike)):
        raise SAEError.Type(f"an SAE is loaded from a folder path; got {type(folder).__name__}.")
    folder = Path(folder).expanduser()
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            pickled = [p.name for p in folder.glob("*.pt")] + [p.name for p in folder.glob("*.bin")] if folder.is_dir() else []
            extra = f" ({pickled} are pickles, which llmscope never loads)" if pickled else ""
            raise SAEError(f"no SAE at {folder}: {name} is missing{extra}. An SAE folder holds {CONFIG} and {WEIGHTS}.")
    try:
        cfg = json.loads((folder / CONFIG).read_text())
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SAEError(f"the {CONFIG} at {folder} is damaged or not an SAE config ({type(exc).__name__}: {exc}).") from None
    if "metadata" in cfg or "meta" in cfg:
        arch, k, meta = cfg.get("architecture", "standard"), cfg.get("k"), cfg.get("metadata", cfg.get("meta")) or {}
    else:
        arch, k, meta = _flat(cfg)
    if arch not in ARCHITECTURES:
        raise SAEError.Unknown(f"the SAE at {folder} has architecture {arch!r}; llmscope reads {list(ARCHITECTURES)}.")
    if cfg.get("normalize_activations", "none") not in ("none", False) or cfg.get("reshape_activations", "none") != "none":
        raise SAEError(f"the SAE at {folder} expects its inputs rescaled or reshaped "
                       f"(normalize_activations={cfg.get('normalize_activations')!r}, reshape_activations="
                       f"{cfg.get('reshape_activations')!r}); llmscope reads SAEs whose scaling is folded into the weights.")
    tensors = _read(folder / WEIGHTS, weight_shapes(arch, d_in, d_sae))
    ours = cfg.get("llmscope") or {}
    sae = SAE(d_in, d_sae, arch, k=None if k is None else int(k), site=ours.get("site"),
              hook=meta.get("hook_name"), model=Fingerprint.from_dict(ours.get("model")), kind=ours.get("kind"),
              meta=ours.get("info") or {key: meta.get(key) for key in ("dataset_path", "context_size")})
    with torch.no_grad():
        for name, t in tensors.items():
            getattr(sae, name).copy_(t)
        if not cfg.get("apply_b_dec_to_input", True):  # x @ W_enc + b_enc == (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
            sae.b_enc.add_(sae.b_dec @ sae.W_enc)
    if ours.get("fingerprint") not in (None, sae.fingerprint):
        raise SAEError(f"the weights at {folder} do not match the fingerprint in its {CONFIG}: "
                       "the files were changed or mixed up; save the SAE again.")
    return sae


def _read(path: Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(shapes):
                raise SAEError(f"{path} holds tensors {sorted(keys)}; this architecture needs exactly {sorted(shapes)}.")
            out = {k: f.get_tensor(k) for k in shapes}
    except SafetensorError as exc:
        raise SAEError(f"{path} is not a readable safetensors file ({exc}).") from None
    for k, t in out.items():
        if tuple(t.shape) != shapes[k] or not t.is_floating_point():
            raise SAEError(f"{k} in {path} is {t.dtype} {tuple(t.shape)}; expected floats of shape {shapes[k]}.")
        if not torch.isfinite(t).all():
            raise SAEError(f"{k} in {path} holds non-finite values: the file is damaged.")
    return {k: t.to(torch.float32) for k, t in out.items()}


__all__ = ["save", "load", "config", "weight_shapes", "WEIGHTS", "CONFIG", "LAYOUT_VERSION"]
