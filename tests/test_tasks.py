"""Synthetic arithmetic: determinism, correct answers, levels, disjoint splits, files and the registry."""

from __future__ import annotations

import operator
import re
from collections import Counter

import pytest

from posttrain.data import make_splits, make_task, make_task_file, read_records
from posttrain.errors import ConfigError

OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def records():
    return make_task("arithmetic", 600, seed=0)


def evaluate(ops: list) -> tuple[int, list[int]]:
    """Fold the program left to right; return the result and every intermediate value."""
    assert ops[0][0] == "start"
    value, values = ops[0][1], [ops[0][1]]
    for symbol, number in ops[1:]:
        value = OPERATORS[symbol](value, number)
        values.append(value)
    return value, values


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = make_task_file("arithmetic", 300, 7, tmp_path / "a.jsonl")
    second = make_task_file("arithmetic", 300, 7, tmp_path / "b.jsonl")
    other = make_task_file("arithmetic", 300, 8, tmp_path / "c.jsonl")
    assert first == tmp_path / "a.jsonl"
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_answers_are_correct_when_recomputed_from_the_numbers(records):
    for record in records:
        answer, values = evaluate(record["ops"])
        assert all(value >= 0 for value in values)
        assert record["reference"] == str(answer)
        assert record["answer"].endswith(f"\n#### {answer}")
        # the question states exactly the program's numbers, in order
        assert [int(n) for n in re.findall(r"\d+", record["question"])] == [n for _, n in record["ops"]]
        # every step of the written solution is true arithmetic, and the steps chain to the answer
        steps = [tuple(match) for match in STEP.findall(record["answer"])]
        assert len(steps) == len(record["ops"]) - 1
        for left, symbol, right, result in steps:
            assert OPERATORS[symbol](int(left), int(right)) == int(result)
        assert int(steps[-1][3]) == answer


def test_levels(records):
    counts = Counter(record["level"] for record in records)
    assert counts == {1: 200, 2: 200, 3: 200}
    for record in records:
        symbols = [symbol for symbol, _ in record["ops"][1:]]
        if record["level"] == 1:
            assert len(symbols) == 1 and symbols[0] in "+-"
        elif record["level"] == 2:
            assert len(symbols) == 2 and set(symbols) <= {"+", "-"}
        else:
            assert len(symbols) == 3 and symbols.count("*") == 1
        numbers = [n for _, n in record["ops"]]
        assert max(numbers) <= 20 and int(record["reference"]) <= 100


def test_level_option_and_wording_variety():
    only_easy = make_task("arithmetic", 50, seed=1, levels="1,2")
    assert {record["level"] for record in only_easy} == {1, 2}
    assert {record["level"] for record in make_task("arithmetic", 5, seed=1, levels=[3])} == {3}
    questions = [record["question"] for record in make_task("arithmetic", 300, seed=2)]
    assert len(set(questions)) == 300
    first_words = Counter(question.split()[0] for question in questions)
    assert len(first_words) >= 10  # many names / sentence openings, not one template
    verbs = {
        verb
        for verb in ("buys", "finds", "gives", "loses", "sells", "wins", "cuts")
        if any(verb in q for q in questions)
    }
    assert len(verbs) >= 6


def test_splits_never_share_a_question():
    train, held_out = make_splits("arithmetic", 800, 150, seed=0)
    assert len(train) == 800 and len(held_out) == 150
    assert not {r["question"] for r in train} & {r["question"] for r in held_out}
    # also across seeds: membership depends on the question alone
    other_held_out = make_task("arithmetic", 150, seed=5, split="held_out")
    assert not {r["question"] for r in train} & {r["question"] for r in other_held_out}


def test_file_reads_back_as_conversational_sft_records(tmp_path):
    path = make_task_file("arithmetic", 20, 0, tmp_path / "train.jsonl", levels="1")
    result = read_records(path)
    assert len(result) == 20 and result.skipped == 0
    first = result.records[0]
    assert first["prompt"][0]["role"] == "user" and first["completion"][0]["role"] == "assistant"
    assert first["reference"] == first["answer"].rsplit("#### ", 1)[1]
    assert first["_where"] == f"{path}:1"


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown task 'algebra'"):
        make_task("algebra", 1, 0)
    with pytest.raises(ConfigError, match="no option 'difficulty'"):
        make_task("arithmetic", 1, 0, difficulty=2)
    with pytest.raises(ConfigError, match="levels must be chosen from"):
        make_task("arithmetic", 1, 0, levels="1,4")
    with pytest.raises(ConfigError, match="comma-separated integers"):
        make_task("arithmetic", 1, 0, levels="one")
    with pytest.raises(ConfigError, match="unknown split"):
        make_task("arithmetic", 1, 0, split="test")
