"""Site resolution and validation on GPT-2 (tiny fixture) and Llama (SmolLM2) architectures."""

from __future__ import annotations

import numpy as np
import pytest

from llmscope.sites import SiteError, site, sites


@pytest.mark.parametrize(
    "spec, hook, shape, unit",
    [
        ("mlp.0", "blocks.0.mlp.hook_post", (64,), "neuron"),
        ("attn.1", "blocks.1.attn.hook_z", (4, 8), "head"),
        ("resid.0", "blocks.0.hook_resid_pre", (32,), "dim"),
        ("resid.2", "blocks.1.hook_resid_post", (32,), "dim"),
    ],
)
def test_short_sites_gpt2(tiny, spec, hook, shape, unit):
    s = site(tiny, spec)
    assert (s.hook, s.shape, s.unit, s.n_units) == (hook, shape, unit, shape[0])


def test_raw_hook_of_a_short_site_resolves_to_it(tiny):
    assert site(tiny, "blocks.1.mlp.hook_post").name == "mlp.1"


def test_raw_hook_shape_is_probed(tiny):
    s = site(tiny, "blocks.0.hook_resid_mid")
    assert s.kind == "hook" and s.shape == (32,) and s.layer == 0


def test_pattern_hook_is_not_a_per_token_site(tiny):
    with pytest.raises(SiteError, match="attn.L"):
        site(tiny, "blocks.0.attn.hook_pattern")
    assert site(tiny, "attn.0").pattern_hook == "blocks.0.attn.hook_pattern"


@pytest.mark.parametrize("bad", ["mlp.2", "attn.7", "resid.3", "mlp.-1", "mpl.0", "blocks.9.mlp.hook_post", ""])
def test_unknown_or_out_of_range_sites_list_choices(tiny, bad):
    with pytest.raises(SiteError) as err:
        site(tiny, bad)
    assert "mlp.0..mlp.1" in str(err.value) and "resid.0..resid.2" in str(err.value)


def test_units_checked(tiny):
    s = site(tiny, "mlp.0")
    assert s.check_units([0, 63, 5]).tolist() == [0, 63, 5]
    with pytest.raises(SiteError, match="out of range.*negative indices are not allowed"):
        s.check_units([0, -1])
    with pytest.raises(SiteError, match="out of range.*0..63"):
        s.check_units([64])
    with pytest.raises(SiteError, match="integers"):
        s.check_units([0.5])
    with pytest.raises(SiteError, match="out of range.*0..3"):
        site(tiny, "attn.0").check_units(4)
    idx = s.unit_index([1, 2])
    assert list(idx.names) == ["site", "unit"] and list(idx) == [("mlp.0", 1), ("mlp.0", 2)]


def test_sites_dedupes_and_rejects_empty(tiny):
    assert [s.name for s in sites(tiny, ["mlp.1", "blocks.1.mlp.hook_post", "attn.0"])] == ["mlp.1", "attn.0"]
    with pytest.raises(SiteError, match="no sites"):
        sites(tiny, [])


@pytest.mark.smollm2
def test_llama_sites(smol):
    assert site(smol, "mlp.29").shape == (1536,)
    assert site(smol, "attn.0").shape == (9, 64)
    assert site(smol, "resid.30").hook == "blocks.29.hook_resid_post"
    with pytest.raises(SiteError, match="mlp.0..mlp.29"):
        site(smol, "mlp.30")
    assert np.array_equal(site(smol, "attn.3").check_units(None), np.arange(9))


def test_a_list_of_bare_sites_means_all_their_units(tiny):
    from llmscope.sites import unit_index

    index = unit_index(tiny, ["mlp.0", ("attn.1", [2]), "attn.0"])
    assert len(index) == 64 + 1 + 4 and index[-1] == ("attn.0", 3) and ("attn.1", 2) in index
    with pytest.raises(SiteError):
        unit_index(tiny, ["mlp.9"])
