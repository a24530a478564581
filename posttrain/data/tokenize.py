"""Tokenization of SFT records into token ids with a loss mask.

The loss mask is aligned with ``input_ids``: ``loss_mask[t] == 1`` means token ``t`` is a training target
(predicted from the tokens before it; callers shift logits). Token 0 is never a target.

Conversational records are rendered with the tokenizer's chat template. With ``completion_only=True``
(the default) the mask is 1 exactly on the tokens of each trained assistant turn, including the special
token that closes the turn (``<|im_end|>`` in ChatML) because the model must learn to stop, and 0 on system,
user and template tokens. The trained turns are every assistant turn of a ``messages`` record and the
assistant turns of a conversational ``completion``. Turn ``i`` spans the tokens between

- ``P_i`` = the conversation before turn ``i`` rendered with ``add_generation_prompt=True``, and
- ``F_i`` = the conversation up to and including turn ``i``,

up to and including the last special token after ``P_i`` (template text after the closing token, such as
ChatML's newline, is not trained). This needs the *prefix property*: the tokens of ``P_i`` begin the tokens of
``F_i``, which begin the tokens of the whole conversation. It is checked for every turn of every record, and
a template or tokenizer that breaks it raises :class:`~posttrain.errors.DataError`.

Plain-string records use no chat template: ``input = prompt ids + completion ids + [eos]``, with the prompt
encoded with the tokenizer's special tokens (a BOS where the tokenizer adds one) and the mask 1 on the
completion and the EOS.

``completion_only=False`` sets the mask to 1 on every token but the first. Over-long examples follow
``overlong``: ``truncate`` cuts from the right down to ``max_length`` and keeps the prompt (an example whose
prompt alone fills ``max_length`` has nothing left to train on and is dropped); ``drop`` drops the example.
Both are counted in the returned :class:`TokenizedSet`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.errors import ConfigError, DataError, ModelError, location

from .records import is_conversational, normalize_record

OVERLONG_POLICIES = ("truncate", "drop")


@dataclass
class Example:
    """One tokenized example: token ids, the aligned loss mask (1 = target token) and the record's place."""

    input_ids: list[int]
    loss_mask: list[int]
    where: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenizedSet:
    """Tokenized examples and how many records were truncated or dropped for being over-long."""

    examples: list[Example] = field(default_factory=list)
    truncated: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)


def tokenize_sft(
    records: Iterable[dict],
    tokenizer: Any,
    max_length: int,
    overlong: str = "truncate",
    completion_only: bool = True,
) -> TokenizedSet:
    """Tokenize normalized SFT records (see the module docstring for the mask and the over-long policy)."""
    if overlong not in OVERLONG_POLICIES:
        raise ConfigError(f"unknown over-long policy {overlong!r}", fix="use 'truncate' or 'drop'")
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}", fix="raise max_length")
    records = list(records)
    conversational = [i for i, record in enumerate(records) if _is_conversation(record)]
    plain = [i for i, record in enumerate(records) if not _is_conversation(record)]
    encoded: list[tuple[list[int], list[int]] | None] = [None] * len(records)
    conversations = _encode_conversations([records[i] for i in conversational], tokenizer)
    for index, pair in zip(conversational, conversations, strict=True):
        encoded[index] = pair
    for index, pair in zip(plain, _encode_plain([records[i] for i in plain], tokenizer), strict=True):
        encoded[index] = pair

    result = TokenizedSet()
    for record, (input_ids, mask) in zip(records, encoded, strict=True):
        prompt_length = mask.index(1) if 1 in mask else len(mask)
        if not completion_only:
            mask = [0] + [1] * (len(input_ids) - 1)
        if len(input_ids) > max_length:
            if overlong == "drop" or prompt_length >= max_length:
                result.dropped += 1
                continue
            input_ids, mask = input_ids[:max_length], mask[:max_length]
            result.truncated += 1
        mask[0] = 0
        result.examples.append(Example(input_ids=input_ids, loss_mask=mask, where=record.get("_where", "")))
    return result


def encode_prompt(record: dict, tokenizer: Any) -> list[int]:
    """Token ids of a record's prompt, ready for generation.

    A conversational prompt is rendered with the chat template and ``add_generation_prompt=True``; a string
    prompt is encoded as plain text (with the tokenizer's BOS where it adds one), exactly as in training.
    """
    return encode_prompts([record], tokenizer)[0]


def encode_prompts(records: Sequence[dict], tokenizer: Any) -> list[list[int]]:
    """:func:`encode_prompt` for many records, tokenized in one batch."""
    prompts = [_prompt_of(record) for record in records]
    texts: list[str] = []
    for record, prompt in zip(records, prompts, strict=True):
        if is_conversational(prompt):
            texts.append(_render(tokenizer, prompt, record.get("_where", ""), add_generation_prompt=True))
    chat_ids = iter(_token_ids(tokenizer, texts, special_tokens=False))
    plain_ids = iter(
        _token_ids(tokenizer, [p for p in prompts if not is_conversational(p)], special_tokens=True)
    )
    return [next(chat_ids) if is_conversational(prompt) else next(plain_ids) for prompt in prompts]


def trained_spans(example: Example, tokenizer: Any) -> list[str]:
    """The decoded text of each contiguous run of target tokens (for inspecting what a model learns)."""
    spans, current = [], []
    for token, target in zip(example.input_ids, example.loss_mask, strict=True):
        if target:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(span, skip_special_tokens=False) for span in spans]


# ------------------------------------------------------------------------------------------ conversations


def _encode_conversations(records: list[dict], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """Render every conversation and the prefixes of its trained turns, tokenize them in one batch."""
    if not records:
        return []
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            "the records are conversations but the tokenizer has no chat template",
            where=records[0].get("_where"),
            fix="use a chat model's tokenizer, or give prompt and completion as plain strings",
        )
    texts: list[str] = []
    layouts = []  # per record: (index of the full text, [(index of P_i, index of F_i, i), ...], where)
    for record in records:
        messages, first_trained = _conversation(record)
        where = record.get("_where", "")
        full_index = len(texts)
        texts.append(full := _render(tokenizer, messages, where))
        turns = []
        for turn in range(first_trained, len(messages)):
            if messages[turn]["role"] != "assistant":
                continue
            before_index = len(texts)
            texts.append(before := _render(tokenizer, messages[:turn], where, add_generation_prompt=True))
            through_index = full_index
            if turn < len(messages) - 1:
                through_index = len(texts)
                texts.append(_render(tokenizer, messages[: turn + 1], where))
            through = texts[through_index]
            if not (through.startswith(before) and full.startswith(through)):
                raise _prefix_error(
                    where,
                    turn,
                    "the chat template renders the conversation cut after this turn differently from the "
                    "beginning of the whole conversation",
                )
            turns.append((before_index, through_index, turn))
        layouts.append((full_index, turns, where))

    token_ids = _token_ids(tokenizer, texts, special_tokens=False)
    special_ids = set(tokenizer.all_special_ids)
    encoded = []
    for full_index, turns, where in layouts:
        input_ids = token_ids[full_index]
        mask = [0] * len(input_ids)
        previous_end = 0
        for before_index, through_index, turn in turns:
            before, through = token_ids[before_index], token_ids[through_index]
            if (
                not (_starts_with(through, before) and _starts_with(input_ids, through))
                or len(before) < previous_end
            ):
                raise _prefix_error(where, turn, "the tokenizer merges text across the boundary of this turn")
            end = _end_of_turn(through, len(before), special_ids)
            mask[len(before) : end] = [1] * (end - len(before))
            previous_end = len(through)
        encoded.append((input_ids, mask))
    return encoded


def _conversation(record: dict) -> tuple[list[dict], int]:
    """The messages of a conversational record and the index of the first message that may be trained."""
    if "messages" in record:
        return record["messages"], 0
    return record["prompt"] + record["completion"], len(record["prompt"])


def _end_of_turn(through: list[int], start: int, special_ids: set[int]) -> int:
    """One past the last special token after ``start`` (the token closing the turn), or the end."""
    for position in range(len(through) - 1, start - 1, -1):
        if through[position] in special_ids:
            return position + 1
    return len(through)


def _render(tokenizer: Any, messages: list[dict], where: str, *, add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as error:  # templates are Jinja programs that may raise anything on unexpected input
        raise DataError(
            f"the chat template cannot render this conversation ({type(error).__name__}: {error})",
            where=location(where, field="messages"),
            fix="check the roles and their order against what the model's chat template accepts",
        ) from None


def _prefix_error(where: str, turn: int, what: str) -> DataError:
    return DataError(
        f"cannot find where assistant turn {turn} begins and ends: {what} (the prefix property fails)",
        where=location(where, field=f"messages[{turn}]"),
        fix="use a chat template that renders earlier turns the same way whatever follows them "
        "(no rewriting of past turns), or give the data as plain prompt/completion strings",
    )


# ------------------------------------------------------------------------------------------------ plain


def _encode_plain(records: list[dict], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    if not records:
        return []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError(
            "the tokenizer has no end-of-sequence token to end plain-text completions with",
            fix="set tokenizer.eos_token, or use a tokenizer with one",
        )
    prompts = _token_ids(tokenizer, [record["prompt"] for record in records], special_tokens=True)
    completions = _token_ids(tokenizer, [record["completion"] for record in records], special_tokens=False)
    return [
        (prompt + completion + [eos], [0] * len(prompt) + [1] * (len(completion) + 1))
        for prompt, completion in zip(prompts, completions, strict=True)
    ]


# ---------------------------------------------------------------------------------------------- helpers


def _is_conversation(record: dict) -> bool:
    if "messages" in record:
        return True
    if "prompt" not in record or "completion" not in record:
        raise DataError(
            "record is not a normalized SFT record (no messages, or prompt and completion)",
            where=record.get("_where"),
            fix="read the data with read_records(..., kind='sft') before tokenizing",
        )
    return is_conversational(record["prompt"])


def _prompt_of(record: dict) -> Any:
    if isinstance(record.get("prompt"), str | list):
        return record["prompt"]
    return normalize_record(record, "prompt", record.get("_where", "<record>"))["prompt"]


def _token_ids(tokenizer: Any, texts: list[str], *, special_tokens: bool) -> list[list[int]]:
    """Token ids of many texts in one batch (straight through the Rust backend of a fast tokenizer)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encode_batch = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: no offsets
        return [encoding.ids for encoding in encode_batch(texts, add_special_tokens=special_tokens)]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special_tokens)["input_ids"]]


def _starts_with(sequence: list[int], prefix: list[int]) -> bool:
    return len(sequence) >= len(prefix) and sequence[: len(prefix)] == prefix
