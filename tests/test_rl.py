"""The RL trainer (GRPO family and LaSeR) on the tiny random model: whole runs.

What is logged, that a custom reward is learned, that a killed run resumes exactly, and the bad inputs of
the RL issue. Direct calls of the loss are in ``test_rl_losses.py``.
"""

import json
import math
import signal
import statistics
import subprocess
import time

import pytest
import torch

from posttrain.data import encode_prompt
from posttrain.errors import ConfigError, DataError, ModelError, PosttrainError
from posttrain.models import tiny_tokenizer
from posttrain.ops import (
    group_advantages,
)
from posttrain.trainers.checkpoint import list_checkpoints
from posttrain.trainers.run import train
from tests.helpers import posttrain_command, read_jsonl, train_steps
from tests.rl_helpers import (
    PROMPTS,
    G,
    reward,
    rewards_override,
    rl_config,
    rl_overrides,
)


def test_a_run_logs_rewards_entropy_clipping_kl_and_writes_g_samples_per_prompt(tmp_path):
    config = rl_config(tmp_path, "run", "rl.beta=0.05", rewards_override(tmp_path, "lower", "even:0.5"))
    run_dir = train(config).run_dir
    metrics, samples = train_steps(run_dir), read_jsonl(run_dir / "samples.jsonl")
    assert sorted(metrics) == [1, 2, 3]
    prompt_tokens = len(encode_prompt({"prompt": PROMPTS[0]}, tiny_tokenizer()))
    for step, logged in metrics.items():
        rows = [row for row in samples if row["step"] == step]
        records = {row["record"] for row in rows}
        assert len(rows) == 2 * G and len(records) == 2
        for record in records:
            group = [row for row in rows if row["record"] == record]
            assert sorted(row["sample"] for row in group) == list(range(G))
            advantages = group_advantages(torch.tensor([row["reward"] for row in group]), G)
            torch.testing.assert_close(torch.tensor([row["advantage"] for row in group]), advantages)
        for row in rows:
            lower, even = reward("lower", row["completion"]), reward("even", row["completion"])
            assert row["reward_lower"] == pytest.approx(lower) and row["reward_even"] == even
            assert row["reward"] == pytest.approx(lower + 0.5 * even, abs=1e-6)
        totals = [row["reward"] for row in rows]
        assert logged["reward"] == pytest.approx(statistics.fmean(totals), abs=1e-6)
        assert logged["reward_std"] == pytest.approx(statistics.pstdev(totals), abs=1e-5)
        for key in ("reward_lower", "reward_even"):
            assert logged[key] == pytest.approx(statistics.fmean(row[key] for row in rows))
        assert logged["completion_length"] == pytest.approx(statistics.fmean(row["tokens"] for row in rows))
        truncated = statistics.fmean(row["finish_reason"] == "length" for row in rows)
        assert logged["truncated_fraction"] == pytest.approx(truncated)
        assert logged["tokens"] == sum(prompt_tokens + row["tokens"] for row in rows)
        # a random model is near uniform over the vocabulary: the entropy is close to its maximum
        assert 4.0 < logged["entropy"] <= math.log(len(tiny_tokenizer())) + 1e-4
        assert logged["clip_fraction"] == 0.0  # one update per batch: on-policy, every ratio is 1
        assert math.isfinite(logged["loss"]) and logged["grad_norm"] > 0
    assert metrics[1]["kl"] == pytest.approx(0.0, abs=1e-7)  # the reference is the initial policy
    assert metrics[3]["kl"] > 1e-6


def test_the_policy_learns_a_custom_reward(tmp_path):
    config = rl_config(
        tmp_path, "learn", "train.max_steps=20", "rollout.prompts_per_step=4", "rollout.max_new_tokens=12"
    )
    rewards = [m["reward"] for _, m in sorted(train_steps(train(config).run_dir).items())]
    assert statistics.fmean(rewards[-5:]) > statistics.fmean(rewards[:5]) + 0.2, rewards


# -------------------------------------------------------------------------------- direct method calls


def last_sampled_step(path) -> int:
    """The step of the last complete line of a samples file (0 when there is none yet)."""
    last = 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            last = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError):
            break  # a line still being written
    return last


def wait_until(condition, process, timeout=180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {process.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("the run did not get there in time")


def test_rl_resume_after_sigkill_continues_exactly(tmp_path):
    steps, kill_after = 30, 10
    settings = [f"train.max_steps={steps}", "train.save_every=5", "rl.beta=0.05", "rl.updates_per_step=2"]
    command = posttrain_command("train", "-", *rl_overrides(tmp_path, "whole", *settings))
    whole = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    args = posttrain_command("train", "-", *rl_overrides(tmp_path, "killed", *settings))
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = tmp_path / "killed"
    # kill once the run has sampled past the checkpoint, so the resumed run must drop those samples
    checkpoint = killed / "checkpoints" / f"step-{kill_after}"
    wait_until(
        lambda: checkpoint.is_dir() and last_sampled_step(killed / "samples.jsonl") > kill_after, process
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in list_checkpoints(killed))
    assert killed_at < last_sampled_step(killed / "samples.jsonl") < steps, "the run was not killed in time"

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    first, again = train_steps(tmp_path / "whole"), train_steps(killed)
    assert sorted(again) == list(range(1, steps + 1))
    for step in range(killed_at + 1, steps + 1):
        for key in (
            "loss",
            "reward",
            "reward_std",
            "entropy",
            "kl",
            "clip_fraction",
            "grad_norm",
            "lr",
            "tokens",
        ):
            assert again[step][key] == pytest.approx(first[step][key], rel=1e-5, abs=1e-7), (step, key)
    samples = [
        [(r["step"], r["completion"]) for r in read_jsonl(run / "samples.jsonl")]
        for run in (tmp_path / "whole", killed)
    ]
    assert samples[0] == samples[1]  # each step's rollouts once, as in the uninterrupted run


# ------------------------------------------------------------------------------------------ bad input


def test_math_reward_needs_references_and_names_the_data(tmp_path):
    config = rl_config(tmp_path, "noref", "rl.rewards={functions: [{name: math}]}", references=False)
    with pytest.raises(DataError, match="reference") as error:
        train(config)
    assert str(tmp_path / "prompts.jsonl") in str(error.value)


def test_laser_verifier_must_be_one_of_the_rewards(tmp_path):
    config = rl_config(tmp_path, "verifier", "rl.laser.enabled=true", "rl.laser.verifier=math")
    with pytest.raises(ConfigError, match="rl.laser.verifier") as error:
        train(config)
    assert "'lower'" in str(error.value)  # names the rewards there are


def test_group_of_one_with_group_scaling_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        rl_config(tmp_path, "one", "rollout.samples_per_prompt=1")
    assert rl_config(tmp_path, "one", "rollout.samples_per_prompt=1", "rl.scale=none").rollout.samples_per_prompt == 1


def test_reserved_token_missing_from_the_vocabulary_is_a_model_error(tmp_path):
    settings = ["rl.laser.enabled=true", "rl.laser.verifier=lower", "rl.laser.token=<|no_such_token|>"]
    with pytest.raises(ModelError, match="no_such_token"):
        train(rl_config(tmp_path, "token", *settings))


def test_a_reward_that_is_always_nan_stops_the_run(tmp_path):
    config = rl_config(tmp_path, "nan", rewards_override(tmp_path, "lower", "not_a_number"))
    with pytest.raises(PosttrainError, match="max_error_rate") as error:
        train(config)
    assert "not_a_number" in str(error.value) and "nan" in str(error.value)


def test_reward_errors_below_the_limit_are_counted_and_scored_as_on_error(tmp_path):
    rewards = f"rl.rewards={{functions: [{{path: {tmp_path / 'r.py'}:not_a_number}}], max_error_rate: 1, on_error: -1}}"
    steps = train_steps(train(rl_config(tmp_path, "counted", rewards, "train.max_steps=1")).run_dir)
    assert steps[1]["reward_errors"] == 2 * G and steps[1]["reward"] == -1.0
