"""A bad-input battery over the public API, by class of defect rather than by case.

Each call must raise an llmscope error of the right kind *before any work* (so the model stays
bit-identical, with no hook left), catchable both as ``LLMScopeError`` and as the built-in a
Python user would try: a wrong type is a ``TypeError``, an index or number out of range an
``IndexError``, an unknown name a ``KeyError``. Every message names the bad value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import llmscope as ls
from llmscope.errors import LLMScopeError
from llmscope.stimuli import agreement, grammar


@pytest.fixture(scope="module")
def env(organism):
    stim = grammar(organism, n_docs=4, seed=0)
    rec = ls.record(organism, stim, ["mlp.0", "mlp.1", "attn.1", "resid.1"], progress=False)
    fp = ls.field_potential(rec, ["mlp.0", "mlp.1"], progress=False)
    with torch.no_grad():
        base = organism(stim.ids)
    return dict(m=organism, stim=stim, rec=rec, fp=fp, base=base, spk=ls.spikes(rec, "mlp.0", progress=False))


def pristine(env) -> None:
    m = env["m"]
    assert all(not hp._forward_hooks and not hp._backward_hooks for hp in m.hook_dict.values()), "a hook was left"
    with torch.no_grad():
        assert torch.equal(m(env["stim"].ids), env["base"]), "the model changed"


def check(env, call, builtin, needle) -> None:
    with pytest.raises(LLMScopeError) as info:
        call(env)
    assert isinstance(info.value, builtin), f"{type(info.value).__qualname__} is not a {builtin.__name__}: {info.value}"
    assert needle in str(info.value), f"{needle!r} not in the message: {info.value}"
    pristine(env)


# ---------------------------------------------------------------- flags: a bool takes a bool

FLAGS = {
    "tokenize.truncate": lambda e, v: ls.tokens.tokenize(e["m"], "the dog", truncate=v),
    "record.progress": lambda e, v: ls.record(e["m"], e["stim"], "mlp.0", progress=v),
    "metric.include_bos": lambda e, v: ls.metric(e["m"], e["stim"], include_bos=v),
    "effect.include_bos": lambda e, v: ls.effect(e["m"], e["stim"], ls.lesion("mlp.0", [1]), include_bos=v),
    "patching.per_head": lambda e, v: ls.patching(e["m"], agreement(e["m"], n=4, corrupt=True), metric="logit_diff",
                                                  sites=["attn.0"], per_head=v),
    "patching.progress": lambda e, v: ls.patching(e["m"], agreement(e["m"], n=4, corrupt=True), metric="logit_diff",
                                                  sites=["attn.0"], progress=v),
    "lesion_atlas.stack": lambda e, v: ls.lesion_atlas(e["m"], ls.battery(e["m"], n_docs=2, n_pairs=4), "attn.0", stack=v),
    "localize_heads.include_bos": lambda e, v: ls.localize_heads(e["m"], e["stim"], include_bos=v),
    "confirm_by_lesion.progress": lambda e, v: ls.confirm_by_lesion(e["m"], e["stim"], ("attn.1", [0]), progress=v),
    "spikes.include_bos": lambda e, v: ls.spikes(e["rec"], "mlp.0", include_bos=v),
    "psth.include_bos": lambda e, v: ls.psth(e["spk"], "is_repeat", include_bos=v),
    "tuning.include_bos": lambda e, v: ls.tuning(e["rec"], "mlp.0", "pos_tag", include_bos=v),
    "tuning.progress": lambda e, v: ls.tuning(e["rec"], "mlp.0", "pos_tag", progress=v),
    "top_examples.include_bos": lambda e, v: ls.top_examples(e["rec"], "mlp.0", 3, include_bos=v),
    "decode.include_bos": lambda e, v: ls.decode(e["rec"], "mlp.0", "pos_tag", include_bos=v),
    "pca.include_bos": lambda e, v: ls.pca(e["rec"], "mlp.0", include_bos=v),
    "rdm.include_bos": lambda e, v: ls.rdm(e["rec"], "mlp.0", include_bos=v),
    "cka.progress": lambda e, v: ls.cka(e["rec"], ["mlp.0", "mlp.1"], progress=v),
    "sparsity.include_bos": lambda e, v: ls.sparsity(e["rec"], "mlp.0", include_bos=v),
    "behaviour_correlates.include_bos": lambda e, v: ls.behaviour_correlates(e["m"], e["rec"], include_bos=v),
    "field_potential.include_bos": lambda e, v: ls.field_potential(e["rec"], include_bos=v),
    "lfp_spectrum.include_bos": lambda e, v: ls.lfp_spectrum(e["rec"], include_bos=v),
    "event_average.include_bos": lambda e, v: ls.event_average(e["fp"], "is_repeat", include_bos=v),
    "granger.include_bos": lambda e, v: ls.granger(e["rec"], ["mlp.0", "mlp.1"], include_bos=v),
    "logit_lens.include_bos": lambda e, v: ls.logit_lens(e["m"], e["stim"], include_bos=v),
    "surprise.progress": lambda e, v: ls.surprise(e["m"], agreement(e["m"], n=4), progress=v),
    "key_neurons.include_bos": lambda e, v: ls.key_neurons(e["m"], e["stim"], include_bos=v),
    "Raster.include_bos": lambda e, v: ls.Raster(e["rec"], "mlp.0", include_bos=v),
    "from_texts.bos": lambda e, v: ls.stimuli.from_texts(e["m"], "the dog runs .", tag=False, bos=v),
    "agreement.corrupt": lambda e, v: agreement(e["m"], n=4, corrupt=v),
}


@pytest.mark.parametrize("name", list(FLAGS))
@pytest.mark.parametrize("value", ["no", 1])
def test_a_flag_takes_only_true_or_false(env, name, value):
    check(env, lambda e: FLAGS[name](e, value), TypeError, repr(value))


# ---------------------------------------------------------------- wrong types

TYPES = {
    "site(123)": (lambda e: ls.site(e["m"], 123), "int"),
    "tokenize(123)": (lambda e: ls.tokens.tokenize(e["m"], 123), "int"),
    "tokenize(float ids)": (lambda e: ls.tokens.tokenize(e["m"], torch.tensor([[1.0, 2.0]])), "float"),
    "from_ids('abc')": (lambda e: ls.Stimuli.from_ids(e["m"], "abc"), "str"),
    "from_ids(float ids)": (lambda e: ls.Stimuli.from_ids(e["m"], [[1.5, 2.0]]), "float"),
    "from_texts(123)": (lambda e: ls.stimuli.from_texts(e["m"], 123, tag=False), "int"),
    "select_seqs(['a'])": (lambda e: e["stim"].select_seqs(["a"]), "select_seqs"),
    "record(stimuli=3)": (lambda e: ls.record(e["m"], 3, "mlp.0"), "int"),
    "record(batch_size='8')": (lambda e: ls.record(e["m"], e["stim"], "mlp.0", batch_size="8"), "'8'"),
    "metric(stimuli=3.5)": (lambda e: ls.metric(e["m"], 3.5), "float"),
    "units=('mlp.0', ['a'])": (lambda e: ls.sites.unit_index(e["m"], ("mlp.0", ["a"])), "mlp.0"),
    "lesion(units=3)": (lambda e: ls.lesion(3), "3"),
    "lesion(mode=3)": (lambda e: ls.lesion("mlp.0", [1], mode=3), "3"),
    "gain(factor='2')": (lambda e: ls.gain("mlp.0", [1], factor="2"), "'2'"),
    "steer(vector='x')": (lambda e: ls.steer("resid.1", "x"), "str"),
    "intervene(3)": (lambda e: ls.intervene(e["m"], 3).__enter__(), "int"),
    "tuning(n_controls=1.5)": (lambda e: ls.tuning(e["rec"], "mlp.0", "pos_tag", n_controls=1.5), "1.5"),
    "tuning(recording=stim)": (lambda e: ls.tuning(e["stim"], "mlp.0", "pos_tag"), "Stimuli"),
    "spikes(threshold='3')": (lambda e: ls.spikes(e["rec"], "mlp.0", threshold="3"), "'3'"),
    "psth(window=2.5)": (lambda e: ls.psth(e["spk"], "is_repeat", window=2.5), "2.5"),
    "top_examples(k='5')": (lambda e: ls.top_examples(e["rec"], "mlp.0", 3, k="5"), "'5'"),
    "pca(n_components=2.0)": (lambda e: ls.pca(e["rec"], "mlp.0", n_components=2.0), "2.0"),
    "sparsity(thresholds=['a'])": (lambda e: ls.sparsity(e["rec"], "mlp.0", thresholds=["a"]), "'a'"),
    "granger(maxlag='2')": (lambda e: ls.granger(e["fp"], maxlag="2"), "'2'"),
    "lesion_atlas(battery=stim)": (lambda e: ls.lesion_atlas(e["m"], e["stim"]), "Stimuli"),
    "key_neurons(top_frac='x')": (lambda e: ls.key_neurons(e["m"], e["stim"], top_frac="x"), "'x'"),
    "AttentionMap(source=3)": (lambda e: ls.AttentionMap(e["m"], 3), "int"),
    "load(123)": (lambda e: ls.load(123), "int"),
    "grammar(n_docs='3')": (lambda e: grammar(e["m"], n_docs="3"), "'3'"),
}


@pytest.mark.parametrize("name", list(TYPES))
def test_a_wrong_type_is_a_type_error(env, name):
    call, needle = TYPES[name]
    check(env, call, TypeError, needle)


# ---------------------------------------------------------------- out of range

RANGES = {
    "site mlp.9": (lambda e: ls.site(e["m"], "mlp.9"), "9"),
    "unit 600": (lambda e: ls.sites.unit_index(e["m"], ("mlp.0", [600])), "600"),
    "unit -1": (lambda e: ls.sites.unit_index(e["m"], ("mlp.0", [-1])), "-1"),
    "head 4": (lambda e: ls.lesion("attn.0", [4]).fwd_hooks(e["m"]), "4"),
    "token id 99999": (lambda e: ls.Stimuli.from_ids(e["m"], [[1, 99999]]), "99999"),
    "longer than the context": (lambda e: ls.Stimuli.from_ids(e["m"], [[1] * 200]), "200"),
    "select_seqs(99)": (lambda e: e["stim"].select_seqs([99]), "99"),
    "grammar(max_tokens=10**6)": (lambda e: grammar(e["m"], max_tokens=10 ** 6), "1000000"),
    "grammar(n_docs=0)": (lambda e: grammar(e["m"], n_docs=0), "0"),
    "record(batch_size=0)": (lambda e: ls.record(e["m"], e["stim"], "mlp.0", batch_size=0), "0"),
    "responses units 600": (lambda e: e["rec"].responses("mlp.0", indices=[600]), "600"),
    "gain(factor=nan)": (lambda e: ls.gain("mlp.0", [1], factor=float("nan")), "nan"),
    "steer(alpha=inf)": (lambda e: ls.steer("resid.1", torch.ones(128), alpha=float("inf")), "inf"),
    "tuning(n_controls=0)": (lambda e: ls.tuning(e["rec"], "mlp.0", "pos_tag", n_controls=0), "0"),
    "tuning(n_controls=10**6)": (lambda e: ls.tuning(e["rec"], "mlp.0", "pos_tag", n_controls=10 ** 6), "1000000"),
    "rsa(n_controls=10**6)": (lambda e: ls.rsa(ls.rdm(e["rec"], ["mlp.0", "mlp.1"]), n_controls=10 ** 6), "1000000"),
    "decode(n_controls=10**6)": (lambda e: ls.decode(e["rec"], "mlp.0", "pos_tag", n_controls=10 ** 6), "1000000"),
    "cka(n_controls=-1)": (lambda e: ls.cka(e["rec"], ["mlp.0", "mlp.1"], n_controls=-1), "-1"),
    "psth(window=-1)": (lambda e: ls.psth(e["spk"], "is_repeat", window=-1), "-1"),
    "top_examples(unit=600)": (lambda e: ls.top_examples(e["rec"], "mlp.0", 600), "600"),
    "top_examples(k=0)": (lambda e: ls.top_examples(e["rec"], "mlp.0", 3, k=0), "0"),
    "pca(n_components=0)": (lambda e: ls.pca(e["rec"], "mlp.0", n_components=0), "0"),
    "granger(maxlag=0)": (lambda e: ls.granger(e["fp"], maxlag=0), "0"),
    "key_neurons(top_frac=2)": (lambda e: ls.key_neurons(e["m"], e["stim"], top_frac=2), "2"),
    "localize_heads(batch_size=0)": (lambda e: ls.localize_heads(e["m"], e["stim"], batch_size=0), "0"),
    "patch positions 99": (lambda e: ls.intervene(e["m"], ls.patch("the dog runs", "resid.1", positions=[99])).__enter__(), "99"),
}


@pytest.mark.parametrize("name", list(RANGES))
def test_out_of_range_is_an_index_error(env, name):
    call, needle = RANGES[name]
    check(env, call, IndexError, needle)


# ---------------------------------------------------------------- unknown names

UNKNOWN = {
    "site foo.1": (lambda e: ls.site(e["m"], "foo.1"), "foo.1"),
    "model nope": (lambda e: ls.load("nope-not-a-model"), "nope-not-a-model"),
    "metric foo": (lambda e: ls.metric(e["m"], e["stim"], "foo"), "foo"),
    "metric by column": (lambda e: ls.metric(e["m"], e["stim"], by="nope"), "nope"),
    "align": (lambda e: ls.metric(e["m"], e["stim"], align="sideways"), "sideways"),
    "lesion mode": (lambda e: ls.lesion("mlp.0", [1], mode="foo"), "foo"),
    "record dtype": (lambda e: ls.record(e["m"], e["stim"], "mlp.0", dtype="float64"), "float64"),
    "responses site": (lambda e: e["rec"].responses("mlp.7"), "mlp.7"),
    "select column": (lambda e: e["rec"].select("nope == 1"), "nope"),
    "tuning label": (lambda e: ls.tuning(e["rec"], "mlp.0", "nope"), "nope"),
    "spikes method": (lambda e: ls.spikes(e["rec"], "mlp.0", method="foo"), "foo"),
    "psth event": (lambda e: ls.psth(e["spk"], "nope"), "nope"),
    "decode label": (lambda e: ls.decode(e["rec"], "mlp.0", "nope"), "nope"),
    "decode target": (lambda e: ls.decode(e["rec"], "mlp.0", "pos_tag", target="later"), "later"),
    "rdm label": (lambda e: ls.rdm(e["rec"], "mlp.0", "nope"), "nope"),
    "sparsity negative": (lambda e: ls.sparsity(e["rec"], "mlp.0", negative="foo"), "foo"),
    "correlates behaviour": (lambda e: ls.behaviour_correlates(e["m"], e["rec"], "foo"), "foo"),
    "event_average event": (lambda e: ls.event_average(e["fp"], "nope"), "nope"),
    "key_neurons method": (lambda e: ls.key_neurons(e["m"], e["stim"], method="foo"), "foo"),
    "battery behaviour": (lambda e: ls.battery(e["m"], n_docs=2, n_pairs=4, behaviours=["foo"]), "foo"),
}


@pytest.mark.parametrize("name", list(UNKNOWN))
def test_an_unknown_name_is_a_key_error(env, name):
    call, needle = UNKNOWN[name]
    check(env, call, KeyError, needle)


# ---------------------------------------------------------------- non-finite data


@pytest.fixture(scope="module")
def nan_rec(organism):
    """A recording whose mlp.0 has one NaN (row 9, unit 7) and attn.1 one inf (row 9, head 2)."""
    rec = ls.record(organism, grammar(organism, n_docs=4, seed=1), ["mlp.0", "mlp.1", "attn.1"], progress=False)
    for site, where, value in (("mlp.0", (9, 7), np.nan), ("attn.1", (9, 2, 3), np.inf)):
        arr = rec._group[site]
        data = arr[:]
        data[where] = value
        arr[:] = data
    return rec


NONFINITE = {
    "tuning": lambda r: ls.tuning(r, "mlp.0", "pos_tag", progress=False),
    "spikes": lambda r: ls.spikes(r, "mlp.0", progress=False),
    "sparsity": lambda r: ls.sparsity(r, "mlp.0", progress=False),
    "pca": lambda r: ls.pca(r, "mlp.0"),
    "decode": lambda r: ls.decode(r, "mlp.0", "pos_tag", progress=False),
    "cka": lambda r: ls.cka(r, ["mlp.0", "mlp.1"], progress=False),
    "rdm": lambda r: ls.rdm(r, "mlp.0"),
    "field_potential": lambda r: ls.field_potential(r, "mlp.0", progress=False),
    "top_examples": lambda r: ls.top_examples(r, "mlp.0", 7),
    "spikes of heads (inf)": lambda r: ls.spikes(r, "attn.1", progress=False),
    "Raster": lambda r: ls.Raster(r, "mlp.0"),
}


@pytest.mark.parametrize("name", list(NONFINITE))
def test_non_finite_responses_are_refused_naming_site_row_and_unit(nan_rec, name):
    with pytest.raises(ls.errors.AnalysisError) as info:
        NONFINITE[name](nan_rec)
    text = str(info.value)
    site, unit = ("attn.1", "unit 2") if "inf" in name else ("mlp.0", "unit 7")
    assert site in text and "row 9" in text and unit in text and "non-finite" in text


def test_interventions_refuse_non_finite_vectors_caches_and_references(env, nan_rec):
    m = env["m"]
    bad = torch.ones(128)
    bad[5] = float("nan")
    with pytest.raises(ls.errors.InterventionError, match="non-finite"):
        ls.steer("resid.1", bad)
    _, cache = m.run_with_cache(env["stim"].ids[:1], names_filter=["blocks.1.hook_resid_pre"])
    cache.cache_dict["blocks.1.hook_resid_pre"] = cache["blocks.1.hook_resid_pre"].clone()
    cache.cache_dict["blocks.1.hook_resid_pre"][0, 2, 3] = float("inf")
    with pytest.raises(ls.errors.InterventionError, match="non-finite"):
        ls.intervene(m, ls.patch(cache, "resid.1")).__enter__()
    with pytest.raises(ls.errors.InterventionError, match="non-finite"):
        ls.intervene(m, ls.lesion("mlp.0", [7], mode="mean", reference=nan_rec)).__enter__()
    pristine(env)


# ---------------------------------------------------------------- objects from another model


def test_objects_from_another_model_are_refused_naming_both(env, smol):
    m = env["m"]
    smol_stim = ls.stimuli.from_texts(smol, "The cat sat on the mat.", tag=False)
    cases = [
        (lambda: ls.intervene(smol, ls.steer(ls.site(m, "resid.1"), torch.ones(128))).__enter__(), ls.errors.SiteError),
        (lambda: ls.record(m, smol_stim, "mlp.0", progress=False), ls.errors.PromptError),
        (lambda: ls.metric(m, smol_stim), ls.errors.PromptError),
        (lambda: ls.localize_heads(m, smol_stim), ls.errors.PromptError),
        (lambda: ls.lesion_atlas(smol, ls.battery(m, n_docs=2, n_pairs=4), "attn.0"), ls.errors.PromptError),
        (lambda: ls.intervene(m, ls.patch(smol.run_with_cache(smol_stim.ids)[1], "resid.1")).__enter__(),
         ls.errors.InterventionError),
        (lambda: ls.AblationPanel(smol, smol_stim, units=ls.tuning(env["rec"], "mlp.0", "pos_tag",
                                                                     progress=False).top(4)), ls.errors.SiteError),
    ]
    for call, error in cases:
        with pytest.raises(error) as info:
            call()
        text = str(info.value)
        assert "grammar-2l" in text and "smollm2-135m" in text, text
    pristine(env)


def test_a_changed_copy_of_the_model_refuses_its_recordings_as_references(env):
    twin = ls.load("grammar-2l")
    with torch.no_grad():
        twin.blocks[0].mlp.out.weight.neg_() if hasattr(twin.blocks[0].mlp, "out") else None
        next(twin.blocks[0].mlp.parameters()).neg_()
    with pytest.raises(ls.errors.InterventionError, match="weights"):
        ls.intervene(twin, ls.lesion("mlp.0", [1], mode="mean", reference=env["rec"])).__enter__()


# ---------------------------------------------------------------- the seed-002 command


@pytest.mark.parametrize("args, needle", [
    (["--lesion-layers", "5"], "5"),
    (["--ks", "100000"], "100000"),
    (["--folds", "1"], "folds"),
    (["--model", "nope-not-a-model"], "nope-not-a-model"),
    (["--layers", "0", "--lesion-layers", "1"], "[1]"),
    (["--out", "/etc/passwd"], "/etc/passwd"),
    (["--out", "/proc/llmscope"], "/proc/llmscope"),
])
def test_the_command_checks_every_argument_first_in_one_line(args, needle, capsys):
    from llmscope.replicate.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["seed002", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m llmscope.replicate: error:") and needle in err[0], err


def test_the_command_help_advertises_only_real_options(capsys):
    from llmscope.replicate.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--quick" not in capsys.readouterr().out


# ---------------------------------------------------------------- smaller ones


def test_strings_are_stimuli_where_stimuli_are_taken(env):
    m = env["m"]
    one = ls.metric(m, "the dog runs .")
    many = ls.metric(m, ["the dog runs .", "a cat sleeps ."])
    assert one.df["n"].item() > 0 and many.df["n"].item() > one.df["n"].item()


def test_the_error_kinds_are_picklable_and_print_plainly():
    import pickle

    err = ls.errors.SiteError.Unknown("unknown site 'x'")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ls.errors.SiteError.Unknown and str(back) == "unknown site 'x'"
    assert isinstance(back, KeyError) and isinstance(back, ValueError) and isinstance(back, ls.LLMScopeError)
