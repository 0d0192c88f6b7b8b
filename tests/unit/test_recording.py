"""Recordings: what is stored is what the model computed, and stores survive kills and damage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import llmscope
from llmscope.recording import IncompleteRecordingWarning, Recording, RecordingError, record
from llmscope.sites import SiteError
from llmscope.stimuli import Stimuli, from_texts, induction
from llmscope.tokens import PromptError

from conftest import make_tiny_gpt2
from record_worker import SITES
from record_worker import stimuli as worker_stimuli

HERE = Path(__file__).parent
TEXTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10 w11", "w12", "w13 w14 w15 w16"]


@pytest.fixture(scope="module")
def stim(tiny):
    """Five sequences of different lengths, so batches are padded."""
    return from_texts(tiny, TEXTS, tag=False)


@pytest.fixture(scope="module")
def saved(tiny, stim, tmp_path_factory):
    """A complete store of ``stim`` (do not modify: copy it first)."""
    path = tmp_path_factory.mktemp("saved") / "rec.zarr"
    record(tiny, stim, SITES, store=path, batch_size=2, progress=False)
    return path


def damaged(saved: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.zarr"
    shutil.copytree(saved, path)
    return path


def direct(model, stim: Stimuli, hook: str) -> np.ndarray:
    """Activations at the real positions, from one unbatched run_with_cache per sequence."""
    out = []
    with torch.no_grad():
        for i in range(stim.n_seqs):
            _, cache = model.run_with_cache(stim.ids[i: i + 1, : stim.lengths[i]], names_filter=[hook])
            out.append(cache[hook][0].numpy())
    return np.concatenate(out)


def edit_meta(path: Path, change) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    change(meta["attributes"])
    (path / "zarr.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------- what is recorded


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("float32", 1e-5)])
def test_recording_equals_run_with_cache(tiny, stim, dtype, tol):
    rec = record(tiny, stim, SITES, dtype=dtype, batch_size=2, progress=False)
    assert rec.sites == SITES and len(rec) == len(stim) == 21
    pd.testing.assert_frame_equal(rec.tokens, stim.tokens)
    for name in SITES:
        s = llmscope.site(tiny, name)
        got = rec.responses(name)
        assert got.dtype == np.float32 and got.shape == (21, *s.shape)
        np.testing.assert_allclose(got, direct(tiny, stim, s.hook), rtol=tol, atol=tol)
    assert not np.array_equal(rec.responses("mlp.0"), rec.responses("resid.2")[:, :1])


def test_store_equals_memory_and_reopens(tiny, stim, saved):
    mem = record(tiny, stim, SITES, batch_size=2, progress=False)
    rec = Recording.open(saved, model=tiny)
    assert rec.path == str(saved) and rec.complete and rec.sites == SITES
    pd.testing.assert_frame_equal(rec.tokens, mem.tokens)
    for name in SITES:
        assert np.array_equal(rec.responses(name), mem.responses(name))
    assert np.array_equal(rec.responses("blocks.1.attn.hook_z"), rec.responses("attn.1"))
    assert torch.equal(rec.stimuli.ids, stim.ids) and rec.stimuli.lengths.tolist() == stim.lengths.tolist()
    # A rerun on a complete store computes nothing and returns the same data.
    again = record(tiny, stim, SITES, store=saved, batch_size=2, progress=False)
    assert np.array_equal(again.responses("mlp.0"), mem.responses("mlp.0"))


def test_units_and_select(tiny, stim, saved):
    rec = Recording.open(saved)
    full = rec.responses("attn.1")
    assert np.array_equal(rec.responses("attn.1", units=[3, 1]), full[:, [3, 1]])
    assert rec.responses("mlp.0", units=5).shape == (21, 1)
    with pytest.raises(SiteError, match="out of range"):
        rec.responses("mlp.0", units=[64])
    mask = (rec.tokens.pos.to_numpy() % 2) == 1
    sub = rec.select(mask)
    assert len(sub) == mask.sum()
    assert np.array_equal(sub.responses("attn.1"), full[mask])
    pd.testing.assert_frame_equal(sub.tokens, rec.tokens[mask].reset_index(drop=True))
    q = rec.select("seq >= 2 and pos > 0")
    keep = ((rec.tokens.seq >= 2) & (rec.tokens.pos > 0)).to_numpy()
    assert np.array_equal(q.responses("resid.2"), rec.responses("resid.2")[keep])
    qq = q.select(q.tokens.seq.to_numpy() == 4)  # a selection of a selection
    assert np.array_equal(qq.responses("mlp.0"), rec.responses("mlp.0")[keep & (rec.tokens.seq == 4).to_numpy()])
    assert rec.select(np.zeros(len(rec), bool)).responses("attn.1").shape == (0, 4, 8)
    with pytest.raises(ValueError, match="boolean mask"):
        rec.select([0, 1])
    with pytest.raises(RecordingError, match="whole recording"):
        sub.stimuli


def test_missing_site_lists_recorded_ones(saved):
    with pytest.raises(SiteError, match="mlp.0, attn.1, resid.2"):
        Recording.open(saved).responses("mlp.1")


def test_repr_escapes_token_text(tiny):
    stim = Stimuli.from_ids(tiny, [[1, 4, 5]], labels={"note": ["<script>alert(1)</script>", "a&b", ""]})
    rec = record(tiny, stim, "mlp.1", progress=False)
    page = rec._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page and "mlp.1" in page
    assert "3 tokens" in repr(rec) and "in memory" in repr(rec)


# ---------------------------------------------------------------- refusals before the store is touched


def test_empty_and_too_long_stimuli_fail_before_the_store(tiny, tmp_path):
    path = tmp_path / "never.zarr"
    empty = Stimuli(torch.zeros((0, 0), dtype=torch.long), [], pd.DataFrame(
        {"seq": [], "pos": [], "token": [], "text": []}))
    with pytest.raises(PromptError, match="empty"):
        record(tiny, empty, "mlp.0", store=path)
    ids = torch.full((1, 40), 4)
    long = Stimuli(ids, [40], pd.DataFrame({"seq": 0, "pos": range(40), "token": 4, "text": "w1"}))
    with pytest.raises(PromptError, match="context"):
        record(tiny, long, "mlp.0", store=path)
    with pytest.raises(SiteError):
        record(tiny, induction(tiny, 1, 3), "mlp.9", store=path)
    assert not path.exists()


def test_foreign_folder_is_refused_and_left_alone(tiny, stim, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RecordingError, match="not an llmscope recording"):
        record(tiny, stim, "mlp.0", store=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with pytest.raises(RecordingError, match="not a folder"):
        Recording.open(tmp_path / "nothing.zarr")


def test_file_path_is_refused(tiny, stim, tmp_path):
    (tmp_path / "x.zarr").write_text("mine")
    with pytest.raises(RecordingError, match="is a file"):
        record(tiny, stim, "mlp.0", store=tmp_path / "x.zarr")
    assert (tmp_path / "x.zarr").read_text() == "mine"


def test_second_recorder_is_refused_until_the_first_dies(tiny, stim, tmp_path):
    store = tmp_path / "shared.zarr"
    store.mkdir()
    holder = subprocess.Popen(  # another process holding the lock record() takes
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); time.sleep(120)", str(store / ".llmscope-recording.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RecordingError, match="something else is recording into"):
            record(tiny, stim, SITES, store=store, progress=False)
        assert [p.name for p in store.iterdir()] == [".llmscope-recording.lock"]  # nothing written
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    rec = record(tiny, stim, SITES, store=store, progress=False)
    assert rec.complete and Recording.open(store).complete


# ---------------------------------------------------------------- another model, other stimuli


def test_store_of_another_model_is_refused(tiny, stim, saved, tmp_path):
    other = llmscope.load(str(make_tiny_gpt2(tmp_path / "other", seed=1)))
    with pytest.raises(RecordingError, match=f"made by model {str(tiny.cfg.model_name)!r}"):
        Recording.open(saved, model=other)
    with pytest.raises(RecordingError, match="weights differ"):
        record(other, stim, SITES, store=damaged(saved, tmp_path))


def test_store_of_other_stimuli_or_sites_is_refused(tiny, stim, saved, tmp_path):
    path = damaged(saved, tmp_path)
    with pytest.raises(RecordingError, match="other sites"):
        record(tiny, stim, ["mlp.0"], store=path)
    with pytest.raises(RecordingError, match="other stimuli"):
        record(tiny, from_texts(tiny, TEXTS[:3], tag=False), SITES, store=path)
    with pytest.raises(RecordingError, match="other dtype"):
        record(tiny, stim, SITES, store=path, dtype="float32")


# ---------------------------------------------------------------- damage


def _delete_chunk(p: Path) -> None:
    (p / "responses" / "mlp.0" / "c" / "0" / "0").unlink()


def _truncate_chunk(p: Path) -> None:
    chunk = p / "responses" / "attn.1" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])


def _delete_array(p: Path) -> None:
    shutil.rmtree(p / "responses" / "resid.2")


def _truncate_table(p: Path) -> None:
    chunk = p / "tokens" / "text" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])


def _wrong_shape(p: Path) -> None:
    edit_meta(p, lambda a: a["llmscope"]["sites"][0].update(shape=[65]))


def _bad_metadata(p: Path) -> None:
    edit_meta(p, lambda a: a["llmscope"].pop("dtype"))


def _bad_json(p: Path) -> None:
    (p / "zarr.json").write_text("{not json")


@pytest.mark.parametrize("damage,message", [
    (_delete_chunk, "chunk 0 of site mlp.0 .* is missing"),
    (_truncate_chunk, "chunk 0 of site attn.1 .* holds 100 bytes"),
    (_delete_array, "lost the array of site resid.2"),
    (_truncate_table, "trial table .* cannot be read"),
    (_wrong_shape, "site mlp.0 .* not \\(21, 65\\)"),
    (_bad_metadata, "metadata .* damaged"),
    (_bad_json, "not a zarr v3 recording"),
])
def test_damaged_store_is_a_clear_error(tiny, stim, saved, tmp_path, damage, message):
    path = damaged(saved, tmp_path)
    damage(path)
    with pytest.raises(RecordingError, match=message):
        Recording.open(path)


def test_damage_after_opening_is_a_clear_error(saved, tmp_path):
    rec = Recording.open(damaged(saved, tmp_path))
    _truncate_chunk(Path(rec.path))
    with pytest.raises(RecordingError, match="attn.1 cannot be read"):
        rec.responses("attn.1")


# ---------------------------------------------------------------- interrupted recordings


def test_incomplete_store_warns_then_resumes(tiny, stim, saved, tmp_path):
    path = damaged(saved, tmp_path)
    edit_meta(path, lambda a: a.update(done_seqs=2))  # as if stopped after the first batch
    chunk = path / "responses" / "mlp.0" / "c" / "0" / "0"  # rows 7.. (not done) may hold anything
    rows = np.frombuffer(chunk.read_bytes(), np.float16).reshape(21, 64).copy()
    rows[7:] = np.nan
    chunk.write_bytes(rows.tobytes())
    with pytest.warns(IncompleteRecordingWarning, match="2 of 5 sequences.*call record"):
        part = Recording.open(path)
    assert len(part) == 7 and not part.complete and "incomplete" in repr(part)
    rec = record(tiny, stim, SITES, store=path, batch_size=2, progress=False)
    full = Recording.open(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = Recording.open(path)
    for name in SITES:
        assert np.array_equal(rec.responses(name), full.responses(name))
        assert np.array_equal(reopened.responses(name), full.responses(name))


def _done(store: Path) -> int:
    try:
        return json.loads((store / "zarr.json").read_text())["attributes"]["done_seqs"]
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_recording_resumes_to_identical_arrays(tiny, tiny_dir, tmp_path):
    n_seqs, batch = 160, 8
    store = tmp_path / "killed.zarr"
    worker = subprocess.Popen(
        [sys.executable, str(HERE / "record_worker.py"), str(tiny_dir), str(store), str(n_seqs), str(batch)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _done(store) < n_seqs // 4 and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert worker.poll() is None, f"worker ended early: {worker.stderr.read().decode()[-2000:]}"
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    done = _done(store)
    assert 0 < done < n_seqs, done
    stim = worker_stimuli(tiny, n_seqs)
    resumed = record(tiny, stim, SITES, store=store, batch_size=batch, progress=False)
    clean = record(tiny, stim, SITES, store=tmp_path / "clean.zarr", batch_size=batch, progress=False)
    assert resumed.complete
    pd.testing.assert_frame_equal(Recording.open(store).tokens, clean.tokens)
    for name in SITES:
        assert np.array_equal(resumed.responses(name), clean.responses(name)), name


def test_float16_overflow_warns(tiny_dir, stim):
    big = llmscope.load(str(tiny_dir))
    with torch.no_grad():
        big.original_model.get_input_embeddings().weight.mul_(1e8)
    with pytest.warns(UserWarning, match="beyond the float16 range"):
        rec = record(big, stim, "resid.0", progress=False)
    assert np.isinf(rec.responses("resid.0")).any()
    assert np.isfinite(record(big, stim, "resid.0", dtype="float32", progress=False).responses("resid.0")).all()


def test_resume_refuses_other_labels(tiny, stim, saved, tmp_path):
    path = damaged(saved, tmp_path)
    edit_meta(path, lambda a: a.update(done_seqs=2))
    relabelled = Stimuli(stim.ids, stim.lengths, stim.tokens.assign(text="x"), name=stim.name)
    with pytest.raises(RecordingError, match="other tokens or labels"):
        record(tiny, relabelled, SITES, store=path, batch_size=2, progress=False)
