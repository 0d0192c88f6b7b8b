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
from llmscope.errors import ColumnError, LLMScopeError
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


def test_labelled_responses_are_a_unit_table(saved):
    rec = Recording.open(saved)
    table = rec.responses("mlp.0", units=[3, 1], labelled=True)
    assert isinstance(table, pd.DataFrame) and table.columns.names == ["site", "unit"]
    assert table.columns.tolist() == [("mlp.0", 3), ("mlp.0", 1)]
    assert table.index.equals(rec.tokens.index)
    assert np.array_equal(table.to_numpy(), rec.responses("mlp.0")[:, [3, 1]])
    whole = rec.responses("resid.2", labelled=True)
    assert whole.shape == (21, 32) and whole.columns[-1] == ("resid.2", 31)
    sub = rec.select(rec.tokens.seq.to_numpy() == 2)
    part = sub.responses("mlp.0", labelled=True)
    assert part.index.equals(sub.tokens.index) and np.array_equal(part.to_numpy(), sub.responses("mlp.0"))
    with pytest.raises(SiteError, match=r"attn.1 has 8 values per head.*to_xarray"):
        rec.responses("attn.1", labelled=True)
    with pytest.raises(RecordingError, match="labelled must be True or False, got 'yes'"):
        rec.responses("mlp.0", labelled="yes")


def test_select_errors_name_the_columns(saved):
    rec = Recording.open(saved)
    with pytest.raises(ColumnError, match=r"'nope' is not defined; the trial table's columns are \['seq', 'pos'") as err:
        rec.select("nope == 1")
    assert isinstance(err.value, LLMScopeError) and not str(err.value).startswith(("'", '"'))
    with pytest.raises(RecordingError, match=r"select\('pos >'\) is not a query .*SyntaxError.*\['seq', 'pos'"):
        rec.select("pos >")
    with pytest.raises(RecordingError, match="boolean mask of 21 rows; got int64 of shape \\(21,\\)"):
        rec.select("pos + 1")
    with pytest.raises(RecordingError, match="boolean mask of 21 rows; got bool of shape \\(20,\\)"):
        rec.select(np.ones(20, bool))
    first = 2
    assert len(rec.select("pos >= @first")) == int((rec.tokens.pos >= 2).sum()) > 0  # @name: the caller's variable


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


@pytest.mark.parametrize("kwargs,message", [
    (dict(dtype=["float16"]), "dtype must be one of"),
    (dict(batch_size=1.5), "batch_size must be an integer >= 1, got 1.5"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(progress="no"), "progress must be True or False"),
    (dict(store=3), "store must be None .* got int"),
])
def test_bad_record_arguments_are_clear_errors(tiny, stim, kwargs, message):
    with pytest.raises(RecordingError, match=message):
        record(tiny, stim, "mlp.0", **kwargs)
    with pytest.raises(TypeError, match="Stimuli"):
        record(tiny, 3, "mlp.0")


def test_columns_named_like_arrays_are_refused_before_the_store(tiny, stim, tmp_path):
    path = tmp_path / "never.zarr"
    for name in ("mlp.0", "mlp.0.neuron", "my label"):
        bad = Stimuli(stim.ids, stim.lengths, stim.tokens.assign(**{name: 1}), name=stim.name)
        with pytest.raises(RecordingError, match=f"rename \\[{name!r}\\]"):
            record(tiny, bad, "mlp.0", store=path)
    assert not path.exists()
    with pytest.raises(RecordingError, match="not a Recording|got int"):
        Recording.open(3)


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


def test_recording_names_a_zoo_model_by_its_name(organism, tiny, tmp_path):
    stim = llmscope.stimuli.grammar(organism, n_docs=2, seed=0)
    rec = record(organism, stim, "mlp.0", store=tmp_path / "g.zarr", progress=False)
    assert rec.model_name == "grammar-2l" and "by 'grammar-2l'" in repr(rec)
    with pytest.raises(RecordingError, match="made by model 'grammar-2l', not by this model"):
        Recording.open(tmp_path / "g.zarr", model=tiny)


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
    (p / "mlp.0" / "c" / "0" / "0").unlink()


def _truncate_chunk(p: Path) -> None:
    chunk = p / "attn.1" / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])


def _delete_array(p: Path) -> None:
    shutil.rmtree(p / "resid.2")


def _truncate_table(p: Path) -> None:
    chunk = p / "text" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:5])


def _wrong_shape(p: Path) -> None:
    edit_meta(p, lambda a: a["llmscope"]["sites"][0].update(shape=[65]))


def _bad_metadata(p: Path) -> None:
    edit_meta(p, lambda a: a["llmscope"].pop("dtype"))


def _old_format(p: Path) -> None:
    edit_meta(p, lambda a: a["llmscope"].update(format=1))


def _bad_json(p: Path) -> None:
    (p / "zarr.json").write_text("{not json")


@pytest.mark.parametrize("damage,message", [
    (_delete_chunk, "chunk 0 of site mlp.0 .* is missing"),
    (_truncate_chunk, "chunk 0 of site attn.1 .* holds 100 bytes"),
    (_delete_array, "lost the array of site resid.2"),
    (_truncate_table, "trial table .* cannot be read"),
    (_wrong_shape, "site mlp.0 .* not \\(21, 65\\)"),
    (_bad_metadata, "metadata .* damaged"),
    (_old_format, "in store format 1; .* reads format 2"),
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
    chunk = path / "mlp.0" / "c" / "0" / "0"  # rows 7.. (not done) may hold anything
    rows = np.frombuffer(chunk.read_bytes(), np.float16).reshape(21, 64).copy()
    rows[7:] = np.nan
    chunk.write_bytes(rows.tobytes())
    with pytest.warns(IncompleteRecordingWarning, match="2 of 5 sequences.*call record"):
        part = Recording.open(path)
    assert len(part) == 7 and not part.complete and "incomplete" in repr(part)
    assert (part.done_seqs, part.n_seqs) == (2, 5)
    assert np.array_equal(part.to_xarray()["mlp.0"].values, part.responses("mlp.0"))  # recorded rows only
    rec = record(tiny, stim, SITES, store=path, batch_size=2, progress=False)
    full = Recording.open(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = Recording.open(path)
    assert (reopened.done_seqs, reopened.n_seqs) == (5, 5) and reopened.complete
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


# ---------------------------------------------------------------- xarray and dask


def test_arrays_name_their_dimensions(saved, stim):
    import zarr

    group = zarr.open_group(str(saved), mode="r")
    assert group["mlp.0"].metadata.dimension_names == ("token", "mlp.0.neuron")
    assert group["attn.1"].metadata.dimension_names == ("token", "attn.1.head", "attn.1.d_head")
    assert group["resid.2"].metadata.dimension_names == ("token", "resid.2.dim")
    for column in stim.tokens.columns:
        assert group[column].metadata.dimension_names == ("token",)
    assert np.array_equal(group["attn.1.head"][:], np.arange(4))


def test_plain_open_zarr_sees_the_recording(saved, stim):
    import dask.array
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated metadata: no fallback warning, lock file unseen
        ds = xr.open_zarr(saved)
    assert set(ds.data_vars) == set(SITES)
    assert ds["attn.1"].dims == ("token", "attn.1.head", "attn.1.d_head") and ds.sizes["token"] == 21
    assert set(stim.tokens.columns) <= set(ds.coords)
    assert all(isinstance(ds[name].data, dask.array.Array) for name in SITES)
    assert ds["token"].values.tolist() == stim.tokens.token.tolist()
    assert ds["seq"].values.tolist() == stim.tokens.seq.tolist()
    assert ds.attrs["done_seqs"] == 5 and ds.attrs["llmscope"]["sites"][0]["name"] == "mlp.0"


def test_dask_reduces_a_store_as_numpy_does(organism, tmp_path):
    import xarray as xr

    stim = llmscope.stimuli.grammar(organism, n_docs=12, seed=1)
    rec = record(organism, stim, ["mlp.0", "attn.1"], store=tmp_path / "g.zarr", dtype="float32", progress=False)
    ds = xr.open_zarr(tmp_path / "g.zarr")
    assert ds["mlp.0"].data.numblocks[0] >= 2  # the reduction spans several chunks
    means = ds["mlp.0"].groupby(ds.pos_tag.load()).mean("token").compute()
    tags, x = rec.tokens.pos_tag.to_numpy(), rec.responses("mlp.0")
    assert len(means.pos_tag) >= 5
    for tag in means.pos_tag.values:
        np.testing.assert_allclose(means.sel(pos_tag=tag).values, x[tags == tag].mean(0), rtol=1e-5, atol=1e-6)
    head_norm = np.sqrt((ds["attn.1"].astype("float64") ** 2).sum("attn.1.d_head")).max("token").compute()
    np.testing.assert_allclose(head_norm.values, np.linalg.norm(rec.responses("attn.1"), axis=2).max(0), rtol=1e-5)


def test_to_xarray_is_lazy_and_matches_responses(tiny, stim, saved, tmp_path):
    import dask.array

    for rec in (record(tiny, stim, SITES, progress=False), Recording.open(saved)):  # in memory, on disk
        ds = rec.to_xarray()
        for name in SITES:
            assert isinstance(ds[name].data, dask.array.Array) and ds[name].dtype == np.float32
            assert np.array_equal(ds[name].values, rec.responses(name))
        assert ds["attn.1"].dims == ("token", "attn.1.head", "attn.1.d_head")
        assert ds["mlp.0.neuron"].values.tolist() == list(range(64))
        for column in rec.tokens.columns:
            assert not isinstance(ds[column].data, dask.array.Array)
            assert ds[column].values.tolist() == rec.tokens[column].tolist()
        mask = rec.tokens.pos.to_numpy() % 2 == 1
        part = rec.select(mask).to_xarray()
        assert part.sizes["token"] == mask.sum() and np.array_equal(part["attn.1"].values, rec.responses("attn.1")[mask])
        assert part["pos"].values.tolist() == rec.tokens.pos[mask].tolist()
        assert rec.select(np.zeros(len(rec), bool)).to_xarray()["mlp.0"].shape == (0, 64)
    rec = Recording.open(damaged(saved, tmp_path))
    ds = rec.to_xarray()
    _delete_chunk(Path(rec.path))  # nothing was read yet: the missing chunk reads as its fill value
    assert np.isnan(ds["mlp.0"].values).all() and not np.isnan(rec.to_xarray()["resid.2"].values).any()


def test_responses_as_stored_are_the_float16_values_and_bad_dtypes_are_named(saved):
    rec = Recording.open(saved)
    site = rec.sites[0]
    raw = rec.responses(site, dtype=None)
    assert rec.dtype == "float16" and raw.dtype == np.float16
    np.testing.assert_array_equal(raw.astype(np.float32), rec.responses(site))
    for bad in ("float64", np.float32, 16):
        with pytest.raises(RecordingError, match=r"'float32' or None"):
            rec.responses(site, dtype=bad)
