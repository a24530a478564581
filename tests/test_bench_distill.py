"""`posttrain bench distill` runs posttrain's TS-OPSD and TRL's DistillationTrainer on the same prompts and
settings, each in its own process. Only the plumbing is tested; figures come from the benchmark itself."""

import json

import pytest

from posttrain.bench.distill import DistillBenchOptions, run_distill_benchmark
from posttrain.errors import ConfigError
from posttrain.models import save_model, tiny_model, tiny_tokenizer
from tests.helpers import run_cli


def test_distill_benchmark_cli_reports_both_sides_and_ratios(tmp_path):
    model_dir = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "tiny")
    options = "--vs trl --steps 1 --warmup-steps 0 --prompts 3 --max-completion-length 6 --repeats 1 --json"
    done = run_cli("bench", "distill", "--model", str(model_dir), *options.split(),
                   "--set", "rollout.dtype=bfloat16")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.strip()][-1])
    for side in ("posttrain", "trl"):
        run = result[side]["runs"][0]
        assert run["steps"] == 1 and run["completions_per_step"] == [3]  # one completion per prompt
        assert 3 <= run["generated_tokens"] <= 3 * 6
        assert result[side]["tokens_per_s"] == pytest.approx(run["generated_tokens"] / run["seconds_per_step"])
        assert result[side]["peak_rss_mb"] > 0 and run["final_loss"] is not None
    assert result["ratio_step_throughput"] == pytest.approx(
        result["trl"]["seconds_per_step"] / result["posttrain"]["seconds_per_step"])
    assert result["ratio_peak_rss"] == pytest.approx(result["posttrain"]["peak_rss_mb"] / result["trl"]["peak_rss_mb"])
    settings = result["settings"]
    assert (settings["teacher_temperature"], settings["temperature"], settings["divergence"]) == (2.0, 1.0, "forward_kl")
    assert settings["posttrain_set"] == ["rollout.dtype=bfloat16"]
    assert result["trl_generation"] == "hf-generate"


@pytest.mark.parametrize(("kwargs", "where"), [
    ({"steps": 0}, "--steps"), ({"prompts": 0}, "--prompts"), ({"warmup_steps": -1}, "--warmup-steps"),
    ({"teacher_temperature": 0.0}, "--teacher-temperature"),
])
def test_bad_settings_are_config_errors(kwargs, where):
    with pytest.raises(ConfigError, match=where):
        run_distill_benchmark(DistillBenchOptions(model="tiny-random", **kwargs))
