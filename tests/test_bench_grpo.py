"""`posttrain bench grpo` runs posttrain and TRL's GRPOTrainer on the same prompts and settings, each in its
own process, and reports per-side figures and ratios.

Only the plumbing is tested here; benchmark figures come from `posttrain bench grpo --vs trl`.
"""

import json

import pytest

from posttrain.bench.grpo import GrpoBenchOptions, run_grpo_benchmark
from posttrain.bench.on_policy import benchmark_prompts, posttrain_config
from posttrain.bench.steps import generation_figures
from posttrain.data import encode_prompts
from posttrain.errors import ConfigError, PosttrainError
from posttrain.models import save_model, tiny_model, tiny_tokenizer
from posttrain.trainers.sampler import EpochSampler
from tests.helpers import read_jsonl, run_cli


def test_grpo_benchmark_cli_reports_both_sides_and_ratios(tmp_path):
    model_dir = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "tiny")
    options = "--vs trl --steps 1 --warmup-steps 0 --prompts 2 --num-generations 2 --max-completion-length 8"
    done = run_cli("bench", "grpo", "--model", str(model_dir), *options.split(), "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    result = json.loads(lines[-1])

    for side in ("posttrain", "trl"):
        figures = result[side]
        run = figures["runs"][0]
        assert run["steps"] == 1 and run["completions_per_step"] == [4]  # 2 prompts × G = 2
        assert 4 <= run["generated_tokens"] <= 4 * 8  # each completion has 1 to 8 tokens
        assert run["mean_completion_length"] == pytest.approx(run["generated_tokens"] / 4)
        assert figures["generated_tokens_per_s"] == figures["tokens_per_s"]
        assert figures["tokens_per_s"] == pytest.approx(run["generated_tokens"] / figures["seconds_per_step"])
        assert figures["peak_rss_mb"] > 0
    assert result["ratio_tokens_per_s"] == pytest.approx(
        result["posttrain"]["tokens_per_s"] / result["trl"]["tokens_per_s"]
    )
    assert result["ratio_peak_rss"] == pytest.approx(
        result["posttrain"]["peak_rss_mb"] / result["trl"]["peak_rss_mb"]
    )
    assert result["ratio_step_throughput"] == pytest.approx(
        result["trl"]["seconds_per_step"] / result["posttrain"]["seconds_per_step"]
    )
    settings = result["settings"]
    assert (settings["prompts"], settings["num_generations"], settings["max_completion_length"]) == (2, 2, 8)
    assert (settings["temperature"], settings["top_p"], settings["loss"], settings["beta"]) == (
        1.0,
        1.0,
        "dapo",
        0.0,
    )

    # TRL sampled the prompts posttrain's trainer draws first: EpochSampler order over the same data file
    records = read_jsonl(settings["data"])
    first = EpochSampler(len(records), settings["seed"]).next_batch(2)
    assert result["trl"]["runs"][0]["prompts_per_step"] == [
        [records[i]["prompt"][-1]["content"] for i in first]
    ]


def test_both_sides_feed_the_model_the_same_prompt_tokens():
    """posttrain's encode_prompts equals the chat-template tokenization TRL's GRPOTrainer._tokenize_prompts uses."""
    tokenizer = tiny_tokenizer()
    records = benchmark_prompts(3)
    trl_ids = [
        tokenizer.apply_chat_template(
            r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        for r in records
    ]
    assert encode_prompts(records, tokenizer) == trl_ids
    assert all(r["reference"] and r["prompt"][0]["role"] == "user" for r in records)


def test_step_figures_skip_warmup_and_count_generated_tokens():
    figures = generation_figures([5.0, 2.0, 4.0], [[64, 64], [3, 5], [10, 2]], warmup_steps=1)
    assert figures["seconds_per_step"] == 3.0
    assert figures["generated_tokens"] == 20
    assert figures["generated_tokens_per_s"] == figures["tokens_per_s"] == 20 / 6
    assert figures["mean_completion_length"] == 5.0
    assert figures["completions_per_step"] == [2, 2, 2] and figures["steps"] == 3


def test_unknown_peer_is_a_clear_error():
    with pytest.raises(PosttrainError, match="unknown peer"):
        run_grpo_benchmark(GrpoBenchOptions(vs="nemo"))


def test_group_of_one_is_a_config_error():
    with pytest.raises(ConfigError, match="--num-generations: must be at least 2") as caught:
        run_grpo_benchmark(GrpoBenchOptions(num_generations=1))
    assert caught.value.where == "--num-generations"


def test_model_both_libraries_cannot_load_is_a_clear_error():
    with pytest.raises(PosttrainError, match="needs a model directory"):
        run_grpo_benchmark(GrpoBenchOptions(model="tiny-random"))


def test_posttrain_set_changes_posttrain_side_only_and_bad_form_is_an_error(tmp_path):
    settings = {"workdir": str(tmp_path), "seed": 0, "model": "m", "dtype": "float32", "device": "cpu",
                "data": "d.jsonl", "lr": 1e-6, "steps": 2, "warmup_steps": 1,
                "posttrain_set": ["rollout.dtype=bfloat16", "train.gradient_checkpointing=true"]}
    config = posttrain_config(settings, "grpo", 8, {"loss": "dapo"}, {"samples_per_prompt": 8})
    assert config["rl"] == {"loss": "dapo"}
    assert config["rollout"] == {"samples_per_prompt": 8, "dtype": "bfloat16"}
    assert config["train"]["gradient_checkpointing"] is True and config["train"]["batch_size"] == 8
    with pytest.raises(ConfigError, match="key.sub=value"):
        run_grpo_benchmark(GrpoBenchOptions(model="tiny-random", posttrain_set=["rollout.dtype"]))
