"""Generative reward models: GRM output parsing, judge tasks in both orders, the verdict and s2j rewards, the
sampler's blocks, GRM training through `posttrain train`, and the solve-to-judge gap."""

from __future__ import annotations

import json

import pytest

from posttrain.data.tasks.judge_pairs import make_preference_pairs
from posttrain.errors import DataError
from posttrain.evals.gap import GapOptions, gap_metrics, run_gap_eval
from posttrain.judges.grm import parse_grm
from posttrain.judges.tasks import judge_task_prompts
from posttrain.rewards import RewardsConfig, build_rewards
from posttrain.rewards.grm import s2j_reward, verdict_reward
from posttrain.trainers.sampler import EpochSampler
from tests.helpers import read_jsonl, run_cli, tiny_overrides
from tests.test_eval_judge import ScriptedEngine


def grm(critique: str, choice: str = "[[A]]", solve: str | None = None) -> str:
    head = f"<solve>{solve}</solve>\n" if solve is not None else ""
    return f"{head}<critics>{critique}</critics>\n<choice>{choice}</choice>"


# ------------------------------------------------------------------------------------------------ parsing


def test_parse_grm_takes_the_last_tags_and_enforces_the_format_rules():
    output = parse_grm("<critics>draft</critics><choice>[[B]]</choice> then <critics>final</critics>"
                       "<choice>[[A]]</choice>")
    assert output.valid and output.critique == "final" and output.choice == "A"
    assert parse_grm("<critics>ok</critics> so [[B]]").choice == "B"  # fallback after the critique
    assert parse_grm("<choice>[[A]]</choice>").error == "no <critics>…</critics> section"
    assert "5 lines" in parse_grm(grm("a\nb\nc\nd\ne")).error
    assert "1501 characters" in parse_grm(grm("x" * 1501)).error
    assert parse_grm(grm("x" * 1500)).valid
    assert parse_grm(grm("fine", "[[A]] or [[B]]")).error == "no single choice [[A]] or [[B]]"
    assert parse_grm(grm("fine"), require_solve=True).error == "no <solve>…</solve> section"
    assert parse_grm(grm("fine", solve="2 + 2 = 4\n#### 4"), require_solve=True).solve == "2 + 2 = 4\n#### 4"


# ---------------------------------------------------------------------------------------------- judge tasks


def test_each_pair_becomes_two_adjacent_prompts_with_the_right_gold_verdict():
    pairs = make_preference_pairs(3, seed=0)
    prompts = judge_task_prompts(pairs, "grm")
    assert len(prompts) == 6
    for index, pair in enumerate(pairs):
        first, swapped = prompts[2 * index], prompts[2 * index + 1]
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert (first["order"], first["gold"], first["response_a"]) == ("first", "A", chosen)
        assert (swapped["order"], swapped["gold"], swapped["response_a"]) == ("swapped", "B", rejected)
        text = swapped["prompt"][0]["content"]
        assert text.index(rejected) < text.index(chosen) and "<critics>" in text
        assert first["critique"] == pair["critique"] and first["reference"] == pair["reference"]


def test_explicit_tasks_and_bad_tasks():
    task = {"question": "1+1?", "response_a": "3", "response_b": "2", "winner": "b", "_where": "t.jsonl:1"}
    first, swapped = judge_task_prompts([task], "grm")
    assert (first["gold"], swapped["gold"]) == ("B", "A") and swapped["response_a"] == "2"
    with pytest.raises(DataError, match="winner") as error:
        judge_task_prompts([{**task, "winner": None}])
    assert "t.jsonl:1" in str(error.value)
    with pytest.raises(DataError, match="identical"):
        judge_task_prompts([{**task, "response_b": "3"}])
    with pytest.raises(DataError, match="response_a"):
        judge_task_prompts([{**task, "response_a": " "}])
    with pytest.raises(DataError, match="identical"):
        judge_task_prompts([{"prompt": "q", "chosen": "same", "rejected": "same"}])


def test_hide_critiques_drops_that_fraction_of_tasks_critiques_in_both_orders():
    prompts = judge_task_prompts(make_preference_pairs(10, seed=0), "grm", hide_critiques=0.5, seed=3)
    hidden = [p["task_index"] for p in prompts if p["critique"] is None]
    assert len(hidden) == 10 and all(hidden.count(i) == 2 for i in hidden)  # 5 tasks, both orders
    again = judge_task_prompts(make_preference_pairs(10, seed=0), "grm", hide_critiques=0.5, seed=3)
    assert [p["critique"] for p in again] == [p["critique"] for p in prompts]


def test_the_sampler_keeps_blocks_together_and_is_deterministic():
    sampler = EpochSampler(12, seed=5, block=2)
    drawn = sampler.next_batch(12) + sampler.next_batch(12)
    assert sorted(drawn[:12]) == list(range(12)) and drawn[12:] != drawn[:12]
    assert all(drawn[i] % 2 == 0 and drawn[i + 1] == drawn[i] + 1 for i in range(0, 24, 2))
    assert EpochSampler(12, seed=5, block=2).next_batch(12) == drawn[:12]
    with pytest.raises(ValueError, match="blocks of 2"):
        EpochSampler(5, seed=0, block=2)


# ---------------------------------------------------------------------------------------------- rewards


def test_verdict_reward_is_outcome_or_format_penalty():
    record = {"gold": "B"}
    assert verdict_reward("", grm("B is right", "[[B]]"), record) == 1.0
    assert verdict_reward("", grm("A is right", "[[A]]"), record) == 0.0
    assert verdict_reward("", "I think B. [[B]]", record) == -1.0  # right letter, no critique: format error
    assert verdict_reward("", grm("x\n" * 5, "[[B]]"), record) == -1.0
    assert verdict_reward("", grm("B", "[[B]]"), record, template="s2j") == -1.0  # s2j needs the solve part


def test_s2j_reward_sum_gated_and_solve_only():
    record = {"gold": "A", "reference": "5", "response_a": "...", "response_b": "..."}
    right_both = grm("B is wrong", "[[A]]", solve="8 - 3 = 5\n#### 5")
    judge_only = grm("B is wrong", "[[A]]", solve="8 - 3 = 6\n#### 6")
    solve_only = grm("A is wrong", "[[B]]", solve="#### 5")
    assert [s2j_reward("", c, record) for c in (right_both, judge_only, solve_only)] == [2.0, 1.0, 1.0]
    gated = [s2j_reward("", c, record, combine="gated") for c in (right_both, judge_only, solve_only)]
    assert gated == [2.0, 1.0, 0.0]  # a right solution earns nothing with a wrong verdict
    assert s2j_reward("", solve_only, record, judge_weight=0.0) == 1.0
    assert s2j_reward("", grm("B", "[[A]]"), record) == -1.0  # no solve section
    with pytest.raises(DataError, match="reward model"):
        s2j_reward("", right_both, {**record, "reference": None})


def test_rewards_are_built_by_name_and_check_their_args():
    from posttrain.errors import ConfigError

    config = RewardsConfig.model_validate({"functions": [{"name": "verdict"}, {"name": "s2j", "args": {
        "combine": "gated"}}]})
    batch = build_rewards(config).score(["", ""], [grm("B", "[[A]]", solve="#### 5"), "no verdict"],
                                        [{"gold": "A", "reference": "5"}, {"gold": "A", "reference": "5"}])
    assert batch.components["verdict"] == [1.0, -1.0] and batch.components["s2j"] == [2.0, -1.0]
    with pytest.raises(ConfigError, match="combine"):
        build_rewards(RewardsConfig.model_validate({"functions": [{"name": "s2j", "args": {"combine": "max"}}]}))


# ------------------------------------------------------------------------------------------ GRM training


def test_posttrain_train_runs_grpo_on_judge_tasks_with_both_orders_in_every_step(tmp_path):
    overrides = tiny_overrides(
        tmp_path, "grm", method="grpo", **{
            "data.train": "{task: judge_arithmetic, n: 8, seed: 0}", "rl.judge": "{template: grm}",
            "rollout.prompts_per_step": 4, "rollout.samples_per_prompt": 2, "rollout.max_new_tokens": 8, "train.max_steps": 2,
            "rl.rewards": "{functions: [{name: verdict}]}"})
    done = run_cli("train", "-", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "grm" / "data_summary.json").read_text())
    assert summary["tasks"] == 8 and summary["examples"] == 16
    samples = read_jsonl(tmp_path / "grm" / "samples.jsonl")
    for step in (1, 2):
        indices = sorted({row["record"] for row in samples if row["step"] == step})
        assert len(indices) == 4 and indices[0] % 2 == 0 and indices[1] == indices[0] + 1  # both orders
        assert indices[2] % 2 == 0 and indices[3] == indices[2] + 1
    assert all(row["reward_verdict"] in (-1.0, 0.0, 1.0) for row in samples)


# ---------------------------------------------------------------------------------------------------- gap


def test_gap_metrics_by_hand():
    solved = [(4, 4), (4, 4), (0, 4)]  # pairs 0 and 1 solvable, pair 2 unsolved
    rows = [{"pair_index": pair, "sample_index": 0, "order": order, "correct": correct, "verdict": verdict,
             "own_correct": own, "spurious": spurious}
            for pair, order, correct, verdict, own, spurious in [
                (0, "first", True, "A", True, False), (0, "swapped", False, "A", False, None),
                (1, "first", True, "A", True, True), (1, "swapped", True, "B", True, False),
                (2, "first", True, "A", False, None), (2, "swapped", False, None, None, None)]]
    metrics = gap_metrics(rows, solved, m=4)
    assert metrics["judge_accuracy"] == 4 / 6 and metrics["consistent_accuracy"] == 1 / 3
    assert metrics["accuracy_first"] == 1 and metrics["accuracy_swapped"] == 1 / 3
    assert metrics["position_flip_rate"] == 1 / 3  # pair 0: A in both orders; pair 2's second has no verdict
    assert metrics["gap"] == 1 / 4 and metrics["judge_accuracy_solvable"] == 3 / 4
    assert metrics["judge_accuracy_unsolved"] == 1 / 2 and metrics["solvable_fraction"] == 2 / 3
    assert metrics["solve_accuracy"] == 8 / 12 and metrics["format_failure_rate"] == 1 / 6
    assert metrics["own_solve_accuracy"] == 3 / 5 and metrics["judge_accuracy_own_wrong"] == 1 / 2
    assert metrics["spurious_success_rate"] == 1 / 3


def test_run_gap_eval_with_a_scripted_judge(tmp_path):
    pairs = make_preference_pairs(4, seed=0, split="held_out")
    answers = {pair["question"]: pair["reference"] for pair in pairs}

    def respond(prompt: str, sample: int) -> str:
        question = next(q for q in answers if q in prompt)
        if "[Client Question]" not in prompt:  # solve-only: right on every question but the first
            return f"#### {answers[question]}" if question != pairs[0]["question"] else "#### -1"
        shown_a = prompt.split("[The Start of Response A]\n", 1)[1].split("\n[The End", 1)[0]
        chosen = next(p["chosen"][0]["content"] for p in pairs if p["question"] == question)
        verdict = "[[A]]" if shown_a == chosen else "[[B]]"
        return grm("the wrong one has an error", verdict, solve=f"#### {answers[question]}")

    result = run_gap_eval(GapOptions(model="scripted", n=4, k=2, template="s2j", out_dir=tmp_path),
                          engine=ScriptedEngine(respond))
    assert result["judge_accuracy"] == 1.0 and result["gap"] == 0.0 and result["solvable_fraction"] == 0.75
    assert result["solve_accuracy"] == 6 / 8 and result["own_solve_accuracy"] == 1.0
    # every right verdict's critique is unlike the pairs' critiques: all successes are spurious
    assert result["spurious_success_rate"] == 1.0
    assert len(read_jsonl(tmp_path / "samples.jsonl")) == 8


def test_the_critique_judge_writes_well_formed_grm_and_s2j_judgments():
    from posttrain.judges.grm_scores import solve_score
    from posttrain.judges.synthesis import CritiqueJudge, synthesize_judgments
    from posttrain.models import tiny_tokenizer
    from posttrain.rollout import SamplingParams

    pairs = make_preference_pairs(4, seed=1)
    for style in ("grm", "s2j"):
        sft, dpo, summary = synthesize_judgments(CritiqueJudge(pairs, tiny_tokenizer(), style=style), pairs, style,
                                                 SamplingParams(n=1))
        assert summary["correct_rate"] == 1.0 and len(sft) == 8 and dpo == []
        for row in sft:
            output = parse_grm(row["completion"][0]["content"], require_solve=style == "s2j")
            assert output.valid and output.choice == ("A" if row["order"] == "first" else "B")
            assert pairs[row["pair_index"]]["critique"] in output.critique
            if style == "s2j":
                assert solve_score(output.solve, pairs[row["pair_index"]]) == 1.0


def test_cli_eval_gap_and_judge_label_on_the_tiny_model(tmp_path):
    done = run_cli("eval", "gap", "--judge", "tiny-random", "--n", "2", "--k", "2", "--template", "grm",
                   "--max-new-tokens", "4", "--judge-max-new-tokens", "4", "--json", "--out", str(tmp_path / "gap"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["pairs"] == 2 and result["judgments"] == 4 and result["k"] == 2 and result["similarity"] == "numbers"
    assert len(read_jsonl(tmp_path / "gap" / "samples.jsonl")) == 4
    labelled = run_cli("judge", "label", "--judge", "tiny-random", "--pairs", "task:arithmetic", "--n", "2",
                       "--max-new-tokens", "4", "--out", str(tmp_path / "labels"))
    assert labelled.returncode == 0, labelled.stderr[-2000:]
    summary = json.loads((tmp_path / "labels" / "summary.json").read_text())
    assert summary["pairs"] == 2 and len(read_jsonl(tmp_path / "labels" / "gold.jsonl")) == 2
    assert len(read_jsonl(tmp_path / "labels" / "pairs.jsonl")) == summary["labelled"]


def test_gap_recomputed_from_samples_at_another_m(tmp_path):
    from posttrain.evals.gap import gap_from_samples

    pairs = make_preference_pairs(3, seed=0, split="held_out")
    answers = {pair["question"]: pair["reference"] for pair in pairs}
    solve_right = {pairs[0]["question"]: 0, pairs[1]["question"]: 1, pairs[2]["question"]: 2}  # of k = 2

    def respond(prompt: str, sample: int) -> str:
        question = next(q for q in answers if q in prompt)
        if "[Client Question]" not in prompt:
            return f"#### {answers[question]}" if sample < solve_right[question] else "#### -1"
        return grm("an error", "[[B]]", solve=f"#### {answers[question]}")  # right in one order of each pair

    result = run_gap_eval(GapOptions(model="scripted", n=3, k=2, template="s2j", out_dir=tmp_path),
                          engine=ScriptedEngine(respond))
    samples = tmp_path / "samples.jsonl"
    again = gap_from_samples(samples)
    assert again["m"] == 2 and {key: again[key] for key in result if key in again and key != "samples"} == {
        key: result[key] for key in again if key in result}
    assert result["solvable_fraction"] == pytest.approx(1 / 3)
    assert gap_from_samples(samples, m=1)["solvable_fraction"] == pytest.approx(2 / 3)
    assert gap_from_samples(samples, m=1)["judge_accuracy_solvable"] == 0.5
    with pytest.raises(DataError, match="must lie in"):
        gap_from_samples(samples, m=3)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"pair_index": 0, "correct": True}) + "\n")
    with pytest.raises(DataError, match="missing verdict, solve_right, solve_k") as caught:
        gap_from_samples(broken)
    assert "broken.jsonl:1" in str(caught.value)
