"""Tokenizing regression records (``text`` + ``label``, :mod:`posttrain.data.records`) for a scalar head.

A record's text is its ``text``, or its conversation rendered with the tokenizer's chat template. The tokens are
the text's tokens followed by EOS (the head reads the last one), cut from the **left** to ``max_length`` so
that the end of the text — a MetaRM input ends with the critique being judged — always survives.
"""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.errors import ConfigError


def regression_text(record: dict, tokenizer) -> str:
    """The text a regression record scores (module docstring)."""
    if "text" in record:
        return record["text"]
    if "messages" in record:
        messages = record["messages"]
    elif isinstance(record.get("prompt"), list):
        messages = record["prompt"] + record["completion"]
    else:
        return record["prompt"] + record["completion"]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def encode_texts(texts: Sequence[str], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text plus EOS, left-truncated to ``max_length``; and how many were truncated."""
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}", fix="raise data.max_length")
    eos = tokenizer.eos_token_id
    encoded, truncated = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(ids) > max_length:
            ids, truncated = ids[-max_length:], truncated + 1
        encoded.append(ids)
    return encoded, truncated
