"""The ``judge_arithmetic`` task: synthetic labelled preference pairs from the arithmetic task, a correct
solution against one with a single injected error, with a critique that names the error.

The arithmetic task's solutions (:mod:`posttrain.data.tasks.arithmetic`) are one line a step, each
calculation written ``... a op b = c.``, chained (each calculation after the first starts from the result
of the one before), and end with ``#### N``. Two kinds of error are injected:

``step``
    calculation ``k`` (counted from 1 over the calculation lines only) gets a wrong result ``c + d``
    (``d`` ≠ 0); every later calculation starts from the wrong value and is itself computed right, and
    the final answer is the last result, so calculation ``k`` is the only false line.
``final``
    every calculation is right, but the ``#### N`` line states ``N + d`` instead of ``N``.

``d`` is drawn from :data:`ERROR_SIZES`, keeping every value non-negative (the task's quantities are
counts), and the wrong final answer always differs from the reference. The critique reads, e.g.,
``Step 2 is wrong: 8 - 3 is 5, not 6; the final answer should be 5.``

This is the MATH half of J1's training data in miniature (rejected = a wrong solution; Whitehouse et al.
2025, arXiv 2505.10320) with RM-NLHF-style critiques attached.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Iterable

from posttrain.errors import DataError

from .arithmetic import make_records

ERROR_KINDS = ("step", "final")
ERROR_SIZES = (-10, -3, -2, -1, 1, 2, 3, 10)
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
CALCULATION = re.compile(r"^(?P<head>.*?)(?P<left>\d+) (?P<op>[-+*]) (?P<right>\d+) = (?P<result>\d+)\.$")
FINAL_LINE = re.compile(r"^#### (?P<answer>\d+)$")


def corrupt_solution(record: dict, rng: random.Random, kind: str | None = None) -> tuple[str, str, str]:
    """Inject one error into ``record["answer"]``: returns ``(rejected_text, critique, kind)``.

    ``kind`` is ``"step"`` or ``"final"`` (see the module docstring), drawn with equal odds from ``rng``
    when not given. Raises :class:`DataError` when the record is not a solution of the arithmetic task.
    """
    lines, calculations = _parse_solution(record)
    if kind is None:
        kind = rng.choice(ERROR_KINDS)
    if kind not in ERROR_KINDS:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {', '.join(ERROR_KINDS)}")
    reference = int(record["reference"])
    if kind == "final":
        wrong = reference + rng.choice([size for size in ERROR_SIZES if reference + size >= 0])
        rejected = [*lines[:-1], f"#### {wrong}"]
        critique = (
            f"Every calculation is right, but the final answer is wrong: the last step gives {reference}, "
            f"so the final answer should be {reference}, not {wrong}."
        )
        return "\n".join(rejected), critique, kind
    step = rng.randrange(len(calculations))
    sizes = [size for size in ERROR_SIZES if _propagate(calculations, step, size) is not None]
    size = rng.choice(sizes)
    new_lines = _propagate(calculations, step, size)
    rejected = list(lines)
    for (index, _), line in zip(calculations, new_lines, strict=True):
        rejected[index] = line
    wrong_final = int(CALCULATION.match(new_lines[-1])["result"])
    rejected[-1] = f"#### {wrong_final}"
    wrong_step = calculations[step][1]
    critique = (
        f"Step {step + 1} is wrong: {wrong_step['left']} {wrong_step['op']} {wrong_step['right']} is "
        f"{wrong_step['result']}, not {int(wrong_step['result']) + size}; "
        f"the final answer should be {reference}."
    )
    return "\n".join(rejected), critique, kind


def make_preference_pairs(
    n: int, seed: int, levels: str | Iterable[int] = (1, 2), split: str = "train"
) -> list[dict]:
    """``n`` labelled pairs from ``n`` distinct arithmetic problems of ``split``; the same arguments give
    the same pairs.

    Each pair is a conversational preference record (TRL's format, as :mod:`posttrain.data.records` reads
    it): ``prompt`` (the user turn with the question), ``chosen`` (the correct solution) and ``rejected``
    (one error, :func:`corrupt_solution`) as assistant turns, plus ``critique``, ``error_kind``
    (``step``/``final``), ``subset`` (``arithmetic-step``/``arithmetic-final``), ``reference``, ``question``
    (the plain text, for judge prompts) and ``level``.
    """
    rng = random.Random(f"judge-pairs:{seed}:{split}")
    pairs = []
    for record in make_records(n, seed, levels, split):
        rejected, critique, kind = corrupt_solution(record, rng)
        pairs.append(
            {
                "prompt": [{"role": "user", "content": record["question"]}],
                "chosen": [{"role": "assistant", "content": record["answer"]}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "critique": critique,
                "error_kind": kind,
                "subset": f"arithmetic-{kind}",
                "reference": record["reference"],
                "question": record["question"],
                "level": record["level"],
            }
        )
    return pairs


def _parse_solution(record: dict) -> tuple[list[str], list[tuple[int, re.Match]]]:
    """The solution's lines and its calculations as ``(line index, match)``, after checking that every
    calculation is true, chained to the one before, and that the last line is ``#### <last result>``."""
    fix = "corrupt_solution takes records of the arithmetic task (posttrain.data.tasks.arithmetic)"
    answer, reference = record.get("answer"), record.get("reference")
    if not isinstance(answer, str) or not isinstance(reference, str):
        raise DataError(
            "the record has no `answer` and `reference` text", where=record.get("_where"), fix=fix
        )
    lines = answer.split("\n")
    calculations = [(index, match) for index, line in enumerate(lines) if (match := CALCULATION.match(line))]
    final = FINAL_LINE.match(lines[-1])
    problem = None
    if not calculations or final is None:
        problem = "the solution has no calculation lines ending in `a op b = c.` or no final `#### N` line"
    else:
        previous = None
        for number, (_, match) in enumerate(calculations, 1):
            left, right, result = int(match["left"]), int(match["right"]), int(match["result"])
            if OPERATORS[match["op"]](left, right) != result:
                problem = f"calculation {number} ({match.group(0)!r}) is false"
            elif previous is not None and left != previous:
                problem = f"calculation {number} does not start from the previous result {previous}"
            previous = result
        if problem is None and not (int(final["answer"]) == previous == int(reference)):
            problem = (
                f"the final answer {final['answer']} is not the last result {previous} and the reference"
            )
    if problem:
        raise DataError(f"not an arithmetic-task solution: {problem}", where=record.get("_where"), fix=fix)
    return lines, calculations


def _propagate(calculations: list[tuple[int, re.Match]], step: int, size: int) -> list[str] | None:
    """The calculation lines with ``size`` added to the result of calculation ``step`` and carried through
    the later ones (computed right from the wrong value); None when a value would go negative or the final
    result would not change."""
    lines, carried = [], None
    for number, (_, match) in enumerate(calculations):
        left, op, right = int(match["left"]), match["op"], int(match["right"])
        if number > step:
            left = carried
        result = OPERATORS[op](left, right) + (size if number == step else 0)
        if result < 0:
            return None
        lines.append(f"{match['head']}{left} {op} {right} = {result}.")
        carried = result
    if carried == int(calculations[-1][1]["result"]):
        return None
    return lines
