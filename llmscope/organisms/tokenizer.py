"""A word-level tokenizer for the toy English: one token per word, ids as in `Grammar.vocab`.

Example:
    >>> from llmscope.organisms.tokenizer import word_tokenizer
    >>> from llmscope.stimuli.toy_grammar import Grammar
    >>> tok = word_tokenizer(Grammar(0).vocab)
    >>> tok.convert_ids_to_tokens(tok("The dog runs.")["input_ids"])
    ['the', 'dog', 'runs', '.']
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def word_tokenizer(vocab: list[str]) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` over `vocab` (specials `<pad>`, `<bos>`, `<eos>`, `<unk>`
    included). Text is lower-cased and split at spaces and punctuation; it adds no special
    tokens itself: the model's `to_tokens` prepends `<bos>`.
    """
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=128, clean_up_tokenization_spaces=False)
