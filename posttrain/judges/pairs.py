"""Preference pairs as a judge reads them, and one pair judged in both orders.

A pair is a preference record (``prompt``, ``chosen``, ``rejected``: text or messages, as
:mod:`posttrain.data.records` reads them; a file may leave the prompt implicit in ``chosen`` and ``rejected``). :func:`pair_texts` gives the texts a judge reads;
:func:`preference_pairs` reads pairs from a file or makes synthetic ones (``task:arithmetic``, the
``judge_arithmetic`` task of :mod:`posttrain.data.tasks.judge_pairs`).

Both orders (RISE-Judge §3.2 and J1's consistency reward): each pair is judged with the chosen answer as
A (order ``first``, right verdict ``A``) and again as B (order ``swapped``, right verdict ``B``). A pair is
consistently correct when both verdicts are right; it is a position flip when both verdicts name the same
position, so the preferred content changed with the order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.data import TASK_PREFIX, source_records
from posttrain.errors import ConfigError, DataError, location
from posttrain.judges.formats import JudgeTemplate, get_template

RIGHT_VERDICT = {"first": "A", "swapped": "B"}


def conversation_text(value: str | list[dict]) -> str:
    """Text a judge reads: a string as is, one message's content, or several as ``Role: content`` blocks."""
    if isinstance(value, str):
        return value
    if len(value) == 1:
        return str(value[0]["content"])
    return "\n\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in value)


def pair_texts(pair: dict, index: int) -> tuple[str, str, str]:
    """``(question, chosen, rejected)`` texts of one pair; raises :class:`DataError` for an empty response
    or a pair whose two responses are the same (no right answer to find)."""
    where = pair.get("_where") or f"pair {index}"
    try:
        question, chosen, rejected = (
            conversation_text(pair[key]) for key in ("prompt", "chosen", "rejected")
        )
    except (KeyError, TypeError, IndexError):
        raise DataError(
            "not a preference pair",
            where=where,
            fix="give `prompt`, `chosen` and `rejected` (text or messages)",
        ) from None
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise DataError(
                f"the {name} response is empty", where=location(where, field=name), fix="drop or fix the pair"
            )
    if chosen == rejected:
        raise DataError(
            "chosen and rejected are the same response, so no judge can be right or wrong on this pair",
            where=where,
            fix="drop the pair from the preference file",
        )
    return question, chosen, rejected


def length_side(chosen: str, rejected: str) -> str:
    """``chosen_longer``, ``chosen_shorter`` or ``same_length``, by characters."""
    if len(chosen) == len(rejected):
        return "same_length"
    return "chosen_longer" if len(chosen) > len(rejected) else "chosen_shorter"


def preference_pairs(data: str, n: int | None = None, seed: int = 0, split: str = "held_out") -> list[dict]:
    """Preference records from a file (any format :func:`posttrain.data.read_records` reads) or
    ``task:arithmetic`` (synthetic pairs of ``split``, :mod:`posttrain.data.tasks.judge_pairs`: held-out
    ones for evaluation, training ones for making training data); ``task:arithmetic:1`` (or ``:1,2``) restricts
    the pairs to those difficulty levels (default 1 and 2)."""
    if data.startswith(TASK_PREFIX):
        task, _, levels = data[len(TASK_PREFIX) :].partition(":")
        if task != "arithmetic" or not all(level.strip().isdigit() for level in levels.split(",") if levels):
            raise ConfigError(
                f"there are no synthetic preference pairs for {data!r}",
                where="--data",
                fix="use task:arithmetic (or task:arithmetic:1 for level-1 pairs only), or a preference file "
                "(prompt, chosen, rejected)",
            )
        options = {"levels": [int(level) for level in levels.split(",")]} if levels else {}
        records = source_records("task:judge_arithmetic", "preference", n, seed, split, **options)
    else:
        records = source_records(data, "preference", n)
    if not records:
        raise DataError("there are no preference pairs to judge", where=data, fix="give at least one pair")
    return records


# ----------------------------------------------------------------------------------------- both orders


def pairwise_prompts(
    question: str, chosen: str, rejected: str, template: str | JudgeTemplate = "rise"
) -> tuple[list[dict], list[dict]]:
    """The judge prompts of one pair in both orders: (chosen as A, rejected as B), then swapped.

    The correct verdicts are ``"A"`` for the first prompt and ``"B"`` for the second.
    """
    template = get_template(template)
    if template.kind != "pairwise":
        raise ConfigError(
            f"judge template {template.name!r} is {template.kind}, but judging a pair needs a pairwise one",
            fix="use a pairwise template: 'rise', 'j1' or your own with {question}, {answer_a}, {answer_b}",
        )
    return template.render(question, chosen, rejected), template.render(question, rejected, chosen)


@dataclass(frozen=True)
class BothOrders:
    """The judgments of one pair in both orders and what they mean.

    ``verdict_first`` was given with the chosen answer as A (right: ``"A"``), ``verdict_swapped`` with it
    as B (right: ``"B"``); None is a format failure. ``consistent_correct``: both right. ``flipped``: both
    parsed and name the same position, so the preferred content changed with the order.
    ``format_failure``: at least one verdict is None.
    """

    verdict_first: str | None
    verdict_swapped: str | None
    correct_first: bool
    correct_swapped: bool
    consistent_correct: bool
    flipped: bool
    format_failure: bool


def score_both_orders(verdict_first: str | None, verdict_swapped: str | None) -> BothOrders:
    """Score the parsed verdicts of one pair judged in both orders (see :class:`BothOrders`)."""
    for verdict in (verdict_first, verdict_swapped):
        if verdict not in ("A", "B", None):
            raise ValueError(f"a pairwise verdict is 'A', 'B' or None (format failure), got {verdict!r}")
    correct_first, correct_swapped = verdict_first == "A", verdict_swapped == "B"
    format_failure = verdict_first is None or verdict_swapped is None
    return BothOrders(
        verdict_first=verdict_first,
        verdict_swapped=verdict_swapped,
        correct_first=correct_first,
        correct_swapped=correct_swapped,
        consistent_correct=correct_first and correct_swapped,
        flipped=not format_failure and verdict_first == verdict_swapped,
        format_failure=format_failure,
    )


def aggregate(records: Sequence[BothOrders]) -> dict[str, float]:
    """Judge metrics over pairs judged in both orders (methods §8.2), each a fraction of all pairs:

    * ``accuracy_first`` / ``accuracy_swapped``: single-order accuracy with the chosen answer as A / as B;
    * ``accuracy``: their mean (single-order accuracy over all 2n judgments);
    * ``consistent_accuracy``: both orders right;
    * ``position_flip_rate``: both verdicts parsed and naming the same position;
    * ``format_failure_rate``: judgments without a verdict, a fraction of the 2n judgments;
    * ``pairs``: n.

    A format failure counts as wrong in every accuracy; it is never replaced by a default verdict.
    """
    n = len(records)
    if n == 0:
        raise DataError(
            "there are no judged pairs to aggregate", fix="judge at least one pair in both orders"
        )
    accuracy_first = sum(record.correct_first for record in records) / n
    accuracy_swapped = sum(record.correct_swapped for record in records) / n
    failures = sum((record.verdict_first is None) + (record.verdict_swapped is None) for record in records)
    return {
        "pairs": n,
        "accuracy_first": accuracy_first,
        "accuracy_swapped": accuracy_swapped,
        "accuracy": (accuracy_first + accuracy_swapped) / 2,
        "consistent_accuracy": sum(record.consistent_correct for record in records) / n,
        "position_flip_rate": sum(record.flipped for record in records) / n,
        "format_failure_rate": failures / (2 * n),
    }
