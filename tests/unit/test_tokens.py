"""Prompt checks: empty prompts and prompts longer than the context, model left unchanged."""

from __future__ import annotations

import pytest
import torch

from llmscope.tokens import PromptError, tokenize


def _logits(model):
    with torch.no_grad():
        return model(model.to_tokens("w1 w2 w3"))


def test_batch_is_padded(tiny):
    t = tokenize(tiny, ["w1 w2", "w3"])
    assert t.shape == (2, 3) and t[1, 2].item() == tiny.tokenizer.pad_token_id


@pytest.mark.parametrize("prompt", ["", "  ", [], ["w1", ""]])
def test_empty_prompt(tiny, prompt):
    before = _logits(tiny)
    with pytest.raises(PromptError, match="empty"):
        tokenize(tiny, prompt)
    assert torch.equal(before, _logits(tiny))


def test_too_long_prompt_raises_or_truncates(tiny):
    long = " ".join(["w5"] * 40)
    before = _logits(tiny)
    with pytest.raises(PromptError, match="context is 32"):
        tokenize(tiny, long)
    with pytest.warns(UserWarning, match="truncated"):
        t = tokenize(tiny, long, truncate=True)
    assert t.shape == (1, 32)
    assert torch.equal(before, _logits(tiny))


def test_bad_token_ids(tiny):
    with pytest.raises(PromptError, match="0..62"):
        tokenize(tiny, torch.tensor([[1, 999]]))


@pytest.mark.parametrize("prompt, match", [
    (torch.tensor([[1.0, 5.0]]), "integer tensor, got torch.float32"),
    (torch.tensor([[True, False]]), "integer tensor"),
    (42, "a prompt is a string"),
    (["w1", 7], "prompts must be strings; got int 7"),
    ({"text": "w1"}, "a prompt is a string"),
])
def test_prompts_of_the_wrong_type(tiny, prompt, match):
    before = _logits(tiny)
    with pytest.raises(PromptError, match=match):
        tokenize(tiny, prompt)
    assert torch.equal(before, _logits(tiny))


def test_float_ids_are_refused_by_stimuli_too(tiny):
    from llmscope.stimuli import Stimuli

    with pytest.raises(PromptError, match="integers"):
        Stimuli.from_ids(tiny, [[1.0, 5.0, 6.0]])
    with pytest.raises(PromptError, match="lists of token ids"):
        Stimuli.from_ids(tiny, "w1 w2")
