"""Tokenization of preference records into (chosen, rejected) pairs of examples with completion masks.

Each side of a normalized preference record (``prompt``, ``chosen``, ``rejected``; see
:mod:`posttrain.data.records`) is tokenized exactly as the SFT record ``prompt`` + ``completion`` would be
(:func:`posttrain.data.tokenize.tokenize_sft` with ``completion_only=True``): chat template for
conversations, ``prompt + completion + [eos]`` for plain strings, the loss mask 1 on the completion tokens.
The completion log-prob of a side is then ``Σ_t mask_t · log π(x_t | x_<t)``.

Over-long pairs follow ``overlong``, as TRL 1.16 ``DPOTrainer`` does with ``truncation_mode="keep_start"``:
``truncate`` cuts each side longer than ``max_length`` from the right (the prompt is kept) and drops a pair
whose prompt alone fills ``max_length``; ``drop`` drops every pair with a side longer than ``max_length``.
A pair whose two sides are the same tokens after truncation carries no preference and is dropped too.
Truncated and dropped pairs are counted in the returned :class:`TokenizedPairs`.

:func:`tokenize_unpaired` makes KTO's examples from unpaired records (``prompt``, ``completion``, ``label``) as
pairs of the same shape: ``chosen`` is the record's own completion, ``rejected`` the *mismatched* one — its prompt
with the completion of another record, the one before it in an order shuffled by ``seed`` (skipping up to
:data:`MISMATCH_TRIES` records with the same prompt) — from which KTO estimates its reference point. The
record's own side follows ``overlong``; the mismatched side, which shares its prompt, is always cut to
``max_length``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from posttrain.errors import ConfigError, DataError

from .records import is_conversational
from .tokenize import OVERLONG_POLICIES, Example, tokenize_sft

MISMATCH_TRIES = 16


@dataclass
class PreferencePair:
    """The tokenized chosen and rejected sides of one record, and that record's position in the input."""

    chosen: Example
    rejected: Example
    index: int
    where: str = ""

    @property
    def longest(self) -> int:
        return max(len(self.chosen), len(self.rejected))


@dataclass
class TokenizedPairs:
    """Tokenized pairs and how many records were truncated or dropped (see the module docstring)."""

    pairs: list[PreferencePair] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[PreferencePair]:
        return iter(self.pairs)


def tokenize_pairs(
    records: Iterable[dict], tokenizer: Any, max_length: int, overlong: str = "truncate"
) -> TokenizedPairs:
    """Tokenize normalized preference records into pairs (see the module docstring)."""
    _check_limits(overlong, max_length)
    records = list(records)
    sides = [_side(record, side) for record in records for side in ("chosen", "rejected")]
    examples = _untruncated(sides, tokenizer)
    result = TokenizedPairs()
    for index, record in enumerate(records):
        chosen, rejected = examples[2 * index], examples[2 * index + 1]
        if max(len(chosen), len(rejected)) > max_length:
            if overlong == "drop" or _prompt_length(chosen) >= max_length or _prompt_length(rejected) >= max_length:
                result.dropped += 1
                continue
            chosen, rejected = _truncated(chosen, max_length), _truncated(rejected, max_length)
            result.truncated += 1
        if chosen.input_ids == rejected.input_ids:
            result.dropped += 1
            continue
        result.pairs.append(PreferencePair(chosen, rejected, index, record.get("_where", "")))
    return result


def tokenize_unpaired(records: Iterable[dict], tokenizer: Any, max_length: int, overlong: str = "truncate",
                      seed: int = 0) -> TokenizedPairs:
    """KTO's (own, mismatched) example pairs of normalized unpaired records (see the module docstring)."""
    _check_limits(overlong, max_length)
    records = list(records)
    if len(records) < 2:
        raise DataError("KTO needs at least two records: its reference point pairs prompts with other records' "
                        "completions", where=records[0].get("_where") if records else None,
                        fix="give more unpaired records")
    conversational = is_conversational(records[0]["prompt"])
    for record in records:
        if is_conversational(record["prompt"]) != conversational:
            raise DataError("KTO pairs each prompt with another record's completion, so all records need one form; "
                            f"this one is {'text' if conversational else 'messages'}, the first is not",
                            where=record.get("_where"), fix="give every record text, or every record messages")
    donors = _mismatch_donors(records, seed)
    sides = [{"prompt": record["prompt"], "completion": completion, "_where": record.get("_where", "")}
             for record, donor in zip(records, donors, strict=True)
             for completion in (record["completion"], records[donor]["completion"])]
    examples = _untruncated(sides, tokenizer)
    result = TokenizedPairs()
    for index, record in enumerate(records):
        own, mismatched = examples[2 * index], examples[2 * index + 1]
        if len(own) > max_length:
            if overlong == "drop" or _prompt_length(own) >= max_length:
                result.dropped += 1
                continue
            own = _truncated(own, max_length)
            result.truncated += 1
        result.pairs.append(PreferencePair(own, _truncated(mismatched, max_length), index, record.get("_where", "")))
    return result


def _mismatch_donors(records: list[dict], seed: int) -> list[int]:
    """For each record, the record whose completion makes its mismatched pair (see the module docstring)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    donors = [0] * len(records)
    for position, index in enumerate(order):
        candidates = (order[position - step] for step in range(1, min(MISMATCH_TRIES, len(order) - 1) + 1))
        donors[index] = next((c for c in candidates if records[c]["prompt"] != records[index]["prompt"]),
                             order[position - 1])
    return donors


def _check_limits(overlong: str, max_length: int) -> None:
    if overlong not in OVERLONG_POLICIES:
        raise ConfigError(f"unknown over-long policy {overlong!r}", fix="use 'truncate' or 'drop'")
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}", fix="raise max_length")


def _untruncated(sides: list[dict], tokenizer: Any) -> list[Example]:
    """Every side tokenized whole: the over-long ones are handled pairwise by the callers."""
    return tokenize_sft(sides, tokenizer, max_length=sys.maxsize, completion_only=True).examples


def _side(record: dict, side: str) -> dict:
    """The SFT record ``prompt`` + ``completion = record[side]`` of one side of a preference record."""
    if not all(key in record for key in ("prompt", "chosen", "rejected")):
        raise DataError(
            "record is not a normalized preference record (no prompt, chosen and rejected)",
            where=record.get("_where"),
            fix="read the data with read_records(..., kind='preference') before tokenizing",
        )
    return {"prompt": record["prompt"], "completion": record[side], "_where": record.get("_where", "")}


def _prompt_length(example: Example) -> int:
    return example.loss_mask.index(1) if 1 in example.loss_mask else len(example)


def _truncated(example: Example, max_length: int) -> Example:
    return Example(example.input_ids[:max_length], example.loss_mask[:max_length], example.where)
