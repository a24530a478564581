"""Validation and normalization of records in TRL's dataset conventions.

A record is a plain ``dict``. Conversational text is a list of messages ``{"role", "content"}``.
These kinds of records are recognised:

``sft``
    ``prompt`` + ``completion`` (both strings, or both message lists), ``messages`` (a conversation with
    at least one assistant turn), or GSM8K-style ``question`` + ``answer`` (the final answer follows the
    last ``####``). A question/answer pair becomes the conversational pair
    ``prompt=[{"role": "user", "content": question}]``, ``completion=[{"role": "assistant", "content": answer}]``.
``preference``
    ``prompt`` + ``chosen`` + ``rejected`` (strings or message lists; ``chosen`` must differ from
    ``rejected``). Without ``prompt`` (TRL's implicit-prompt form, also with conversations that begin with
    the same messages) the prompt is the beginning ``chosen`` and ``rejected`` share, cut at a turn boundary
    (:mod:`posttrain.data.implicit_prompt`; Anthropic HH transcripts after the last shared
    ``"\n\nAssistant:"``).
``unpaired``
    one completion and whether it is desirable (TRL's unpaired preference form, for KTO): ``prompt`` +
    ``completion`` (both strings, or both message lists) + ``label`` (``true``: desirable, ``false``: not).
``prompt``
    a prompt for generation, RL or evaluation, from ``prompt``, ``question`` or ``messages`` (the messages
    before the final assistant turn).
``regression``
    a text and its target value for a scalar regression head (MetaRM): ``text`` + ``label`` (a finite
    number), or an SFT-form conversation (``prompt`` + ``completion``, ``messages``) + ``label``.

Every kind keeps an optional ``reference`` (the exact final answer used by verifiable rewards) taken from a
``reference`` or ``final_answer`` field, else from the ``####`` part of a GSM8K-style answer (for ``prompt``
records, the whole ``answer`` when it has no ``####``). Fields that are not part of the format are kept
unchanged; ``_where`` records the place the record came from (``file:line``).

Every problem raises :class:`~posttrain.errors.DataError` naming ``file:line:field`` and how to fix it.
"""

from __future__ import annotations

from typing import Any

from posttrain.errors import ConfigError, DataError, location

from .implicit_prompt import ASSISTANT_MARKER, shared_messages, shared_text

KINDS = ("sft", "preference", "unpaired", "prompt", "regression")
ROLES = ("system", "user", "assistant", "tool")
ANSWER_MARKER = "####"


def reference_from_solution(solution: str) -> str | None:
    """The final answer of a GSM8K-style solution: the text after the last ``####``, stripped, commas removed.

    Returns ``None`` when the solution has no ``####`` or nothing follows it.
    """
    if ANSWER_MARKER not in solution:
        return None
    final = solution.rsplit(ANSWER_MARKER, 1)[1].strip().replace(",", "")
    return final or None


def normalize_record(raw: Any, kind: str, where: str) -> dict:
    """Check one raw record of ``kind`` and return it in normalized form (see the module docstring).

    ``where`` is the record's place (``file:line``); it is stored under ``_where`` and prefixes every error.
    """
    check_kind(kind)
    if not isinstance(raw, dict):
        raise DataError(
            f"a record must be a JSON object, got {_type_name(raw)}",
            where=where,
            fix='write each record as an object, e.g. {"prompt": "...", "completion": "..."}',
        )
    normalizers = {"sft": _normalize_sft, "preference": _normalize_preference, "unpaired": _normalize_unpaired,
                   "prompt": _normalize_prompt, "regression": _normalize_regression}
    record = dict(raw)
    record.update(normalizers[kind](raw, where))
    reference = _reference(raw, where, kind)
    if reference is not None:
        record["reference"] = reference
    record["_where"] = where
    return record


def prompt_text(record: dict) -> str:
    """The text a person would read as the prompt: the last message of a conversation, or the string."""
    prompt = record.get("prompt")
    if isinstance(prompt, list) and prompt:
        return str(prompt[-1].get("content", ""))
    return str(prompt or record.get("question", ""))


def check_kind(kind: str) -> None:
    """Raise a :class:`~posttrain.errors.ConfigError` unless ``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ConfigError(f"unknown record kind {kind!r}", fix=f"use one of: {', '.join(KINDS)}")


def is_conversational(value: Any) -> bool:
    """Whether a prompt/completion value is a list of messages rather than a plain string."""
    return isinstance(value, list)


# ---------------------------------------------------------------------------------------------- formats


def _normalize_sft(raw: dict, where: str) -> dict:
    if "messages" in raw:
        messages = _messages(raw["messages"], where, "messages")
        _require_assistant_turn(messages, where, "messages")
        return {"messages": messages}
    if "prompt" in raw or "completion" in raw:
        prompt = _required(raw, "prompt", where)
        completion = _required(raw, "completion", where)
        return _prompt_completion(prompt, completion, where)
    if "question" in raw or "answer" in raw:
        question = _text(_required(raw, "question", where), where, "question")
        answer = _text(_required(raw, "answer", where), where, "answer", empty_means="the answer is empty")
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
        }
    raise _no_format(raw, where, "messages, prompt + completion, or question + answer")


def _normalize_regression(raw: dict, where: str) -> dict:
    label = _required(raw, "label", where)
    if isinstance(label, bool) or not isinstance(label, int | float) or label != label or abs(label) == float("inf"):
        raise DataError(f"label must be a finite number, got {label!r}", where=location(where, field="label"),
                        fix="give every record its target value as a number, e.g. \"label\": 1.5")
    if "text" in raw:
        return {"text": _text(raw["text"], where, "text"), "label": float(label)}
    return {**_normalize_sft(raw, where), "label": float(label)}


def _prompt_completion(prompt: Any, completion: Any, where: str) -> dict:
    if isinstance(prompt, str) and isinstance(completion, str):
        return {
            "prompt": _text(prompt, where, "prompt"),
            "completion": _text(completion, where, "completion", empty_means="empty completion"),
        }
    if isinstance(prompt, list) and isinstance(completion, list):
        prompt_messages = _messages(prompt, where, "prompt")
        completion_messages = _messages(completion, where, "completion")
        _require_assistant_turn(completion_messages, where, "completion")
        return {"prompt": prompt_messages, "completion": completion_messages}
    if not isinstance(prompt, str | list):
        raise _wrong_type(where, "prompt", prompt, "a string or a list of messages")
    if not isinstance(completion, str | list):
        raise _wrong_type(where, "completion", completion, "a string or a list of messages")
    raise DataError(
        f"prompt is {_type_name(prompt)} but completion is {_type_name(completion)}",
        where=location(where, field="completion"),
        fix="give prompt and completion both as strings, or both as lists of messages",
    )


def _normalize_preference(raw: dict, where: str) -> dict:
    chosen = _required(raw, "chosen", where)
    rejected = _required(raw, "rejected", where)
    if chosen == rejected:
        raise DataError(
            "chosen and rejected are identical: the pair states no preference",
            where=location(where, field="rejected"),
            fix="remove the record, or give a rejected response that differs from the chosen one",
        )
    if isinstance(chosen, list) and isinstance(rejected, list):
        chosen = _messages(chosen, where, "chosen")
        rejected = _messages(rejected, where, "rejected")
        prompt = raw.get("prompt")
        shared = shared_messages(chosen, rejected)
        if isinstance(prompt, list):
            prompt = _messages(prompt, where, "prompt")
        elif shared:  # implicit prompt: the conversations share their beginning
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        elif isinstance(prompt, str):
            prompt = [{"role": "user", "content": _text(prompt, where, "prompt")}]
        elif prompt is None:
            raise _no_shared_prompt(where, "leading messages", "the same prompt messages")
        else:
            raise _wrong_type(where, "prompt", prompt, "a string or a list of messages")
        _require_assistant_turn(chosen, where, "chosen")
        _require_assistant_turn(rejected, where, "rejected")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt = raw.get("prompt")
        if prompt is None:  # implicit prompt: the texts share their beginning
            shared = shared_text(_text(chosen, where, "chosen"), _text(rejected, where, "rejected"))
            if not shared:
                raise _no_shared_prompt(where, "beginning that ends at a turn boundary",
                                        f"the same prompt (text through {ASSISTANT_MARKER!r}, as in Anthropic HH)")
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not isinstance(prompt, str):
            raise _wrong_type(where, "prompt", prompt, "a string (chosen and rejected are strings)")
        return {
            "prompt": _text(prompt, where, "prompt"),
            "chosen": _text(chosen, where, "chosen", empty_means="empty completion"),
            "rejected": _text(rejected, where, "rejected", empty_means="empty completion"),
        }
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str | list):
            raise _wrong_type(where, field, value, "a string or a list of messages")
    raise DataError(
        "chosen and rejected must have the same form",
        where=location(where, field="rejected"),
        fix="give chosen and rejected both as strings, or both as lists of messages",
    )


def _normalize_unpaired(raw: dict, where: str) -> dict:
    if "chosen" in raw or "rejected" in raw:
        raise DataError("an unpaired record has one completion, but this one has chosen/rejected",
                        where=location(where, field="chosen" if "chosen" in raw else "rejected"),
                        fix="write each pair as two records: prompt + completion=chosen + label=true, and "
                            "prompt + completion=rejected + label=false")
    label = _required(raw, "label", where)
    if not isinstance(label, bool):
        raise _wrong_type(where, "label", label, "true (a desirable completion) or false (an undesirable one)")
    prompt = _required(raw, "prompt", where)
    completion = _required(raw, "completion", where)
    return {**_prompt_completion(prompt, completion, where), "label": label}


def _normalize_prompt(raw: dict, where: str) -> dict:
    if "prompt" in raw:
        prompt = raw["prompt"]
        if isinstance(prompt, str):
            return {"prompt": _text(prompt, where, "prompt")}
        if isinstance(prompt, list):
            return {"prompt": _messages(prompt, where, "prompt")}
        raise _wrong_type(where, "prompt", prompt, "a string or a list of messages")
    if "question" in raw:
        question = _text(raw["question"], where, "question")
        return {"prompt": [{"role": "user", "content": question}]}
    if "messages" in raw:
        messages = _messages(raw["messages"], where, "messages")
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise DataError(
                "messages has no turn before the final assistant turn",
                where=location(where, field="messages"),
                fix="start the conversation with a user (or system) message",
            )
        return {"prompt": messages}
    raise _no_format(raw, where, "prompt, question or messages")


# ------------------------------------------------------------------------------------------ references


def _reference(raw: dict, where: str, kind: str) -> str | None:
    for field in ("reference", "final_answer"):
        if raw.get(field) is not None:
            return _reference_value(raw[field], where, field)
    answer = raw.get("answer")
    if isinstance(answer, str) and ANSWER_MARKER in answer:
        return reference_from_solution(answer)
    if kind == "prompt" and answer is not None:
        return _reference_value(answer, where, "answer")
    return None


def _reference_value(value: Any, where: str, field: str) -> str:
    """A reference answer as text: strings are stripped, integers and integral floats written as integers."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _wrong_type(where, field, value, "a string or a number")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _wrong_type(where, field, value, "a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    return _text(value, where, field, empty_means="the reference answer is empty").strip()


# -------------------------------------------------------------------------------------------- messages


def _messages(value: Any, where: str, field: str) -> list[dict]:
    """Check a list of ``{"role", "content"}`` messages; other keys of a message are kept."""
    if not isinstance(value, list):
        raise _wrong_type(where, field, value, 'a list of {"role": ..., "content": ...} messages')
    if not value:
        raise DataError(
            f"{field} is an empty list of messages",
            where=location(where, field=field),
            fix="give at least one message",
        )
    messages = []
    for index, message in enumerate(value):
        here = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise _wrong_type(where, here, message, 'a message object {"role": ..., "content": ...}')
        role = _required(message, "role", where, parent=here)
        if not isinstance(role, str):
            raise _wrong_type(where, f"{here}.role", role, "a string")
        if role not in ROLES:
            raise DataError(
                f"unknown role {role!r}",
                where=location(where, field=f"{here}.role"),
                fix=f"use one of: {', '.join(ROLES)}",
            )
        content = _required(message, "content", where, parent=here)
        _text(content, where, f"{here}.content", allow_empty=True)
        messages.append(dict(message))
    return messages


def _require_assistant_turn(messages: list[dict], where: str, field: str) -> None:
    """At least one assistant turn, and no assistant turn without content."""
    assistant_turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    if not assistant_turns:
        raise DataError(
            f"{field} has no assistant message to train on",
            where=location(where, field=field),
            fix='add a message with "role": "assistant"',
        )
    for index in assistant_turns:
        if not messages[index]["content"].strip():
            raise DataError(
                "empty completion: the assistant message has no content",
                where=location(where, field=f"{field}[{index}].content"),
                fix="give the assistant message some text, or remove the record",
            )


def _no_shared_prompt(where: str, what: str, begin_with: str) -> DataError:
    return DataError(
        f"missing field 'prompt', and chosen and rejected share no {what} to take as the prompt",
        where=location(where, field="prompt"),
        fix=f"add 'prompt', or begin chosen and rejected with {begin_with}",
    )


# --------------------------------------------------------------------------------------------- helpers


def _required(container: dict, field: str, where: str, parent: str | None = None) -> Any:
    name = f"{parent}.{field}" if parent else field
    if field not in container or container[field] is None:
        raise DataError(
            f"missing field {name!r}",
            where=location(where, field=name),
            fix=f"add {name!r} to the record",
        )
    return container[field]


def _text(
    value: Any,
    where: str,
    field: str,
    *,
    allow_empty: bool = False,
    empty_means: str | None = None,
) -> str:
    """Check a text field: a string of valid Unicode, non-empty unless ``allow_empty``."""
    if not isinstance(value, str):
        raise _wrong_type(where, field, value, "a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DataError(
            f"text is not valid Unicode (unpaired surrogate at character {error.start})",
            where=location(where, field=field),
            fix="re-encode the text as UTF-8 without unpaired \\ud800-\\udfff escapes",
        ) from None
    if not allow_empty and not value.strip():
        raise DataError(
            empty_means or f"{field} is empty",
            where=location(where, field=field),
            fix=f"give {field} some text, or remove the record",
        )
    return value


def _wrong_type(where: str, field: str, value: Any, expected: str) -> DataError:
    return DataError(
        f"wrong type: expected {expected}, got {_type_name(value)}",
        where=location(where, field=field),
        fix=f"make {field!r} {expected}",
    )


def _no_format(raw: dict, where: str, expected: str) -> DataError:
    present = ", ".join(sorted(str(key) for key in raw)[:10]) or "no fields"
    return DataError(
        f"missing field: the record has none of {expected} (it has: {present})",
        where=location(where, field=expected.split(",")[0].split(" ")[0]),
        fix=f"give the record {expected}",
    )


def _type_name(value: Any) -> str:
    """The JSON name of a value's type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
