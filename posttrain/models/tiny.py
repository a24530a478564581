"""Tiny models built in code, for tests and quick experiments (no download, no files).

``tiny_tokenizer()`` is a byte-level tokenizer: every UTF-8 byte is one token (id = 4 + byte value),
so any text round-trips exactly, plus four special tokens with the ids SmolLM2 uses for the first three:
``<|endoftext|>`` 0, ``<|im_start|>`` 1, ``<|im_end|>`` 2 and ``<|pad|>`` 3. It carries a ChatML chat
template, ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message.

``tiny_model()`` is a randomly initialized ``LlamaForCausalLM`` over that vocabulary, deterministic in
its seed. The name ``tiny-random`` in ``load_model``/``load_tokenizer`` is ``tiny_model()`` and
``tiny_tokenizer()`` with their default arguments.
"""

from __future__ import annotations

import torch

TINY_MODEL_NAME = "tiny-random"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_to_symbol() -> dict[int, str]:
    """The reversible byte -> printable character map that byte-level BPE tokenizers use.

    Bytes that are printable Latin-1 characters map to themselves; the other 68 (controls, space,
    soft hyphen...) map, in byte order, to the characters from U+0100 on.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {byte: chr(byte) for byte in printable}
    next_code = 256
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(next_code)
            next_code += 1
    return symbols


def tiny_tokenizer():
    """A byte-level ``PreTrainedTokenizerFast`` with ChatML specials, eos ``<|im_end|>`` and pad ``<|pad|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {token: token_id for token_id, token in enumerate(SPECIAL_TOKENS)}
    for byte, symbol in byte_to_symbol().items():
        vocabulary[symbol] = len(SPECIAL_TOKENS) + byte
    backend = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
    )


def tiny_model(
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    tie_word_embeddings: bool = False,
):
    """A random fp32 ``LlamaForCausalLM``; the same arguments always give the same weights.

    ``vocab_size`` defaults to the size of ``tiny_tokenizer()`` (260). The MLP is 4x the hidden size,
    every head has its own key/value projection, and the caller's random state is left untouched.
    Attention uses PyTorch's scaled-dot-product kernel where available (transformers' default).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
