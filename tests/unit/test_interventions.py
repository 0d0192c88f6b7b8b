"""Interventions on the tiny GPT-2 (and one on SmolLM2): each kind, composition, and every error
path leaving the model pristine (logits equal to the baseline, no hook left behind)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmscope.errors import LLMScopeError
from llmscope.interventions import InterventionError, gain, intervene, lesion, patch, steer
from llmscope.recording import Recording, record
from llmscope.result import Result
from llmscope.sites import SiteError, unit_index
from llmscope.stimuli import grammar
from llmscope.stimuli.core import Stimuli
from llmscope.tokens import PromptError

TOKENS = torch.tensor([[1, 5, 9, 14, 22, 31, 40, 52], [1, 60, 3, 3, 17, 28, 44, 61]])


class FakeRecording:
    """The duck type interventions accept: ``.sites`` and ``.responses(site, units)``."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.sites = list(arrays)
        self._arrays = arrays

    def responses(self, site: str, indices=None) -> np.ndarray:
        return self._arrays[site] if indices is None else self._arrays[site][:, indices]


@pytest.fixture(scope="module")
def base(tiny) -> torch.Tensor:
    with torch.no_grad():
        return tiny(TOKENS)


@pytest.fixture(scope="module")
def ref(tiny) -> Stimuli:
    return Stimuli.from_ids(tiny, [[1, 7, 8, 9, 10], [1, 11, 12], [1, 20, 21, 22, 23, 24]])


@pytest.fixture(scope="module")
def rec(tiny, ref) -> Recording:
    return record(tiny, ref, ["mlp.0", "mlp.1", "attn.0", "attn.1"], dtype="float32", progress=False)


def empty_stimuli() -> Stimuli:
    return Stimuli(torch.zeros((0, 0), dtype=torch.long), [], pd.DataFrame(columns=["seq", "pos", "token", "text"]))


def run(model, tokens=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


def acts(model, hook: str, tokens=TOKENS) -> torch.Tensor:
    """The activation at ``hook`` as the rest of the model sees it (after any intervention)."""
    with torch.no_grad():
        return model.run_with_cache(tokens, names_filter=[hook])[1][hook]


def assert_pristine(model, baseline: torch.Tensor) -> None:
    assert model.list_hooks() == {}
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
    assert torch.equal(run(model), baseline)


# ---------------------------------------------------------------- each kind


def test_zero_lesion_of_neurons_changes_logits_and_zeroes_them(tiny, base):
    with intervene(tiny, lesion(("mlp.1", [3, 7]))):
        out = run(tiny)
        post = acts(tiny, "blocks.1.mlp.hook_post")
    assert not torch.equal(out, base)
    assert (post[:, :, [3, 7]] == 0).all() and (post[:, :, 4] != 0).any()
    assert_pristine(tiny, base)


def test_head_lesion_zeroes_only_that_heads_z(tiny, base):
    clean = acts(tiny, "blocks.0.attn.hook_z")
    with intervene(tiny, lesion(("attn.0", [2]))):
        z = acts(tiny, "blocks.0.attn.hook_z")
        assert not torch.equal(run(tiny), base)
    assert (z[:, :, 2] == 0).all()
    assert torch.equal(z[:, :, [0, 1, 3]], clean[:, :, [0, 1, 3]])
    assert_pristine(tiny, base)


def test_gain_one_is_the_baseline_and_gain_zero_the_zero_lesion(tiny, base):
    units = [("mlp.0", [1, 2, 60]), ("attn.1", [3])]
    with intervene(tiny, gain(units, factor=1.0)):
        assert torch.equal(run(tiny), base)
    with intervene(tiny, gain(units, factor=0.0)):
        silenced = run(tiny)
    with intervene(tiny, lesion(units)):
        assert torch.equal(run(tiny), silenced)
    assert_pristine(tiny, base)


def test_gain_factor_can_move_inside_the_block(tiny, base):
    g = gain(("mlp.1", range(10)), factor=3.0)
    clean = acts(tiny, "blocks.1.mlp.hook_post")
    with intervene(tiny, g):
        assert torch.equal(acts(tiny, "blocks.1.mlp.hook_post")[:, :, :10], clean[:, :, :10] * 3.0)
        g.factor = 1.0
        assert torch.equal(run(tiny), base)


def test_mean_lesion_with_a_constant_reference_sets_the_constant(tiny, base):
    rec = FakeRecording({"mlp.1": np.full((5, 64), 0.25, dtype=np.float32)})
    with intervene(tiny, lesion(("mlp.1", [0, 5]), mode="mean", reference=rec)):
        post = acts(tiny, "blocks.1.mlp.hook_post")
    assert (post[:, :, [0, 5]] == 0.25).all()
    assert_pristine(tiny, base)


def test_mean_lesion_with_stimuli_uses_their_mean(tiny, base, ref):
    with torch.no_grad():
        _, cache = tiny.run_with_cache(ref.ids, names_filter=["blocks.0.attn.hook_z"])
    real = torch.arange(ref.ids.shape[1]) < torch.as_tensor(ref.lengths)[:, None]
    mean = cache["blocks.0.attn.hook_z"][real][:, 1].mean(0)
    with intervene(tiny, lesion(("attn.0", [1]), mode="mean", reference=ref)):
        z = acts(tiny, "blocks.0.attn.hook_z")
    assert torch.allclose(z[:, :, 1], mean.expand_as(z[:, :, 1]), atol=1e-6)
    assert_pristine(tiny, base)


def test_resample_lesion_is_reproducible_and_draws_reference_values(tiny, base, ref):
    def resampled(seed: int):
        with intervene(tiny, lesion(("mlp.0", [4, 9]), mode="resample", reference=ref, seed=seed)):
            return run(tiny), acts(tiny, "blocks.0.mlp.hook_post")

    (a, post), (b, _), (c, _) = resampled(0), resampled(0), resampled(1)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, base)
    with torch.no_grad():
        pool = tiny.run_with_cache(ref.ids, names_filter=["blocks.0.mlp.hook_post"])[1]["blocks.0.mlp.hook_post"]
    pool = pool[torch.arange(ref.ids.shape[1]) < torch.as_tensor(ref.lengths)[:, None]][:, [4, 9]]
    drawn = post[:, :, [4, 9]].reshape(-1, 1, 2)
    assert ((drawn - pool[None]).abs().amax(-1) < 1e-6).any(-1).all()  # every pair is one reference token's
    assert_pristine(tiny, base)


def test_steer_adds_alpha_times_vector(tiny, base):
    v = torch.randn(32)
    with intervene(tiny, steer("resid.1", v, alpha=0.0)):
        assert torch.equal(run(tiny), base)
    clean = acts(tiny, "blocks.1.hook_resid_pre")
    s = steer("resid.1", v, alpha=2.5)
    with intervene(tiny, s):
        assert torch.allclose(acts(tiny, "blocks.1.hook_resid_pre"), clean + 2.5 * v, atol=1e-6)
        s.alpha = 0.0
        assert torch.equal(run(tiny), base)
    assert_pristine(tiny, base)


def test_patch_from_itself_is_the_baseline(tiny, base):
    with intervene(tiny, patch(TOKENS, ["resid.1", "attn.0", "mlp.1"])):
        assert torch.equal(run(tiny), base)


def test_patching_the_last_residual_reproduces_the_source_logits(tiny, base):
    source = torch.tensor([[1, 33, 34, 35, 36, 37, 38, 39]])
    with intervene(tiny, patch(source, "resid.2")):  # batch 1 broadcast to the batch of 2
        out = run(tiny)
    assert torch.equal(out, run(tiny, source).expand_as(out))
    with intervene(tiny, patch(source, "resid.2", positions=[-1])):
        out = run(tiny)
    assert torch.equal(out[:, -1], run(tiny, source)[:, -1].expand(2, -1))
    assert torch.equal(out[:, :-1], base[:, :-1])
    assert_pristine(tiny, base)


def test_patch_accepts_a_cache_and_stimuli(tiny, base, ref):
    with torch.no_grad():
        _, cache = tiny.run_with_cache(TOKENS, names_filter=["blocks.0.hook_resid_pre"])
    with intervene(tiny, patch(cache, "resid.0")):
        assert torch.equal(run(tiny), base)
    with intervene(tiny, patch(ref, "resid.2", positions=[0, 1])):
        out = run(tiny, ref.ids)
    assert torch.equal(out[:, :2], run(tiny, ref.ids)[:, :2])


def test_composition_equals_nesting_and_hooks_export(tiny, base):
    a, b = lesion(("mlp.0", [1, 2])), steer("resid.1", torch.ones(32), 0.5)
    with intervene(tiny, a, b):
        both = run(tiny)
    with intervene(tiny, a):
        with intervene(tiny, b):
            assert torch.equal(run(tiny), both)
    with torch.no_grad():
        exported = tiny.run_with_hooks(TOKENS, fwd_hooks=a.fwd_hooks(tiny) + b.fwd_hooks(tiny))
    assert torch.equal(exported, both)
    with intervene(tiny, gain(("mlp.1", [3]), factor=2.0), gain(("mlp.1", [3]), factor=3.0)):  # same site: in turn
        stacked = acts(tiny, "blocks.1.mlp.hook_post")
    assert torch.equal(stacked[:, :, 3], acts(tiny, "blocks.1.mlp.hook_post")[:, :, 3] * 2.0 * 3.0)
    assert_pristine(tiny, base)


def test_units_forms(tiny, base):
    with intervene(tiny, lesion([("mlp.1", 3), ("mlp.1", 7)])):
        pairs = run(tiny)
    with intervene(tiny, lesion("mlp.1", [7, 3, 3])):
        assert torch.equal(run(tiny), pairs)
    table = pd.DataFrame({"score": [0.9, 0.1]}, index=unit_index(tiny, "mlp.1", [7, 3]))
    with intervene(tiny, lesion(table)):  # a unit table, as analyses return them
        assert torch.equal(run(tiny), pairs)
    with intervene(tiny, lesion(Result(table))):
        assert torch.equal(run(tiny), pairs)
    with intervene(tiny, lesion("attn.0")):
        assert (acts(tiny, "blocks.0.attn.hook_z") == 0).all()
    with intervene(tiny, lesion(("attn.0", None))):
        assert (acts(tiny, "blocks.0.attn.hook_z") == 0).all()
    assert_pristine(tiny, base)


@pytest.mark.parametrize("bad, match", [
    (lambda: lesion("mlp.1", [-1]), "negative indices are not allowed"),
    (lambda: lesion("mlp.1", [-5000]), "negative indices are not allowed"),
    (lambda: gain("mlp.1", [3.0], factor=2.0), "integers"),
    (lambda: lesion("mlp.1", "3"), "string"),
    (lambda: lesion(("mlp.1", [3]), [4]), "second argument only after a site name"),
    (lambda: lesion(pd.DataFrame({"x": [1]})), "indexed by \\(site, unit\\)"),
])
def test_one_unit_rule_everywhere(tiny, base, bad, match):
    with pytest.raises(SiteError, match=match):
        with intervene(tiny, bad()):
            pytest.fail("the block must not run")
    assert_pristine(tiny, base)


def test_live_factor_and_alpha_refuse_non_finite(tiny, base):
    g, st = gain("mlp.1", [3], factor=2.0), steer("resid.1", torch.ones(32), 1.0)
    with intervene(tiny, g, st):
        for bad in (float("nan"), float("inf"), "2"):
            with pytest.raises(InterventionError, match="finite"):
                g.factor = bad
            with pytest.raises(InterventionError, match="finite"):
                st.alpha = bad
        assert g.factor == 2.0 and st.alpha == 1.0 and torch.isfinite(run(tiny)).all()
    assert_pristine(tiny, base)


def test_mean_reference_from_another_model_is_refused(tiny, base, organism):
    other = record(organism, grammar(organism, n_docs=2, seed=0), ["mlp.1"], progress=False)
    with pytest.raises(InterventionError, match="made for grammar-2l; this model is"):
        with intervene(tiny, lesion("mlp.1", [0], mode="mean", reference=other)):
            pytest.fail("the block must not run")
    assert_pristine(tiny, base)


@pytest.mark.smollm2
def test_smollm2_head_lesion_and_neuron_gain(smol):
    tokens = smol.to_tokens("The capital of France is")
    baseline = run(smol, tokens)
    with intervene(smol, lesion(("attn.3", [0, 4])), gain(("mlp.2", range(10)), factor=4.0)), torch.no_grad():
        logits, cache = smol.run_with_cache(tokens, names_filter=["blocks.3.attn.hook_z"])
    assert (cache["blocks.3.attn.hook_z"][:, :, [0, 4]] == 0).all() and not torch.equal(logits, baseline)
    assert smol.list_hooks() == {} and torch.equal(run(smol, tokens), baseline)


# ---------------------------------------------------------------- bad input: raise, model pristine


@pytest.mark.parametrize("make, error, match", [
    (lambda: lesion(("mlp.1", [64])), SiteError, "out of range"),
    (lambda: gain(("attn.0", [-5]), factor=2.0), SiteError, "out of range"),
    (lambda: lesion(("mlp.9", [0])), SiteError, "valid sites"),
    (lambda: steer("resid.nope", torch.zeros(32)), SiteError, "unknown site"),
    (lambda: steer("resid.1", torch.zeros(31)), InterventionError, "shape"),
    (lambda: patch(torch.tensor([[1, 5]]), "resid.1", positions=[5]), InterventionError, "outside"),
    (lambda: lesion(("mlp.1", [0]), mode="mean",
                    reference=FakeRecording({"mlp.0": np.zeros((3, 64), np.float32)})),
     InterventionError, "no site 'mlp.1'"),
    (lambda: lesion(("attn.0", [1]), mode="mean",
                    reference=FakeRecording({"attn.0": np.zeros((3, 4), np.float32)})), InterventionError, "shape"),
    (lambda: lesion(("mlp.1", [0]), mode="resample",
                    reference=empty_stimuli()), PromptError, "empty"),
    (lambda: patch(torch.zeros((1, 0), dtype=torch.long), "resid.1"), PromptError, "empty"),
    (lambda: patch(torch.ones((1, 40), dtype=torch.long), "resid.1"), PromptError, "context"),
])
def test_bad_input_raises_before_any_hook(tiny, base, make, error, match):
    good = gain(("mlp.0", [1]), factor=5.0)
    with pytest.raises(error, match=match):
        with intervene(tiny, good, make()):
            pytest.fail("the block must not run")
    assert_pristine(tiny, base)


@pytest.mark.parametrize("make, match", [
    (lambda: lesion(("mlp.1", [0]), mode="median"), "unknown lesion mode"),
    (lambda: lesion(("mlp.1", [0]), mode="mean"), "needs reference"),
    (lambda: gain(("mlp.1", [0]), factor=float("nan")), "finite"),
    (lambda: lesion([("mlp.1", [0]), 3]), "units are"),
    (lambda: steer("resid.1", "up"), "array of numbers"),
    (lambda: patch(TOKENS, "resid.1", positions=[]), "positions"),
])
def test_malformed_interventions_fail_at_construction(make, match):
    with pytest.raises(LLMScopeError, match=match):
        make()


def test_a_site_missing_from_a_real_recording(tiny, base, rec):
    with pytest.raises(InterventionError, match="no site 'resid.1'.*record it first"):
        with intervene(tiny, lesion(("resid.1", [0]), mode="resample", reference=rec)):
            pass
    with pytest.raises(InterventionError, match="n_tokens >= 1"):
        with intervene(tiny, lesion(("mlp.1", [0]), mode="mean", reference=rec.select(np.zeros(len(rec), bool)))):
            pass
    assert_pristine(tiny, base)


def test_not_an_intervention(tiny, base):
    with pytest.raises(InterventionError, match="intervene takes"):
        with intervene(tiny, ("mlp.1", [3])):
            pass
    assert_pristine(tiny, base)


# ---------------------------------------------------------------- property: any failure restores


def _valid(kind: str, layer: int, units: list[int], ref: Recording):
    if kind == "zero":
        return lesion((f"mlp.{layer}", units))
    if kind == "head":
        return lesion((f"attn.{layer}", [u % 4 for u in units]))
    if kind == "gain":
        return gain((f"mlp.{layer}", units), factor=1.0 + len(units))
    if kind == "mean":
        return lesion((f"mlp.{layer}", units), mode="mean", reference=ref)
    if kind == "resample":
        return lesion((f"attn.{layer}", [u % 4 for u in units]), mode="resample", reference=ref, seed=layer)
    if kind == "steer":
        return steer(f"resid.{layer}", torch.full((32,), 0.1 * len(units)))
    return patch(TOKENS.flip(0), f"resid.{layer}", positions=[units[0] % 8])


class Boom(RuntimeError):
    pass


@settings(max_examples=40, deadline=None)
@given(
    plan=st.lists(st.tuples(st.sampled_from(["zero", "head", "gain", "mean", "resample", "steer", "patch"]),
                            st.integers(0, 1), st.lists(st.integers(0, 63), min_size=1, max_size=5)),
                  min_size=1, max_size=4),
    failure=st.sampled_from(["validation", "before-run", "in-forward", "after-run", "none"]),
    where=st.integers(0, 4),
)
def test_any_failure_leaves_the_model_pristine(tiny, base, rec, plan, failure, where):
    ivs = [_valid(kind, layer, units, rec) for kind, layer, units in plan]
    if failure == "validation":
        ivs.insert(where % (len(ivs) + 1), lesion(("mlp.0", [64 + where])))
    if failure == "in-forward":  # a source of the wrong length fails inside the hook, mid-forward
        ivs.insert(where % (len(ivs) + 1), patch(TOKENS[:, :5], f"resid.{where % 3}"))
    expected = {"validation": SiteError, "in-forward": InterventionError, "before-run": Boom,
                "after-run": Boom, "none": None}[failure]
    try:
        with intervene(tiny, *ivs):
            if failure == "before-run":
                raise Boom()
            run(tiny)
            if failure == "after-run":
                raise Boom()
    except Exception as exc:  # noqa: BLE001 - the type is checked right below
        assert expected is not None and isinstance(exc, expected), exc
    else:
        assert expected is None
    assert_pristine(tiny, base)
