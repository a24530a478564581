"""Reward registry: built-in rewards, weighting, error handling, custom files, data checks."""

from __future__ import annotations

import math
import random
import textwrap

import pytest
import torch
from pydantic import ValidationError

from posttrain.data import make_task, validate_records
from posttrain.errors import ConfigError, DataError, PosttrainError
from posttrain.rewards import (
    REWARDS,
    RewardError,
    RewardsConfig,
    RewardSpec,
    build_rewards,
    check_rewards_for_records,
    load_reward_function,
    register_reward,
)
from posttrain.rewards.builtin import format_reward, length_reward, math_reward


def rewards(*functions: dict, **settings) -> RewardsConfig:
    return RewardsConfig(functions=[RewardSpec(**spec) for spec in functions], **settings)


def score(config: RewardsConfig, completions: list[str], records: list[dict] | None = None):
    records = records or [{"reference": "8"} for _ in completions]
    return build_rewards(config).score(["prompt"] * len(completions), completions, records)


# ------------------------------------------------------------------------------------------ built-ins


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("3 + 5 = 8\n#### 8", "8", 1.0),
        ("3 + 5 = 9\n#### 9", "8", 0.0),
        ("so the answer is \\boxed{1/2}", "0.5", 1.0),
        ("the total is 1,234 apples", "#### 1234", 1.0),  # a full GSM8K-style solution as reference
        ("#### 18.0", "18", 1.0),
        ("I do not know", "8", 0.0),
        ("", "8", 0.0),
    ],
)
def test_math_reward(completion, reference, expected):
    assert math_reward("p", completion, {"reference": reference}) == expected


def test_math_reward_without_reference_raises_a_data_error():
    with pytest.raises(DataError, match="no reference answer"):
        math_reward("p", "#### 8", {"_where": "train.jsonl:4"})


def test_default_format_matches_the_task_solutions():
    solutions = [record["answer"] for record in make_task("arithmetic", 30, seed=1, levels=[1, 2, 3])]
    assert all(format_reward("p", solution, {}) == 1.0 for solution in solutions)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("3 + 5 = 8\n#### 8", 1.0),
        ("#### 8", 1.0),
        ("7 - 9 = -2\n#### -2\n", 1.0),  # a trailing newline is allowed
        ("#### 8\nand then some more text", 0.0),  # the mark must end the completion
        ("the answer is #### 8", 0.0),  # the mark must begin a line
        ("the answer is 8", 0.0),
        ("#### eight", 0.0),
        ("####8", 0.0),
    ],
)
def test_format_reward_default_pattern(completion, expected):
    assert format_reward("p", completion, {}) == expected


def test_format_reward_custom_pattern_spans_lines():
    spec = {"name": "format", "args": {"pattern": r"<think>.*</think>"}}
    batch = score(rewards(spec), ["<think>a\nb</think> 8", "<think> unclosed"])
    assert batch.components["format"] == [1.0, 0.0]


@pytest.mark.parametrize(
    "tokens, expected",
    [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0), (101, -1.0), (500, -1.0)],
)
def test_length_reward_dapo_equation_13(tokens, expected):
    record = {"completion_tokens": tokens}
    assert length_reward("p", "c", record, max_tokens=100, buffer=20) == pytest.approx(expected)


def test_length_reward_penalty_scales_and_zero_buffer_is_a_hard_limit():
    assert length_reward("p", "c", {"completion_tokens": 90}, max_tokens=100, buffer=20, penalty=0.5) == -0.25
    assert length_reward("p", "c", {"completion_tokens": 100}, max_tokens=100, buffer=0) == 0.0
    assert length_reward("p", "c", {"completion_tokens": 101}, max_tokens=100, buffer=0) == -1.0


def test_length_reward_matches_trl_soft_overlong_punishment():
    from trl.rewards import get_soft_overlong_punishment

    rng = random.Random(0)
    for _ in range(20):
        max_tokens = rng.randint(1, 300)
        buffer = rng.randint(1, max_tokens)
        lengths = [rng.randint(0, 2 * max_tokens) for _ in range(16)]
        expected = get_soft_overlong_punishment(max_tokens, buffer)([[0] * n for n in lengths])
        ours = [
            length_reward("p", "c", {"completion_tokens": n}, max_tokens=max_tokens, buffer=buffer)
            for n in lengths
        ]
        assert ours == pytest.approx(expected, abs=1e-12)


def test_length_reward_needs_completion_tokens_from_the_trainer():
    config = rewards({"name": "length", "args": {"max_tokens": 10, "buffer": 2}}, max_error_rate=1.0)
    batch = score(config, ["x", "y"], [{"completion_tokens": 9}, {}])
    assert batch.components["length"] == [-0.5, 0.0]
    assert batch.errors["length"] == 1
    assert "completion_tokens is None" in batch.error_examples["length"]


@pytest.mark.parametrize(
    "args, message",
    [
        ({"max_tokens": 10}, "missing a required argument: 'buffer'"),
        ({"max_tokens": 0, "buffer": 0}, "max_tokens must be an integer >= 1"),
        ({"max_tokens": 10, "buffer": 11}, r"buffer must be an integer in \[0, max_tokens = 10\]"),
        ({"max_tokens": 10, "buffer": 2, "penalty": -1}, "penalty must be a finite number >= 0"),
        ({"max_tokens": 10, "buffer": 2, "cache": 3}, "unexpected keyword argument 'cache'"),
    ],
)
def test_length_reward_argument_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        build_rewards(rewards({"name": "length", "args": args}))


def test_bad_format_pattern_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^rewards.functions\[0\].args: .* not a valid regular expression"):
        build_rewards(rewards({"name": "format", "args": {"pattern": "(unclosed"}}))


# ------------------------------------------------------------------------------------------- weights


def test_default_config_is_the_math_reward():
    config = RewardsConfig()
    assert [spec.name for spec in config.functions] == ["math"]
    assert (config.on_error, config.max_error_rate) == (0.0, 0.1)
    batch = score(config, ["#### 8", "#### 7"])
    assert batch.total.tolist() == [1.0, 0.0]


def test_weights_combine_into_the_total():
    config = rewards(
        {"name": "math", "weight": 1.0},
        {"name": "format", "weight": 0.5},
        {"name": "length", "weight": 2.0, "args": {"max_tokens": 10, "buffer": 4}},
    )
    completions = ["1 + 7 = 8\n#### 8", "the answer is 8", "#### 9"]
    records = [{"reference": "8", "completion_tokens": n} for n in (4, 8, 12)]
    batch = score(config, completions, records)
    assert batch.components == {
        "math": [1.0, 1.0, 0.0],
        "format": [1.0, 0.0, 1.0],
        "length": [0.0, -0.5, -1.0],
    }
    # 1 + 0.5 * 1 + 2 * 0 ; 1 + 0 + 2 * -0.5 ; 0 + 0.5 + 2 * -1
    assert batch.total.dtype == torch.float32
    assert batch.total.tolist() == [1.5, 0.0, -1.5]
    assert batch.errors == {"math": 0, "format": 0, "length": 0}
    assert batch.error_rate == 0.0
    assert batch.metrics()["reward/math"] == pytest.approx(2 / 3)


def test_the_same_reward_twice_gets_distinct_labels():
    config = rewards({"name": "format"}, {"name": "format", "args": {"pattern": "apples"}})
    batch = score(config, ["3 apples\n#### 3"])
    assert batch.components == {"format": [1.0], "format_2": [1.0]}


# -------------------------------------------------------------------------------------------- errors


def test_a_raising_function_is_counted_and_scored_on_error(registered):
    def flaky(prompt, completion, record):
        if completion == "boom":
            raise ZeroDivisionError("division by zero\nsecond line")
        return 1.0

    name = registered("test_flaky", flaky)
    config = rewards({"name": name, "weight": 2.0}, on_error=-0.5, max_error_rate=0.5)
    batch = score(config, ["ok", "boom", "ok", "ok"])
    assert batch.components[name] == [1.0, -0.5, 1.0, 1.0]
    assert batch.total.tolist() == [2.0, -1.0, 2.0, 2.0]
    assert batch.errors == {name: 1}
    assert batch.error_examples == {name: "sample 1: raised ZeroDivisionError: division by zero"}
    assert batch.error_rate == 0.25
    assert batch.metrics()[f"reward/{name}/errors"] == 1.0


@pytest.mark.parametrize(
    "value, problem",
    [
        (math.nan, "returned nan, not a finite number"),
        (math.inf, "returned inf, not a finite number"),
        ("1.0", "returned str '1.0', not a real number"),
        (None, "returned NoneType None, not a real number"),
        (torch.tensor(1.0), "returned Tensor tensor(1.), not a real number"),
    ],
)
def test_non_numbers_are_counted_as_errors(registered, value, problem):
    name = registered("test_bad_value", lambda prompt, completion, record: value)
    batch = score(rewards({"name": name}, max_error_rate=1.0), ["a", "b"])
    assert batch.errors == {name: 2}
    assert batch.components[name] == [0.0, 0.0]
    assert batch.error_examples[name] == f"sample 0: {problem}"


def test_bools_and_integers_are_numbers(registered):
    name = registered("test_bool", lambda prompt, completion, record: completion == "yes")
    other = registered("test_int", lambda prompt, completion, record: 3)
    batch = score(rewards({"name": name}, {"name": other}), ["yes", "no"])
    assert batch.components == {name: [1.0, 0.0], other: [3.0, 3.0]}
    assert batch.total.tolist() == [4.0, 3.0]
    assert batch.errors == {name: 0, other: 0}


def test_error_rate_above_the_limit_stops_scoring_with_a_clear_message(registered):
    def broken(prompt, completion, record):
        return record["score"]

    name = registered("test_broken", broken)
    config = rewards({"name": "math"}, {"name": name}, max_error_rate=0.25)
    records = [{"reference": "8", "score": 1.0}] * 2 + [{"reference": "8"}] * 2
    with pytest.raises(RewardError) as caught:
        score(config, ["#### 8"] * 4, records)
    message = str(caught.value)
    assert "failed on 50% of 4 samples, above rewards.max_error_rate = 0.25" in message
    assert f"'{name}' failed on 2 (first: sample 2: raised KeyError: 'score')" in message
    assert "'math'" not in message  # only the failing function is named
    assert "How to fix: fix the reward function" in message
    assert isinstance(caught.value, PosttrainError)


def test_error_rate_at_the_limit_is_tolerated(registered):
    name = registered("test_half", lambda prompt, completion, record: 1 / int(completion))
    batch = score(rewards({"name": name}, max_error_rate=0.5), ["1", "0"])
    assert batch.error_rate == 0.5
    assert batch.components[name] == [1.0, 0.0]


def test_samples_failing_in_several_functions_count_once(registered):
    first = registered("test_first", lambda prompt, completion, record: 1 / int(completion))
    second = registered("test_second", lambda prompt, completion, record: 2 / int(completion))
    batch = score(rewards({"name": first}, {"name": second}, max_error_rate=0.5), ["1", "0"])
    assert batch.errors == {first: 1, second: 1}
    assert batch.error_rate == 0.5


def test_mismatched_batch_lengths_are_rejected():
    with pytest.raises(ValueError, match="one prompt and one record per completion"):
        build_rewards(RewardsConfig()).score(["p"], ["a", "b"], [{}, {}])


# -------------------------------------------------------------------------------------------- config


def test_unknown_reward_name_lists_the_known_names():
    with pytest.raises(ConfigError) as caught:
        build_rewards(rewards({"name": "math"}, {"name": "maths"}))
    message = str(caught.value)
    assert message.startswith("rewards.functions[1].name: unknown reward 'maths'")
    assert ("use one of: critique_similarity, format, j1_consistency, j1_pointwise, j1_verdict, judge, length, "
            "likelihood, math, metarm, s2j, verdict,") in message


@pytest.mark.parametrize(
    "spec, message",
    [
        ({}, "exactly one of `name`"),
        ({"name": "math", "path": "r.py:f"}, "exactly one of `name`"),
        ({"path": "rewards.py"}, "FILE.py:FUNCTION"),
        ({"path": "rewards.txt:score"}, "FILE.py:FUNCTION"),
        ({"name": "math", "weight": math.nan}, "finite number"),
        ({"name": "math", "scale": 2}, "Extra inputs are not permitted"),
    ],
)
def test_reward_spec_validation(spec, message):
    with pytest.raises(ValidationError, match=message):
        RewardSpec(**spec)


def test_rewards_config_validation():
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        RewardsConfig(max_error_rate=1.5)
    with pytest.raises(ValidationError, match="finite number"):
        RewardsConfig(on_error=math.nan)
    with pytest.raises(ValidationError, match="at least 1 item"):
        RewardsConfig(functions=[])


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ConfigError, match="a reward named 'math' is already registered"):
        register_reward("math")(lambda prompt, completion, record: 0.0)
    assert REWARDS["math"].fn is math_reward


# ------------------------------------------------------------------------------------------ custom


def write(path, source: str):
    path.write_text(textwrap.dedent(source))
    return path


def test_custom_reward_file_is_loaded_with_args_and_weight(tmp_path):
    write(
        tmp_path / "my_rewards.py",
        """
        from dataclasses import dataclass

        @dataclass
        class Unused:  # dataclasses need the module registered while it runs
            x: int = 0

        def contains(prompt, completion, record, word="apple"):
            return float(word in completion)
        """,
    )
    config = rewards({"path": "my_rewards.py:contains", "weight": 3.0, "args": {"word": "pear"}})
    reward_set = build_rewards(config, base_dir=tmp_path)
    assert reward_set.labels == ["contains"]
    batch = reward_set.score(["p", "p"], ["a pear", "an apple"], [{}, {}])
    assert batch.components == {"contains": [1.0, 0.0]}
    assert batch.total.tolist() == [3.0, 0.0]


def test_custom_reward_absolute_path(tmp_path):
    file = write(tmp_path / "r.py", "def one(prompt, completion, record):\n    return 1\n")
    fn = load_reward_function(f"{file}:one")
    assert fn("p", "c", {}) == 1


def test_custom_reward_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"reward file .*nothere\.py does not exist") as caught:
        build_rewards(rewards({"path": "nothere.py:score"}), base_dir=tmp_path)
    assert str(caught.value).startswith("rewards.functions[0]: ")


def test_custom_reward_missing_function_lists_the_file_functions(tmp_path):
    write(
        tmp_path / "r.py",
        """
        import os

        def helper(x):
            return x

        def score_answer(prompt, completion, record):
            return 0.0
        """,
    )
    with pytest.raises(ConfigError) as caught:
        build_rewards(rewards({"path": "r.py:score"}), base_dir=tmp_path)
    message = str(caught.value)
    assert "r.py defines no 'score'" in message
    assert "def score(prompt, completion, record)" in message
    assert "name one of its functions: helper, score_answer" in message


def test_custom_reward_not_callable(tmp_path):
    write(tmp_path / "r.py", "score = 3\n")
    with pytest.raises(ConfigError, match=r"r\.py:score is a int, not a function"):
        build_rewards(rewards({"path": "r.py:score"}), base_dir=tmp_path)


def test_custom_reward_file_that_fails_to_run(tmp_path):
    write(tmp_path / "r.py", "import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match="running reward file .*r.py failed: ModuleNotFoundError"):
        build_rewards(rewards({"path": "r.py:score"}), base_dir=tmp_path)


def test_custom_reward_with_the_wrong_signature(tmp_path):
    write(tmp_path / "r.py", "def score(completion):\n    return 1.0\n")
    with pytest.raises(ConfigError) as caught:
        build_rewards(rewards({"path": "r.py:score"}), base_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith("rewards.functions[0].args: reward function r.py:score cannot be called")
    assert "its parameters are score(completion); give args among: none" in message


# -------------------------------------------------------------------------------------- data checks


def test_records_without_reference_under_math_name_the_first_record(tmp_path):
    raw = [{"prompt": "2 + 2?", "reference": "4"}, {"prompt": "no answer here"}, {"prompt": "nor here"}]
    records = validate_records(raw, kind="prompt", source=str(tmp_path / "train.jsonl")).records
    with pytest.raises(DataError) as caught:
        check_rewards_for_records(build_rewards(RewardsConfig()), records, "train.jsonl")
    message = str(caught.value)
    where = records[1]["_where"]
    assert message.startswith(f"{where}:reference: 2 of 3 records of train.jsonl have no 'reference'")
    assert "which the 'math' reward needs" in message
    assert "GSM8K-style `answer`" in message and "or remove the 'math' reward" in message


def test_records_without_location_are_named_by_index():
    records = [{"prompt": "a", "reference": "1"}, {"prompt": "b", "reference": "  "}]
    with pytest.raises(DataError, match=r"^task:x:\[1\]:reference: 1 of 2 records"):
        check_rewards_for_records(build_rewards(RewardsConfig()), records, "task:x")


def test_records_check_passes_for_task_data_and_for_rewards_that_need_no_reference():
    records = validate_records(make_task("arithmetic", 5, seed=0), kind="prompt", source="task").records
    check_rewards_for_records(build_rewards(RewardsConfig()), records, "task")
    check_rewards_for_records(build_rewards(rewards({"name": "format"})), [{"prompt": "x"}], "data")
