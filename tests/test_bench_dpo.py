"""`posttrain bench dpo` runs posttrain's DPO and TRL's DPOTrainer on the same pairs, in the same order, each in
its own process with reference log-probs precomputed, and reports per-side figures and ratios.

Only the plumbing is tested here (tiny model, one step, one repeat); figures come from
`posttrain bench dpo --vs trl` on the embedded model.
"""

import json
import math

import pytest

from posttrain.bench.dpo import DpoBenchOptions, benchmark_pairs, run_dpo_benchmark
from posttrain.bench.steps import token_figures
from posttrain.data.preference import tokenize_pairs
from posttrain.errors import ConfigError, PosttrainError
from posttrain.models import save_model, tiny_model, tiny_tokenizer
from posttrain.trainers.sampler import EpochSampler
from tests.helpers import read_jsonl, run_cli


def test_dpo_benchmark_cli_reports_both_sides_and_ratios(tmp_path):
    model_dir = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "tiny")
    options = "--vs trl --steps 1 --warmup-steps 1 --batch-size 3 --max-length 512 --lr 1e-3 --repeats 1 --json"
    done = run_cli("bench", "dpo", "--model", str(model_dir), *options.split())
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads([line for line in done.stdout.splitlines() if line.strip()][-1])
    settings = result["settings"]
    assert (settings["steps"], settings["batch_size"], settings["max_length"]) == (1, 3, 512)
    assert (settings["loss"], settings["beta"], settings["schedule"], settings["dtype"]) == (
        "sigmoid", 0.1, "constant", "float32")

    # per step, the real tokens of the chosen and rejected rows of the next 3 pairs in posttrain's sampler order
    records = read_jsonl(settings["data"])
    pairs = tokenize_pairs(records, tiny_tokenizer(), settings["max_length"]).pairs
    assert len(pairs) == len(records) == 6  # (1 timed + 1 warm-up step) × 3 pairs, none dropped

    def step_tokens(order):
        return [sum(len(pairs[i].chosen.input_ids) + len(pairs[i].rejected.input_ids) for i in order[k : k + 3])
                for k in (0, 3)]

    expected = step_tokens(EpochSampler(len(pairs), settings["seed"]).next_batch(6))
    assert expected != step_tokens(list(range(6)))  # the order is visible in the counts

    for side in ("posttrain", "trl"):
        figures = result[side]
        run = figures["runs"][0]
        assert run["steps"] == 2
        assert run["tokens_per_step"] == expected  # same pairs, same order, no padding counted
        assert figures["tokens_per_s"] == pytest.approx(expected[1] / figures["seconds_per_step"])  # warm-up untimed
        # at step 1 the policy is the reference: every margin is 0 and the sigmoid DPO loss is log 2, which
        # holds only if the precomputed reference log-probs are those of these very pairs
        assert run["losses"][0] == pytest.approx(math.log(2), abs=1e-4)
        assert len(run["losses"]) == 2
        assert figures["final_loss"] == run["losses"][-1]
        assert figures["peak_rss_mb"] > 0
    assert result["same_tokens_per_step"] is True
    # one AdamW update at lr 1e-3 from the same weights on the same pairs moves both losses below log 2, alike
    assert result["posttrain"]["final_loss"] < math.log(2) - 0.01
    assert result["posttrain"]["final_loss"] == pytest.approx(result["trl"]["final_loss"], abs=1e-3)
    assert result["ratio_tokens_per_s"] == pytest.approx(
        result["posttrain"]["tokens_per_s"] / result["trl"]["tokens_per_s"])
    assert result["ratio_peak_rss"] == pytest.approx(
        result["posttrain"]["peak_rss_mb"] / result["trl"]["peak_rss_mb"])


def test_step_figures_skip_warmup_and_count_real_tokens():
    figures = token_figures([9.0, 2.0, 4.0], [100, 30, 50], [0.7, 0.6, 0.5], warmup_steps=1)
    assert figures["seconds_per_step"] == 3.0
    assert figures["tokens_per_s"] == 80 / 6
    assert figures["final_loss"] == 0.5 and figures["steps"] == 3 and figures["tokens_per_step"] == [100, 30, 50]


def test_step_figures_refuse_mismatched_counts():
    with pytest.raises(PosttrainError, match="2 step durations for 3 batches"):
        token_figures([1.0, 1.0], [10, 10, 10], [0.7, 0.7], warmup_steps=0)


def test_benchmark_pairs_are_distinct_conversational_pairs():
    pairs = benchmark_pairs(8)
    assert pairs == benchmark_pairs(8)  # the same pairs for both sides and every repeat
    assert len(pairs) == 8 and all(p["chosen"] != p["rejected"] for p in pairs)
    assert [p["prompt"][0]["role"] for p in pairs] == ["user"] * 8
    assert {p["chosen"][0]["role"] for p in pairs} == {p["rejected"][0]["role"] for p in pairs} == {"assistant"}


def test_unknown_peer_is_a_clear_error():
    with pytest.raises(PosttrainError, match="unknown peer"):
        run_dpo_benchmark(DpoBenchOptions(vs="openrlhf"))


@pytest.mark.parametrize(("options", "where"), [({"beta": 0.0}, "--beta"), ({"steps": 0}, "--steps"),
                                                ({"max_length": 1}, "--max-length"),
                                                ({"micro_batch_tokens": -1}, "--micro-batch-tokens")])
def test_bad_settings_are_config_errors(options, where):
    with pytest.raises(ConfigError) as caught:
        run_dpo_benchmark(DpoBenchOptions(**options))
    assert caught.value.where == where


def test_model_both_libraries_cannot_load_is_a_clear_error():
    with pytest.raises(PosttrainError, match="needs a model directory"):
        run_dpo_benchmark(DpoBenchOptions(model="tiny-random"))


def test_help_lists_the_options():
    done = run_cli("bench", "dpo", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--vs", "--batch-size", "--max-length", "--beta", "--micro-batch-tokens", "--json"):
        assert option in done.stdout
