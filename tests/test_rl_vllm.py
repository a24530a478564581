"""On-policy training with the vLLM engine (``rollout.engine=vllm``): the engine follows the learner, a killed run
resumes exactly, ``auto`` says what it chose, and an engine that cannot run is a clear error.

The model is the tiny Llama of ``tests/test_rollout_vllm.py`` (32-wide heads, which vLLM's CPU attention
supports), saved to a folder vLLM loads; fp32 on both sides, so the engine's sampling log-probs equal the
learner's up to float error and the behaviour correction stays at 1.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from posttrain.config import load_config
from posttrain.errors import ModelError
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.trainers.checkpoint import list_checkpoints
from posttrain.trainers.run import train
from tests.helpers import posttrain_command, read_jsonl, train_steps
from tests.rl_helpers import rl_overrides
from tests.test_rl import last_sampled_step, wait_until


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("vllm-learner")
    tiny_model(hidden_size=128, num_heads=4, seed=1, tie_word_embeddings=True).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def vllm_overrides(tmp_path, name, model_dir, *settings):
    return rl_overrides(tmp_path, name, f"model.name={model_dir}", "rollout.engine=vllm", "rollout.kv_cache_gib=0.25",
                        "rollout.dtype=float32", "data.max_length=64", *settings)


def test_grpo_with_vllm_syncs_the_engine_before_every_rollout(tmp_path, model_dir, capfd):
    config = load_config(None, vllm_overrides(tmp_path, "vllm", model_dir, "train.save_every=1",
                                              "train.keep_checkpoints=3"))
    method_result = train(config)
    assert "rollout engine: vllm" in capfd.readouterr().out
    steps = train_steps(method_result.run_dir)
    assert sorted(steps) == [1, 2, 3]
    for metrics in steps.values():
        assert metrics["sync_seconds"] > 0  # every rollout after an update, and the first one, synced
        assert metrics["engine_logprob_gap"] < 1e-3 and metrics["engine_corrected"] == 0
    # the step-3 rollouts came from the step-2 weights: vLLM's greedy tokens equal HF's on that checkpoint
    from posttrain.models import load_model
    from posttrain.rollout.vllm import VLLMEngine

    step_two = load_model(str(method_result.run_dir / "checkpoints" / "step-2" / "model"))
    prompts = [tiny_tokenizer()(text)["input_ids"] for text in ("hello", "a longer prompt")]
    engine = VLLMEngine(model_dir, tiny_tokenizer(), kv_cache_gib=0.25, max_model_len=128)
    try:
        engine.sync_from(step_two)
        greedy = SamplingParams(temperature=0, max_new_tokens=8)
        assert [g.token_ids for g in engine.generate(prompts, greedy)] == \
            [g.token_ids for g in HFEngine(step_two, tiny_tokenizer()).generate(prompts, greedy)]
    finally:
        engine.close()


def test_a_killed_vllm_run_resumes_exactly(tmp_path, model_dir):
    steps, kill_after = 6, 2
    settings = [f"train.max_steps={steps}", "train.save_every=2"]
    whole = subprocess.run(posttrain_command("train", "-", *vllm_overrides(tmp_path, "whole", model_dir, *settings)),
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    args = posttrain_command("train", "-", *vllm_overrides(tmp_path, "killed", model_dir, *settings))
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = tmp_path / "killed"
    checkpoint = killed / "checkpoints" / f"step-{kill_after}"
    wait_until(lambda: checkpoint.is_dir() and last_sampled_step(killed / "samples.jsonl") > kill_after, process,
               timeout=600)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in list_checkpoints(killed))
    assert killed_at < steps
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, again = train_steps(tmp_path / "whole"), train_steps(killed)
    assert sorted(again) == list(range(1, steps + 1))
    for step in range(killed_at + 1, steps + 1):
        for key in ("loss", "reward", "entropy", "grad_norm", "tokens"):
            assert again[step][key] == pytest.approx(first[step][key], rel=1e-5, abs=1e-7), (step, key)
    samples = [[(r["step"], r["completion"]) for r in read_jsonl(run / "samples.jsonl")]
               for run in (tmp_path / "whole", killed)]
    assert samples[0] == samples[1]


def test_auto_falls_back_to_hf_and_says_why_and_vllm_without_a_folder_is_an_error(tmp_path, capfd):
    result = train(load_config(None, rl_overrides(tmp_path, "auto", "rollout.engine=auto", "train.max_steps=1")))
    output = capfd.readouterr().out
    assert "rollout engine: hf (rollout.engine=auto fell back to HF generate" in output
    assert "built in code" in output and len(train_steps(result.run_dir)) == 1
    with pytest.raises(ModelError, match="rollout.engine=vllm cannot be used.*built in code"):
        train(load_config(None, rl_overrides(tmp_path, "vllm", "rollout.engine=vllm", "train.max_steps=1")))


def test_distillation_samples_with_vllm(tmp_path, model_dir, capfd):
    from tests.test_distill import distill_config

    config = distill_config(tmp_path, "distill-vllm", f"model.name={model_dir}", "rollout.engine=vllm",
                            "rollout.kv_cache_gib=0.25", "data.max_length=64")  # vLLM's default: bf16
    result = train(config)
    assert "rollout engine: vllm" in capfd.readouterr().out
    steps = train_steps(result.run_dir)
    assert steps and all(m["sync_seconds"] > 0 for m in steps.values())


def test_eval_math_with_vllm_gives_the_hf_results(tmp_path, model_dir):
    from posttrain.evals.run import MathOptions, run_math_eval

    options = MathOptions(model=str(model_dir), n=6, max_new_tokens=12, batch_size=8)
    hf = run_math_eval(options.model_copy(update={"out_dir": tmp_path / "hf"}))
    vllm = run_math_eval(options.model_copy(update={"engine": "vllm", "out_dir": tmp_path / "vllm"}))
    assert vllm == hf  # greedy, fp32: the same completions, so the same metrics
    assert read_jsonl(tmp_path / "vllm" / "samples.jsonl") == read_jsonl(tmp_path / "hf" / "samples.jsonl")


def test_engine_vllm_on_a_model_without_a_folder_is_a_usage_error():
    done = subprocess.run(posttrain_command("eval", "math", "--model", "tiny-random", "--n", "2", "--engine", "vllm"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "engine=vllm cannot be used" in done.stderr
    assert "Traceback" not in done.stderr
