"""Sparse autoencoders: the file layout, training (streamed, seeded, resumable), the metrics
against reference computations, feature edits, features as a recording, and a synthetic
ground truth. The organism's ground truth (POS classes, splicing) is in test_sae_organism.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import llmscope
from llmscope.analysis.responses import resolve
from llmscope.errors import InterventionError, SAEError, SiteError
from llmscope.interventions import intervene
from llmscope.sae import SAE, io, train
from llmscope.sae.edits import gain_features, lesion_features, splice, steer_features
from llmscope.sae.features import record_features
from llmscope.sae.metrics import evaluate
from llmscope.sae.train import train_sae
from llmscope.stimuli import grammar


@pytest.fixture(autouse=True)
def _one_thread():
    """Training is deterministic on one thread (the claim tested here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sparse_data(n: int = 6000, d: int = 32, n_dirs: int = 64, active: int = 3, noise: float = 0.02, seed: int = 0):
    """Rows that are sums of ``active`` of ``n_dirs`` known unit directions (random
    magnitudes in [1, 2)) plus Gaussian noise; returns the rows and the directions."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_dirs, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    codes = np.zeros((n, n_dirs))
    for row in codes:
        row[rng.choice(n_dirs, active, replace=False)] = rng.uniform(1, 2, active)
    return (codes @ dirs + noise * rng.standard_normal((n, d))).astype(np.float32), dirs


# ---------------------------------------------------------------- SAELens's layout

DOCUMENTED_6X = {  # cfg.json as sae-lens 6.21.0 writes it (a JumpReLU SAE), fields and types
    "d_in": 16, "d_sae": 48, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
    "normalize_activations": "none", "reshape_activations": "none",
    "metadata": {"sae_lens_version": "6.21.0", "sae_lens_training_version": "6.21.0", "dataset_path": "some/dataset",
                 "hook_name": "blocks.7.hook_attn_out", "model_name": "meta-llama/Llama-3.2-1B-Instruct",
                 "model_class_name": "HookedTransformer", "hook_head_index": None, "context_size": 128,
                 "seqpos_slice": [None], "model_from_pretrained_kwargs": {"center_writing_weights": False},
                 "prepend_bos": True, "exclude_special_tokens": False, "sequence_separator_token": "bos",
                 "disable_concat_sequences": False},
    "architecture": "jumprelu",
}


def test_our_files_follow_saelens_6_layout(tmp_path):
    for arch, k in (("topk", 4), ("jumprelu", None), ("standard", None)):
        sae = SAE(16, 48, arch, k=k, seed=1, site="mlp.0", hook="blocks.0.mlp.hook_post")
        folder = sae.save(tmp_path / arch)
        assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
        with safe_open(str(folder / "sae_weights.safetensors"), framework="pt") as f:
            shapes = {key: tuple(f.get_tensor(key).shape) for key in f.keys()}
        want = {"W_enc": (16, 48), "b_enc": (48,), "W_dec": (48, 16), "b_dec": (16,)}
        assert shapes == (want | {"threshold": (48,)} if arch == "jumprelu" else want)
        cfg = json.loads((folder / "cfg.json").read_text())
        extra = {"llmscope"} | ({"k", "rescale_acts_by_decoder_norm"} if arch == "topk" else set())
        assert set(cfg) == set(DOCUMENTED_6X) | extra
        for key in DOCUMENTED_6X:  # every field SAELens writes, with the same JSON type
            assert type(cfg[key]) is type(DOCUMENTED_6X[key]) or cfg[key] is None, key
        assert set(cfg["metadata"]) <= set(DOCUMENTED_6X["metadata"])
        assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6  # read as the 6.x layout
        assert cfg["architecture"] == arch and cfg["metadata"]["hook_name"] == "blocks.0.mlp.hook_post"
        if arch == "topk":
            assert cfg["k"] == 4


def test_a_saelens_6_file_loads_and_encodes_as_documented(tmp_path):
    rng = np.random.default_rng(0)
    w = {"W_enc": rng.normal(size=(16, 48)), "b_enc": rng.normal(size=48) * 0.1, "W_dec": rng.normal(size=(48, 16)),
         "b_dec": rng.normal(size=16), "threshold": rng.uniform(0, 0.5, 48)}
    save_file({k: torch.tensor(v, dtype=torch.float32) for k, v in w.items()}, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps(DOCUMENTED_6X))
    sae = io.load(tmp_path)
    assert (sae.architecture, sae.d_in, sae.d_sae, sae.hook) == ("jumprelu", 16, 48, "blocks.7.hook_attn_out")
    x = rng.normal(size=(5, 16)).astype(np.float32)
    z = x @ w["W_enc"] + w["b_enc"]  # apply_b_dec_to_input false: no b_dec subtracted
    f = np.where(z > w["threshold"], z, 0)  # SAELens's JumpReLU
    np.testing.assert_allclose(sae.encode(x).detach().numpy(), f, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sae(x).detach().numpy(), f @ w["W_dec"] + w["b_dec"], rtol=1e-4, atol=1e-3)
    sae.save(tmp_path / "again")  # and back: what we write from it loads to the same function
    np.testing.assert_allclose(io.load(tmp_path / "again")(x).detach().numpy(), sae(x).detach().numpy(), atol=1e-5)


def test_a_pre_6_flat_topk_file_loads(tmp_path):
    w = SAE(8, 20, "topk", k=3, seed=2)
    save_file({k: v.detach().half() for k, v in w._tensors().items()}, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "d_in": 8, "d_sae": 20, "hook_name": "blocks.1.hook_resid_pre", "model_name": "gpt2",
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "dtype": "float16"}))
    sae = io.load(tmp_path)
    assert (sae.architecture, sae.k, sae.hook) == ("topk", 3, "blocks.1.hook_resid_pre")
    x = torch.randn(4, 8)
    assert torch.allclose(sae(x), w.half().float()(x), atol=1e-5)


def test_load_refuses_pickles_foreign_keys_and_tampering(tmp_path):
    (tmp_path / "p").mkdir()
    torch.save({"W_enc": torch.zeros(2, 2)}, tmp_path / "p" / "sae.pt")
    with pytest.raises(SAEError, match="pickles, which llmscope never loads"):
        io.load(tmp_path / "p")
    folder = SAE(8, 16, "standard", seed=0).save(tmp_path / "s")
    tensors = {k: v.detach() for k, v in SAE(8, 16, "standard", seed=0)._tensors().items()}
    save_file({**tensors, "extra": torch.zeros(1)}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEError, match="needs exactly"):
        io.load(folder)
    save_file({**tensors, "b_dec": tensors["b_dec"] + 1}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEError, match="do not match the fingerprint"):
        io.load(folder)
    folder16 = SAE(8, 16, "topk", k=2, seed=0).save(tmp_path / "h", dtype="float16")
    assert io.load(folder16).k == 2  # float16 files keep their fingerprint


# ---------------------------------------------------------------- training


def test_synthetic_directions_are_recovered():
    data, dirs = sparse_data()
    sae = train_sae(data, width=128, kind="topk", k=3, epochs=20, batch_size=256, lr=3e-3, progress=False)
    cos = dirs @ sae.directions().numpy().T  # [true, learned]
    recovered = (cos.max(1) >= 0.9).mean()
    assert recovered >= 0.9, f"only {recovered:.0%} of the true directions have a feature at cosine >= 0.9"


def test_training_is_seeded_and_resumes_exactly(tmp_path, monkeypatch):
    data, _ = sparse_data(n=9000, d=16, n_dirs=32)
    monkeypatch.setattr(train, "BUFFER_ROWS", 2048)
    monkeypatch.setattr(train, "CHECKPOINT_SECONDS", 0)  # a checkpoint after every buffer
    args = dict(width=64, kind="batchtopk", k=3, epochs=3, batch_size=512, progress=False)
    a = train_sae(data, seed=3, checkpoint=False, **args)
    b = train_sae(data, seed=3, checkpoint=False, **args)
    c = train_sae(data, seed=4, checkpoint=False, **args)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    saves = []
    real_save = train._save_checkpoint

    def killed_after_two(*a_, **kw):
        real_save(*a_, **kw)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # a kill right after the second checkpoint

    monkeypatch.setattr(train, "_save_checkpoint", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_sae(data, seed=3, checkpoint=tmp_path, **args)
    monkeypatch.setattr(train, "_save_checkpoint", real_save)
    (run,) = tmp_path.iterdir()
    assert (run / "checkpoint.safetensors").is_file() and not (run / "cfg.json").exists()
    resumed = train_sae(data, seed=3, checkpoint=tmp_path, **args)
    assert resumed.fingerprint == a.fingerprint  # the same weights, bit for bit, as the uninterrupted run
    assert (run / "cfg.json").is_file() and not (run / "checkpoint.safetensors").exists()
    assert train_sae(data, seed=3, checkpoint=tmp_path, **args).fingerprint == a.fingerprint  # loaded, not retrained


def test_training_reads_one_buffer_at_a_time(monkeypatch):
    data, _ = sparse_data(n=20_000, d=8, n_dirs=16)
    held, most = [], [0]
    real = train._Rows.read

    def read(self, block):
        out = real(self, block)
        held.append(len(out))
        return out

    real_step = train._Trainer.step

    def step(self, x, i):
        most[0] = max(most[0], sum(held))
        held.clear()  # the buffer was assembled: the next one starts from nothing
        return real_step(self, x, i)

    monkeypatch.setattr(train._Rows, "read", read)
    monkeypatch.setattr(train._Trainer, "step", step)
    monkeypatch.setattr(train, "BUFFER_ROWS", 4096)
    train_sae(data, width=32, k=2, epochs=1, batch_size=100_000, progress=False)
    assert most[0] == 4096  # two blocks of 2048 rows, never the whole 20,000


@pytest.mark.parametrize("kind, penalty", [("relu_l1", 0.3), ("jumprelu", 0.5)])
def test_the_penalty_of_penalised_kinds_buys_sparsity(kind, penalty):
    data, _ = sparse_data(n=4000, d=16, n_dirs=32)
    stats = [train_sae(data, width=64, kind=kind, epochs=15, batch_size=256, lr=3e-3, penalty=p,
                       progress=False).meta["last_epoch"]
             for p in (penalty, 4 * penalty)]
    assert stats[0]["fvu"] < 0.7, stats  # it learns a code
    assert stats[1]["l0"] < 0.8 * stats[0]["l0"], stats  # and a larger penalty makes it sparser


def test_bad_training_arguments_say_what_to_do():
    data, _ = sparse_data(n=100, d=4, n_dirs=4)
    with pytest.raises(SAEError.Unknown, match="choose one of"):
        train_sae(data, kind="gated")
    with pytest.raises(SAEError.Range):
        train_sae(data, width=8, k=9)
    with pytest.raises(SAEError.Type):
        train_sae(data, epochs=1.5)
    with pytest.raises(SAEError.Type, match="site"):
        train_sae(data, "mlp.0")
    with pytest.raises(SAEError, match="non-finite"):
        train_sae(np.full((10, 4), np.nan))


# ---------------------------------------------------------------- on the organism


@pytest.fixture(scope="module")
def trained(organism, tmp_path_factory):
    torch.set_num_threads(1)
    store = tmp_path_factory.mktemp("sae") / "g.zarr"
    rec = llmscope.record(organism, grammar(organism, n_docs=40, seed=1), ["mlp.0"], store=store, progress=False)
    sae = train_sae(rec, "mlp.0", width=256, k=16, epochs=2, batch_size=512, progress=False)
    return rec, sae


def test_sae_is_saved_beside_the_recording_and_bound_to_its_model(trained, organism, tiny):
    rec, sae = trained
    (run,) = Path(rec.path + ".sae").iterdir()
    assert SAE.load(run, organism).fingerprint == sae.fingerprint
    with pytest.raises(SAEError, match="grammar-2l"):  # names the model it belongs to
        SAE.load(run, tiny)
    with pytest.raises(InterventionError, match="grammar-2l"):
        with intervene(tiny, lesion_features(sae, [0])):
            pass


def test_metrics_match_a_reference_computation(trained, organism):
    rec, sae = trained
    stim = grammar(organism, n_docs=6, seed=5)
    m = evaluate(sae, organism, stim, batch_size=4, progress=False)
    ref = llmscope.record(organism, stim, ["mlp.0"], dtype="float32", progress=False)
    keep = ~ref.tokens.is_bos.to_numpy()
    x = torch.from_numpy(ref.responses("mlp.0")[keep]).double()
    f = sae.encode(x.float()).double()
    x_hat = sae(x.float()).double()
    ev = 1 - (x - x_hat).pow(2).sum(1).mean() / (x - x.mean(0)).pow(2).sum(1).mean()
    assert m.value("fvu") == pytest.approx(float(1 - ev), rel=1e-4)
    assert m.value("l0") == pytest.approx(float((f > 0).sum(1).double().mean()))
    freq = (f > 0).double().mean(0).numpy()
    np.testing.assert_allclose(m.features["frequency"].to_numpy(), freq)
    assert m.value("dead_fraction") == pytest.approx((freq == 0).mean())
    loss = llmscope.token_loss(organism, stim).df  # clean CE: predictions made after a non-BOS token
    scored = loss.pos.to_numpy() >= 2
    assert m.value("ce_clean") == pytest.approx(loss.loss.to_numpy()[scored].mean(), rel=1e-5)
    with intervene(organism, splice(sae)):
        spliced = llmscope.token_loss(organism, stim).df.loss.to_numpy()[scored].mean()
    assert m.value("ce_sae") == pytest.approx(spliced, rel=1e-4)
    assert m.value("ce_clean") < m.value("ce_sae") < m.value("ce_mean_ablation")
    assert m.value("ce_loss_recovered") == pytest.approx(
        (m.value("ce_mean_ablation") - m.value("ce_sae")) / (m.value("ce_mean_ablation") - m.value("ce_clean")))
    assert isinstance(m, llmscope.result.Result) and m.kind == "evaluate" and m.data["frequency"].dims == ("unit",)
    fig = m.plot()
    assert fig.data[0].type == "histogram"
    np.testing.assert_allclose(fig.data[0].x, np.log10(freq[freq > 0]), rtol=1e-6)  # the live features' frequencies
    assert fig.layout.shapes[0].x0 == pytest.approx(np.log10(0.02))


def test_untouched_features_leave_the_model_bit_identical(trained, organism):
    _, sae = trained
    stim = grammar(organism, n_docs=3, seed=7)
    with torch.no_grad():
        clean = organism(stim.ids)
        x = organism.run_with_cache(stim.ids, names_filter=[sae.hook])[1][sae.hook]
    f = sae.encode(x[:, 1:])
    silent = np.flatnonzero((f > 0).sum((0, 1)).numpy() == 0)[:5]
    active = int(f.sum((0, 1)).argmax())
    g = gain_features(sae, [active, 3], factor=1.0)
    with torch.no_grad():
        for edit in (g, lesion_features(sae, silent), steer_features(sae, [active], alpha=0.0)):
            with intervene(organism, edit):
                assert torch.equal(organism(stim.ids), clean), edit
        g.factor = 0.0
        with intervene(organism, g):
            lesioned = organism(stim.ids)
        with intervene(organism, lesion_features(sae, [active, 3])):
            assert torch.equal(organism(stim.ids), lesioned)  # gain 0 is the lesion
        assert not torch.equal(lesioned, clean)
    # the edit is decode(f') + (x - decode(f)): the error term kept
    f_all = sae.encode(x)
    f_edit = f_all.clone()
    f_edit[..., active] = 0
    expected = sae.decode(f_edit) + (x - sae.decode(f_all))
    seen = {}
    with torch.no_grad(), intervene(organism, lesion_features(sae, [active], n_bos=0)):
        organism.run_with_hooks(stim.ids, fwd_hooks=[(sae.hook, lambda a, hook: seen.setdefault("x", a))])
    assert torch.allclose(seen["x"], expected, atol=1e-5)
    with pytest.raises(InterventionError.Range, match="0..255"):
        lesion_features(sae, [256])
    with pytest.raises(InterventionError.Range, match="gain factor"):
        g.factor = float("nan")
    with pytest.raises(InterventionError.Type, match="steering alpha"):
        steer_features(sae, [0], alpha="2")
    assert g.factor == 0.0  # a refused value leaves the slider where it was


def test_old_edit_keywords_warn_and_edit_the_same_features(trained):
    _, sae = trained
    with pytest.warns(FutureWarning, match="features"):
        old = lesion_features(sae, features=[3, 7], bos=0)
    new = lesion_features(sae, "sae:mlp.0", [7, 3], n_bos=0)
    assert old.features.tolist() == new.features.tolist() == [3, 7] and old.bos == new.bos == 0
    with pytest.raises(InterventionError.Unknown, match="sae:mlp.0"):
        lesion_features(sae, ("mlp.0", [3]))  # neurons are not this SAE's features


def test_features_are_a_recording_every_analysis_reads(trained, organism):
    rec, sae = trained
    feats = record_features(sae, rec, progress=False)
    assert feats.sites == ["sae:mlp.0"] and feats.site("sae:mlp.0").unit == "feature"
    assert feats.tokens.equals(rec.tokens) and feats.made_by(organism)
    np.testing.assert_allclose(feats.responses("sae:mlp.0"),
                               sae.encode(rec.responses("mlp.0")).numpy().astype(np.float16), rtol=1e-3, atol=1e-3)
    sp = llmscope.sparsity(feats, "sae:mlp.0", thresholds=(0.0,), progress=False)
    assert sp.df.population.iloc[0] == pytest.approx(
        (feats.responses("sae:mlp.0")[~rec.tokens.is_bos.to_numpy()] > 0).mean(), rel=1e-6)
    tun = llmscope.tuning(feats, "sae:mlp.0", "pos_tag", progress=False)
    assert tun.df.index.get_level_values(0).unique().tolist() == ["sae:mlp.0"]
    with pytest.raises(SAEError, match="whole, complete"):
        record_features(sae, rec.select("pos > 3"))


def test_tuned_features_are_units_that_pass_to_the_edits(trained, organism):
    """tuning on a recording of features ranks features; its top() is a unit table of the site
    sae:mlp.0 that the analyses resolve and the feature edits take; the lesion changes the model
    only while it is applied."""
    rec, sae = trained
    feats = record_features(sae, rec, progress=False)
    tun = llmscope.tuning(feats, "sae:mlp.0", "pos_tag", n_controls=2, progress=False)
    top = tun.top(1)
    (unit,) = top.index.get_level_values("unit")
    assert [(s.name, idx.tolist()) for s, idx in resolve(feats, top)] == [("sae:mlp.0", [unit])]
    spikes = llmscope.spikes(feats, top, progress=False)
    assert spikes.df.index.tolist() == [("sae:mlp.0", unit)]
    examples = llmscope.top_examples(feats, top, k=3)
    best = feats.responses("sae:mlp.0")[:, unit][~rec.tokens.is_bos.to_numpy()].max()
    assert examples.df.activation.max() == pytest.approx(best, rel=1e-3)
    stim = grammar(organism, n_docs=3, seed=7)
    weights = {k: v.clone() for k, v in organism.state_dict().items()}
    edit = lesion_features(sae, top)
    assert edit.features.tolist() == [unit]
    with torch.no_grad():
        clean = organism(stim.ids)
        with intervene(organism, edit):
            lesioned = organism(stim.ids)
        with intervene(organism, lesion_features(sae, [unit])):
            assert torch.equal(organism(stim.ids), lesioned)  # the table names the same feature
        assert not torch.equal(lesioned, clean)  # the best-tuned feature fires: its lesion moves the logits
        assert torch.equal(organism(stim.ids), clean)  # and leaves the model bit-identical after
    assert all(torch.equal(v, weights[k]) for k, v in organism.state_dict().items())
    with pytest.raises(SiteError.Unknown, match="lesion_features"):  # a model-unit lesion says where features go
        with intervene(organism, llmscope.lesion(top)):
            pass
    assert torch.equal(organism(stim.ids), clean)


def test_features_on_disk_are_kept_and_bound_to_their_sae(trained, tmp_path):
    rec, sae = trained
    path = tmp_path / "f.zarr"
    first = record_features(sae, rec, store=path, progress=False)
    again = llmscope.Recording.open(path)
    assert again.sites == ["sae:mlp.0"] and again.complete
    np.testing.assert_array_equal(again.responses("sae:mlp.0"), first.responses("sae:mlp.0"))
    assert record_features(sae, rec, store=path, progress=False).complete  # returned as it is
    other = SAE(sae.d_in, sae.d_sae, "topk", k=4, seed=9, site="mlp.0", hook=sae.hook)
    with pytest.raises(SAEError, match="something other than this SAE's features"):
        record_features(other, rec, store=path, progress=False)
