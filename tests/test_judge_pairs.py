"""Synthetic judge pairs: one injected error, consistent propagation, critiques and determinism."""

from __future__ import annotations

import operator
import random
import re
from collections import Counter

import pytest

from posttrain.data.records import normalize_record
from posttrain.data.tasks.arithmetic import make_records
from posttrain.data.tasks.judge_pairs import corrupt_solution, make_preference_pairs
from posttrain.errors import DataError
from posttrain.judges.pairs import pairwise_prompts

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
CALCULATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.$")
STEP_CRITIQUE = re.compile(
    r"^Step (\d+) is wrong: (\d+) ([-+*]) (\d+) is (\d+), not (\d+); the final answer should be (\d+)\.$"
)
FINAL_CRITIQUE = re.compile(r"the last step gives (\d+), so the final answer should be (\d+), not (\d+)\.$")


@pytest.fixture(scope="module")
def records():
    return make_records(120, seed=3, levels=(1, 2, 3))


def calculations(solution: str) -> list[tuple[int, str, int, int]]:
    """(left, op, right, result) of every calculation line, in order."""
    found = [CALCULATION.search(line) for line in solution.split("\n")]
    return [(int(m[1]), m[2], int(m[3]), int(m[4])) for m in found if m]


def final_answer(solution: str) -> int:
    last = solution.split("\n")[-1]
    assert last.startswith("#### ")
    return int(last[5:])


def test_step_errors_are_one_false_calculation_carried_through(records):
    for seed in range(300):
        record = records[seed % len(records)]
        rejected, critique, kind = corrupt_solution(record, random.Random(seed), kind="step")
        assert kind == "step"
        steps = calculations(rejected)
        original = calculations(record["answer"])
        assert len(steps) == len(original)
        false = [
            i for i, (left, op, right, result) in enumerate(steps) if OPERATORS[op](left, right) != result
        ]
        assert len(false) == 1, rejected  # exactly one wrong step
        (wrong,) = false
        assert steps[:wrong] == original[:wrong]  # nothing before it changed
        for previous, current in zip(steps, steps[1:], strict=False):
            assert current[0] == previous[3]  # later steps start from the (wrong) value before them
        assert all(value >= 0 for step in steps for value in (step[0], step[3]))
        assert final_answer(rejected) == steps[-1][3] != int(record["reference"])
        # the non-calculation lines (the start, the wording) are untouched
        strip = re.compile(r"\d+ [-+*] \d+ = \d+\.$|^#### \d+$")
        assert [strip.sub("", line) for line in rejected.split("\n")] == [
            strip.sub("", line) for line in record["answer"].split("\n")
        ]
        # the critique names that step, its true and its written result, and the right final answer
        match = STEP_CRITIQUE.match(critique)
        assert match, critique
        left, op, right, result = original[wrong]
        assert int(match[1]) == wrong + 1
        assert (int(match[2]), match[3], int(match[4])) == steps[wrong][:3] == (left, op, right)
        assert int(match[5]) == result and int(match[6]) == steps[wrong][3]
        assert match[7] == record["reference"]


def test_final_errors_change_only_the_final_answer(records):
    for seed in range(300):
        record = records[seed % len(records)]
        rejected, critique, kind = corrupt_solution(record, random.Random(seed), kind="final")
        assert kind == "final"
        assert rejected.split("\n")[:-1] == record["answer"].split("\n")[:-1]
        wrong = final_answer(rejected)
        assert wrong != int(record["reference"]) and wrong >= 0
        match = FINAL_CRITIQUE.search(critique)
        assert match, critique
        assert match[1] == match[2] == record["reference"] and int(match[3]) == wrong


def test_error_kind_is_drawn_from_the_rng_with_both_kinds_common(records):
    kinds = Counter(corrupt_solution(records[0], random.Random(seed))[2] for seed in range(400))
    assert set(kinds) == {"step", "final"}
    assert 150 < kinds["step"] < 250
    same = [corrupt_solution(records[5], random.Random(11)) for _ in range(2)]
    assert same[0] == same[1]


def test_non_arithmetic_records_are_refused(records):
    bad = dict(records[0], answer=records[0]["answer"].replace("#### ", "The answer is "))
    with pytest.raises(DataError, match="not an arithmetic-task solution"):
        corrupt_solution(bad, random.Random(0))
    lines = records[0]["answer"].split("\n")
    calculation = next(i for i, line in enumerate(lines) if CALCULATION.search(line))
    lines[calculation] = re.sub(r"= (\d+)\.$", lambda m: f"= {int(m[1]) + 1}.", lines[calculation])
    with pytest.raises(DataError, match="calculation 1 .* is false"):
        corrupt_solution(dict(records[0], answer="\n".join(lines)), random.Random(0))
    with pytest.raises(DataError, match="no `answer`"):
        corrupt_solution({"question": "q"}, random.Random(0))


def test_make_preference_pairs():
    pairs = make_preference_pairs(200, seed=4)
    assert pairs == make_preference_pairs(200, seed=4)
    assert pairs != make_preference_pairs(200, seed=5)
    assert {pair["level"] for pair in pairs} == {1, 2}
    assert Counter(pair["subset"] for pair in pairs).keys() == {"arithmetic-step", "arithmetic-final"}
    for pair in pairs:
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert pair["prompt"] == [{"role": "user", "content": pair["question"]}]
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
        assert chosen != rejected
        assert final_answer(chosen) == int(pair["reference"]) != final_answer(rejected)
        assert pair["subset"] == f"arithmetic-{pair['error_kind']}"
        assert f"the final answer should be {pair['reference']}" in pair["critique"]
        # a valid conversational preference record for posttrain's readers
        normalized = normalize_record(pair, "preference", "pairs:1")
        assert normalized["chosen"] == pair["chosen"] and normalized["prompt"] == pair["prompt"]
    # the judge sees the pair in both orders
    first, swapped = pairwise_prompts(
        pairs[0]["question"],
        chosen=pairs[0]["chosen"][0]["content"],
        rejected=pairs[0]["rejected"][0]["content"],
    )
    content = first[0]["content"]
    assert content.index(pairs[0]["chosen"][0]["content"]) < content.index(pairs[0]["rejected"][0]["content"])


def test_levels_and_splits_are_passed_to_the_task():
    pairs = make_preference_pairs(30, seed=0, levels=(3,), split="held_out")
    assert {pair["level"] for pair in pairs} == {3}
    held_out = {record["question"] for record in make_records(30, 0, (3,), "held_out")}
    assert {pair["question"] for pair in pairs} == held_out
