"""Recordings: what is stored is what the model computed, and stores survive kills and damage."""

from __future__ import annotations

import errno
import json
import os
import re
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
import zarr

import llmscope
from llmscope.errors import ColumnError, LLMScopeError
from llmscope.identity import fingerprint
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
    assert np.array_equal(rec.responses("attn.1", indices=[3, 1]), full[:, [3, 1]])
    assert rec.responses("mlp.0", indices=5).shape == (21, 1)
    with pytest.raises(SiteError, match="out of range"):
        rec.responses("mlp.0", indices=[64])
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
    table = rec.responses("mlp.0", indices=[3, 1], labelled=True)
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
    first = 2  # noqa: F841 (read by the query string)
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
    with pytest.raises(RecordingError, match=f"was made for {re.escape(str(tiny.cfg.model_name))}; this model is "):
        Recording.open(saved, model=other)
    with pytest.raises(RecordingError, match="a model with other weights"):
        record(other, stim, SITES, store=damaged(saved, tmp_path))


def test_recording_names_a_zoo_model_by_its_name(organism, tiny, tmp_path):
    stim = llmscope.stimuli.grammar(organism, n_docs=2, seed=0)
    rec = record(organism, stim, "mlp.0", store=tmp_path / "g.zarr", progress=False)
    assert rec.model_name == "grammar-2l" and "by 'grammar-2l'" in repr(rec)
    with pytest.raises(RecordingError, match="was made for grammar-2l; this model is /"):
        Recording.open(tmp_path / "g.zarr", model=tiny)


def test_one_changed_tensor_makes_another_model(organism, tmp_path):
    stim = llmscope.stimuli.grammar(organism, n_docs=4, seed=0)
    path = tmp_path / "g.zarr"
    rec = record(organism, stim, "mlp.0", store=path, batch_size=2, progress=False)
    assert rec.fingerprint == fingerprint(organism) and rec.made_by(organism)
    edit_meta(path, lambda a: a.update(done_seqs=2))  # stopped early: a resume would write
    other = llmscope.load("grammar-2l")
    weight = next(p for n, p in other.original_model.named_parameters()
                  if ".h.0." in n and "c_fc" in n and n.endswith("weight"))
    with torch.no_grad():
        weight.neg_()  # block 0's MLP input weights, one tensor, in place
    first = stim.select_seqs([0])
    assert not np.allclose(record(other, first, "mlp.0", progress=False).responses("mlp.0"),
                           rec.responses("mlp.0")[: len(first)], atol=0.1)
    assert not rec.made_by(other)
    with pytest.raises(RecordingError, match="was made for grammar-2l .*a model with other weights"):
        Recording.open(path, model=other)
    with pytest.raises(RecordingError, match="was made for grammar-2l .*a model with other weights"):
        record(other, stim, "mlp.0", store=path, batch_size=2, progress=False)
    with pytest.warns(IncompleteRecordingWarning):
        assert Recording.open(path, model=organism).done_seqs == 2  # the same weights are accepted
    assert record(organism, stim, "mlp.0", store=path, batch_size=2, progress=False).complete


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


def _bad_site_json(p: Path) -> None:
    (p / "mlp.0" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')


@pytest.mark.parametrize("damage,message", [
    (_delete_chunk, "chunk 0 of site mlp.0 .* is missing"),
    (_truncate_chunk, "chunk 0 of site attn.1 .* holds 100 bytes"),
    (_delete_array, "lost the array of site resid.2"),
    (_truncate_table, "chunk 0 of the trial-table column 'text' .* cannot be read"),
    (_wrong_shape, "site mlp.0 .* not \\(21, 65\\)"),
    (_bad_metadata, "metadata .* damaged"),
    (_old_format, "in store format 1; .* reads format 3: record it again"),
    (_bad_json, r"zarr.json\) cannot be read \(JSONDecodeError.*record it again"),
    (_bad_site_json, "the metadata of site mlp.0 .* cannot be read .*record it again"),
])
def test_damaged_store_is_a_clear_error(tiny, stim, saved, tmp_path, damage, message):
    path = damaged(saved, tmp_path)
    damage(path)
    with pytest.raises(RecordingError, match=message):
        Recording.open(path)


def _flip(chunk: Path, at: int) -> None:
    data = bytearray(chunk.read_bytes())
    data[at] ^= 0xFF
    chunk.write_bytes(bytes(data))


def test_every_chunk_carries_a_checksum(saved):
    group = zarr.open_group(str(saved), mode="r")
    names = [name for name, _ in group.arrays()]
    assert {"mlp.0", "attn.1.head", "text", "seq"} <= set(names)
    for name in names:
        assert any(type(c).__name__ == "Crc32cCodec" for c in group[name].metadata.codecs), name
    chunk = saved / "mlp.0" / "c" / "0" / "0"
    assert chunk.stat().st_size == 21 * 64 * 2 + 4  # raw float16 values, then the checksum


def test_flipped_bytes_are_named_on_read(saved, tmp_path):
    rec = Recording.open(damaged(saved, tmp_path))
    clean = rec.responses("mlp.0")
    _flip(Path(rec.path) / "mlp.0" / "c" / "0" / "0", 1000)  # same size: only the checksum can tell
    message = r"chunk 0 of site mlp.0 in the recording at .* cannot be read \(.*checksum.*record it again"
    with pytest.raises(RecordingError, match=message):
        rec.responses("mlp.0")
    with pytest.raises(RecordingError, match=message):
        rec.to_xarray()["mlp.0"].values
    with pytest.raises(RecordingError, match=message):
        Recording.open(rec.path).select("seq == 4").responses("mlp.0", indices=[2])
    assert np.array_equal(rec.responses("resid.2"), Recording.open(saved).responses("resid.2"))  # others read
    assert not np.isnan(clean).any()
    _flip(Path(rec.path) / "pos" / "c" / "0", 3)
    with pytest.raises(RecordingError, match="trial table .* cannot be read .*checksum.*record it again"):
        rec.to_xarray()
    with pytest.raises(RecordingError, match="chunk 0 of the trial-table column 'pos' .* cannot be read"):
        Recording.open(rec.path)


def _partial(path: Path, seqs: int, rows: int) -> None:
    """Make a copy of a complete store look stopped after ``seqs`` sequences (``rows`` rows):
    counter, ledgers and the rows past them as a real interruption leaves them."""
    edit_meta(path, lambda a: a.update(done_seqs=seqs))
    for site in SITES:
        arr = zarr.open_array(path / site, mode="r+")
        arr[rows:] = np.nan
        arr.update_attributes({"written_rows": rows})


def test_a_raised_done_seqs_is_caught_and_resumed(tiny, stim, saved, tmp_path):
    path = damaged(saved, tmp_path)
    _partial(path, 2, 7)
    with pytest.warns(IncompleteRecordingWarning):
        assert len(Recording.open(path)) == 7
    edit_meta(path, lambda a: a.update(done_seqs=5))  # raised by hand: rows 7.. are NaN holes
    with pytest.raises(RecordingError, match=r"counts 5 of 5 sequences .* hold only the first 2: .*"
                                             r"record\(model, stimuli, sites, store=.*it records the sequences after"):
        Recording.open(path)
    rec = record(tiny, stim, SITES, store=path, batch_size=2, progress=False)  # resumes after the 2 it holds
    full = Recording.open(saved)
    assert Recording.open(path).complete
    for name in SITES:
        assert np.array_equal(rec.responses(name), full.responses(name)), name


def test_damage_after_opening_is_a_clear_error(saved, tmp_path):
    rec = Recording.open(damaged(saved, tmp_path))
    _truncate_chunk(Path(rec.path))
    with pytest.raises(RecordingError, match=r"chunk 0 of site attn.1 \(.*/attn.1/c/0/0/0\) holds 100 bytes"):
        rec.responses("attn.1")


# ---------------------------------------------------------------- interrupted recordings


def test_incomplete_store_warns_then_resumes(tiny, stim, saved, tmp_path):
    path = damaged(saved, tmp_path)
    edit_meta(path, lambda a: a.update(done_seqs=2))  # as if stopped after the first batch
    zarr.open_array(path / "mlp.0", mode="r+")[7:] = np.nan  # rows 7.. (not done) may hold anything
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


def _fill_disk(monkeypatch, store: Path, at) -> None:
    """Make zarr's writes into ``store`` fail with ENOSPC from the first one ``at(parts, data)``
    picks (``parts``: the file's path inside the store; ``data``: its bytes), as a full disk does."""
    import zarr.storage._local as local

    real, full = local._put, []

    def put(path, value, exclusive=False):
        if full or at(Path(path).relative_to(store).parts, value.to_bytes()):
            full.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, value, exclusive)

    monkeypatch.setattr(local, "_put", put)


def test_full_disk_names_the_store_and_what_it_needs_then_resumes(tiny, stim, saved, tmp_path, monkeypatch):
    store = tmp_path / "full.zarr"
    chunks = []  # the second batch's first site chunk fails: the first batch (2 sequences, 7 rows) is in
    _fill_disk(monkeypatch, store, lambda parts, _: parts[0] in SITES and "c" in parts
               and (chunks.append(parts) or len(chunks) > len(SITES)))
    with pytest.raises(RecordingError) as err:
        record(tiny, stim, SITES, store=store, batch_size=2, progress=False)
    # 14 rows of (64 + 4 * 8 + 32) float16 values: 3.5 kB
    expected = (rf"the disk holding the recording at {re.escape(str(store))} is full \(No space left on device\): "
                r"it holds 2 of 5 sequences, and the 14 rows still to record need about 3\.5 kB "
                r"\(256 bytes a row\); .* are free\. Free some space, then call record\(\) again .*it resumes")
    assert re.search(expected, str(err.value)), err.value
    monkeypatch.undo()
    resumed = record(tiny, stim, SITES, store=store, batch_size=2, progress=False)
    full = Recording.open(saved)
    pd.testing.assert_frame_equal(Recording.open(store).tokens, full.tokens)
    for name in SITES:
        assert np.array_equal(resumed.responses(name), full.responses(name)), name


def test_full_disk_at_the_closing_metadata_resumes(tiny, stim, saved, tmp_path, monkeypatch):
    import xarray as xr

    store = tmp_path / "full.zarr"
    _fill_disk(monkeypatch, store, lambda parts, data: parts == ("zarr.json",) and b"consolidated_metadata" in data)
    with pytest.raises(RecordingError, match="holds 5 of 5 sequences, and only its closing metadata .* is still to "
                                             "write; .* call record\\(\\) again"):
        record(tiny, stim, SITES, store=store, batch_size=2, progress=False)
    monkeypatch.undo()
    assert record(tiny, stim, SITES, store=store, batch_size=2, progress=False).complete
    assert json.loads((store / "zarr.json").read_text())["consolidated_metadata"] is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consolidated: xarray opens it without a fallback warning
        assert set(xr.open_zarr(store).data_vars) == set(SITES)


@pytest.mark.parametrize("first_failed", [("zarr.json",), ("mlp.0", "zarr.json"), ("text", "c", "0")])
def test_open_after_a_failed_creation_advises_what_works(tiny, stim, saved, tmp_path, monkeypatch, first_failed):
    store = tmp_path / "made.zarr"
    _fill_disk(monkeypatch, store, lambda parts, _: parts == first_failed)
    with pytest.raises(RecordingError, match="is full .*it holds 0 of 5 sequences"):
        record(tiny, stim, SITES, store=store, batch_size=2, progress=False)
    monkeypatch.undo()
    with pytest.raises(RecordingError) as err:
        Recording.open(store)
    message = str(err.value)
    assert f"record(model, stimuli, sites, store={str(store)!r})" in message and "new path" not in message, message
    rec = record(tiny, stim, SITES, store=store, batch_size=2, progress=False)  # the advice works
    assert Recording.open(store).complete
    for name in SITES:
        assert np.array_equal(rec.responses(name), Recording.open(saved).responses(name))


def _read_only(path: Path, monkeypatch) -> None:
    """Make a store read-only: chmod, and where that does not stop writes (root), make taking
    the lock fail as it does in a read-only folder."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        (path / "probe").touch()
    except PermissionError:
        return
    (path / "probe").unlink()
    import filelock

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", self.lock_file)

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)


def _writable(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _snapshot(path: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def test_record_returns_a_complete_read_only_store_untouched(tiny, stim, saved, tmp_path, monkeypatch):
    path = damaged(saved, tmp_path)
    before = _snapshot(path)
    _read_only(path, monkeypatch)
    try:
        rec = record(tiny, stim, SITES, store=path, batch_size=2, progress=False)
        assert rec.complete and _snapshot(path) == before
        for name in SITES:
            assert np.array_equal(rec.responses(name), Recording.open(saved).responses(name))
    finally:
        _writable(path)


def test_an_incomplete_read_only_store_is_a_clear_error(tiny, stim, saved, tmp_path, monkeypatch):
    path = damaged(saved, tmp_path)
    _partial(path, 2, 7)
    _read_only(path, monkeypatch)
    try:
        with pytest.raises(RecordingError, match=r"cannot write to .*: the recording there holds 2 of 5 sequences "
                                                 r"and needs writing to be finished\. Make the folder writable"):
            record(tiny, stim, SITES, store=path, batch_size=2, progress=False)
        with pytest.warns(IncompleteRecordingWarning):
            assert len(Recording.open(path)) == 7  # what it holds stays readable
    finally:
        _writable(path)


def test_a_new_store_in_a_read_only_folder_is_a_clear_error(tiny, stim, tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    _read_only(folder, monkeypatch)
    try:
        with pytest.raises(RecordingError, match=r"cannot write to .*new.zarr \(.*\): record\(\) makes its store "
                                                 r"there\. Give it a folder path you can write to"):
            record(tiny, stim, SITES, store=folder / "new.zarr", progress=False)
    finally:
        _writable(folder)


def test_resume_refuses_other_labels(tiny, stim, saved, tmp_path):
    path = damaged(saved, tmp_path)
    edit_meta(path, lambda a: a.update(done_seqs=2))
    relabelled = Stimuli(stim.ids, stim.lengths, stim.tokens.assign(text="x"), name=stim.name)
    with pytest.raises(RecordingError, match="other tokens or labels"):
        record(tiny, relabelled, SITES, store=path, batch_size=2, progress=False)


# ---------------------------------------------------------------- xarray and dask


def test_arrays_name_their_dimensions(saved, stim):
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


def test_a_store_deleted_after_opening_is_a_clear_error(saved, tmp_path):
    rec = Recording.open(damaged(saved, tmp_path))
    shutil.rmtree(rec.path)
    for read in (rec.to_xarray, lambda: rec.responses("mlp.0")):
        with pytest.raises(RecordingError, match="is gone .*deleted or moved.*Recording.open it where it is now"):
            read()


def test_a_metadata_file_damaged_after_opening_is_a_clear_error(saved, tmp_path):
    rec = Recording.open(damaged(saved, tmp_path))
    _bad_json(Path(rec.path))
    with pytest.raises(RecordingError, match=r"cannot be opened as a Dataset \(.*record it again"):
        rec.to_xarray()
    _bad_site_json(Path(rec.path))
    with pytest.raises(RecordingError, match=r"the array of mlp.0 .* cannot be opened .*record it again"):
        rec.responses("mlp.0")


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
    _delete_chunk(Path(rec.path))  # nothing was read yet: the missing chunk is named, not read as NaN
    with pytest.raises(RecordingError, match=r"chunk 0 of site mlp.0 \(.*\) is missing"):
        ds["mlp.0"].values
    assert not np.isnan(rec.to_xarray()["resid.2"].values).any()


def test_responses_as_stored_are_the_float16_values_and_bad_dtypes_are_named(saved):
    rec = Recording.open(saved)
    site = rec.sites[0]
    raw = rec.responses(site, dtype=None)
    assert rec.dtype == "float16" and raw.dtype == np.float16
    np.testing.assert_array_equal(raw.astype(np.float32), rec.responses(site))
    for bad in ("float64", np.float32, 16):
        with pytest.raises(RecordingError, match=r"'float32' or None"):
            rec.responses(site, dtype=bad)
