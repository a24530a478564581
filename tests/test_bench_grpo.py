"""`posttrain bench grpo` runs posttrain and TRL's GRPOTrainer on the same prompts and settings, each in its
own process, and reports per-side figures and ratios.

Only the plumbing is tested here; benchmark figures come from `posttrain bench grpo --vs trl`.
"""

import json
import os
from types import SimpleNamespace

import pytest
import torch

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
    assert result["trl_generation"] == "hf-generate"  # TRL's default; --trl-vllm: "vllm-colocate"
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


class _Stop(Exception):
    pass


def test_trl_vllm_option_reaches_the_trl_settings(monkeypatch, tmp_path):
    """--trl-vllm: the TRL worker gets colocated vLLM (in-process engine, no sleep mode) and the result says so."""
    from posttrain.bench import grpo
    from posttrain.bench.steps import trl_generation, trl_vllm_args

    workers = {}

    def capture(sides, repeats):
        workers.update(sides)
        raise _Stop

    monkeypatch.setattr(grpo, "prepare_benchmark", lambda *_: ("m", tmp_path, tmp_path / "d.jsonl"))
    monkeypatch.setattr(grpo, "alternate", capture)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # a user's own setting is kept

    with pytest.raises(_Stop):
        run_grpo_benchmark(GrpoBenchOptions())
    module, settings = workers["trl"]
    assert module == "posttrain.bench.grpo_trl" and trl_vllm_args(settings) == {}
    assert trl_generation(settings) == "hf-generate"

    with pytest.raises(_Stop):
        run_grpo_benchmark(GrpoBenchOptions(trl_vllm=True))
    settings = workers["trl"][1]
    assert trl_vllm_args(settings) == {"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": False}
    assert trl_generation(settings) == "vllm-colocate"
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4"


def test_trl_vllm_on_cpu_syncs_weights_with_vllm_reload():
    """On the CPU the colocated engine's weights are pushed with vLLM's reload_weights (TRL's direct load_weights
    fails on vLLM's packed CPU layers); elsewhere TRL's own sync is kept."""
    from posttrain.bench.steps import sync_by_reload

    calls = []
    weight = torch.ones(2)
    llm = SimpleNamespace(collective_rpc=lambda method, kwargs: calls.append((method, list(kwargs["weights_iterator"]),
                                                                             kwargs["is_checkpoint_format"])),
                          reset_prefix_cache=lambda: calls.append("reset"))
    own_sync = object()
    generation = SimpleNamespace(llm=llm, sync_weights=own_sync, _iter_named_params=lambda: iter([("w", weight)]))
    trainer = SimpleNamespace(vllm_generation=generation)

    sync_by_reload(trainer, {"trl_vllm": True, "device": "cuda"})
    sync_by_reload(trainer, {"trl_vllm": False, "device": "cpu"})
    assert generation.sync_weights is own_sync
    sync_by_reload(trainer, {"trl_vllm": True, "device": "cpu"})
    generation.sync_weights()
    (method, tensors, checkpoint_format), reset = calls
    assert method == "reload_weights" and checkpoint_format and reset == "reset"
    assert [name for name, _ in tensors] == ["w"] and torch.equal(tensors[0][1], weight)
