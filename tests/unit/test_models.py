"""The model zoo: offline names, local folders, the hub path offline, the SmolLM2 cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import llmscope
from llmscope.models import ModelNotAvailable, cache_dir, smollm2_folder


def test_local_folder_loads_as_hookable_bridge(tiny):
    _, cache = tiny.run_with_cache(tiny.to_tokens("w1 w2 w3"), names_filter="blocks.1.mlp.hook_post")
    assert cache["blocks.1.mlp.hook_post"].shape == (1, 4, 64)
    assert not tiny.training


def test_load_prints_no_weight_bar_and_leaves_the_setting(tiny_dir, capfd):
    from transformers.utils import logging as hf_logging

    llmscope.load(str(tiny_dir))
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the user's transformers setting is as it was


def test_available_lists_offline_models():
    table = llmscope.available()
    assert {"name", "kind", "params", "size_mb", "offline", "ready"} <= set(table.columns)
    smol = table.set_index("name").loc["smollm2-135m"]
    assert bool(smol.offline)
    assert 130e6 < smol.params < 140e6


@pytest.mark.timeout(30)
@pytest.mark.parametrize("offline_env", [True, False], ids=["HF_HUB_OFFLINE", "no-network"])
def test_unknown_name_offline_fails_fast_naming_offline_models(offline_env, tmp_path):
    """Offline a hub name raises ModelNotAvailable quickly, whether or not the env says so."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if offline_env:
        env["HF_HUB_OFFLINE"] = "1"
    code = textwrap.dedent("""
        import time, llmscope
        t = time.perf_counter()
        try:
            llmscope.load("someone/not-a-model-here")
        except llmscope.errors.ModelNotAvailable as e:
            print(f"{time.perf_counter() - t:.2f}|{e}")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    seconds, message = out.stdout.strip().split("|", 1)
    assert float(seconds) < 5.0
    assert "smollm2-135m" in message and "not-a-model-here" in message


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        llmscope.load(str(tmp_path))


def test_folder_without_safetensors_is_refused(tiny_dir, tmp_path):
    """A folder whose weights are only a pickle is not loaded (llmscope never unpickles)."""
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailable, match="safetensors"):
        llmscope.load(str(folder))


def test_a_file_path_is_not_a_model(tiny_dir):
    with pytest.raises(ModelNotAvailable, match="file"):
        llmscope.load(str(tiny_dir / "config.json"))


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name(name):
    with pytest.raises(ModelNotAvailable, match="non-empty"):
        llmscope.load(name)


@pytest.mark.smollm2
def test_smollm2_greedy_paris(smol):
    tokens = smol.to_tokens("The capital of France is")
    with torch.no_grad():
        next_id = smol(tokens)[0, -1].argmax().item()
    assert smol.tokenizer.decode([next_id]) == " Paris"


@pytest.mark.smollm2
def test_smollm2_is_a_llama_bridge(smol):
    assert smol.cfg.n_layers == 30 and smol.cfg.d_mlp == 1536 and smol.cfg.model_name == "smollm2-135m"
    assert "blocks.29.mlp.hook_post" in smol.hook_dict


def _copy_cache(tmp_path: Path) -> Path:
    """A private copy of the converted SmolLM2 cache, so tests can break it safely."""
    src = smollm2_folder()
    dst = tmp_path / "cache" / src.name
    shutil.copytree(src, dst)
    return dst


def _paris_in_subprocess(cache: Path) -> subprocess.Popen:
    code = textwrap.dedent("""
        import torch, llmscope
        m = llmscope.load("smollm2-135m")
        with torch.no_grad():
            i = m(m.to_tokens("The capital of France is"))[0, -1].argmax().item()
        print(repr(m.tokenizer.decode([i])))
    """)
    env = {**os.environ, "LLMSCOPE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.smollm2
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_truncated_cache_is_rebuilt_once_by_two_processes_at_once(tmp_path):
    """A truncated weight file is detected; two loaders at once rebuild it once and both work.

    A stale temporary folder, as a killed conversion leaves, is ignored.
    """
    folder = _copy_cache(tmp_path)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)
    stale = folder.parent / f".{folder.name}-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    procs = [_paris_in_subprocess(folder.parent) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [o[0].strip() for o in outs] == ["' Paris'", "' Paris'"], [o[1][-2000:] for o in outs]
    rebuilt = sum("rebuilding" in err for _, err in outs)
    assert rebuilt == 1, "exactly one process should have rebuilt the cache"
    assert weights.stat().st_size == smollm2_folder().joinpath("model.safetensors").stat().st_size


@pytest.mark.smollm2
def test_corrupted_cache_header_is_detected(tmp_path, monkeypatch):
    """Bytes flipped in the safetensors header make the cache count as broken."""
    from llmscope.models import _folder_is_complete

    folder = _copy_cache(tmp_path)
    assert _folder_is_complete(folder)
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(8)
        f.write(b"}}}}garbage")
    assert not _folder_is_complete(folder)


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMSCOPE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


@pytest.mark.parametrize("device, match", [("gpu:7", "unknown device 'gpu:7'"), ("cuda", "not available"),
                                           (3.5, "unknown device")])
def test_a_device_that_does_not_exist(tiny_dir, device, match):
    with pytest.raises(ModelNotAvailable, match=match):
        llmscope.load(str(tiny_dir), device=device)


def test_zoo_models_are_named_by_their_zoo_name(organism):
    assert organism.cfg.model_name == "grammar-2l"
