"""Partial passes: the closed-form readout of residuals with one direction taken out equals
unembedding each copy, through LayerNorm (the organism, a random GPT-2) and RMSNorm (SmolLM2);
fused activations are swapped in and always put back."""

from __future__ import annotations

import pytest
import torch

from llmscope.engine.passes import fused_activations, rank_one_readout, readout


def check_rank_one(model, n_copies: int = 3) -> None:
    ids = torch.tensor([[1, 5, 9, 4, 7, 3, 2, 8]])
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=[last])
        r = cache[last][0]
        w = torch.randn(n_copies, r.shape[-1], generator=gen) * r.norm(dim=-1).mean() / r.shape[-1] ** 0.5
        a = torch.randn(n_copies, len(r), generator=gen)
        a[0] = 0.0  # a copy left alone is the intact readout
        want = torch.stack([readout(model)(r - a[j][:, None] * w[j]) for j in range(n_copies)])
        got = rank_one_readout(model)(cache[last])((0, torch.arange(len(r))), a, w)
    assert got.shape == want.shape == (n_copies, len(r), model.cfg.d_vocab)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    assert not torch.allclose(got[1], got[0])  # the lesion changed something


def test_rank_one_readout_through_layernorm(organism, tiny):
    for model in (organism, tiny):
        check_rank_one(model)


@pytest.mark.smollm2
def test_rank_one_readout_through_rmsnorm(smol):
    check_rank_one(smol)


def test_fused_activations_swap_gpt2_gelus_and_put_them_back(organism):
    """Every block's NewGELU runs fused for the duration, to float rounding; one that has a
    PyTorch hook of its own is left alone (its hook still fires); all are back after an error."""
    ids = torch.tensor([[1, 5, 9, 4, 7, 3, 2, 8]])
    acts = [block.mlp.original_component.act for block in organism.blocks]
    fired = []
    handle = acts[0].register_forward_hook(lambda *_: fired.append(1))
    try:
        with torch.no_grad():
            plain = organism(ids)
            with pytest.raises(RuntimeError, match="boom"), fused_activations(organism) as n:
                fused = organism(ids)
                assert [type(block.mlp.original_component.act) for block in organism.blocks[1:]] == \
                    [torch.nn.GELU] * (len(acts) - 1)
                raise RuntimeError("boom")
    finally:
        handle.remove()
    assert n == len(acts) - 1 and len(fired) == 2  # the hooked one ran in both passes
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert [block.mlp.original_component.act for block in organism.blocks] == acts
