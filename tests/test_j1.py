"""J1: both orders of a pair in one step, the consistency and pointwise rewards, the pointwise template, voting."""

from __future__ import annotations

import json
import re

import pytest

from posttrain.config import RewardsConfig
from posttrain.data.tasks.judge_pairs import make_preference_pairs
from posttrain.errors import ConfigError, DataError
from posttrain.evals.judge import JudgeEvalOptions, run_judge_eval
from posttrain.judges.consistency import both_right, paired_rewards
from posttrain.judges.formats import get_template
from posttrain.judges.metrics import group_metrics
from posttrain.judges.pointwise import judge_pairs_pointwise
from posttrain.judges.scorers import judge_pairs
from posttrain.judges.tasks import judge_task_prompts
from posttrain.judges.voting import majority_verdict, mean_score, voted_rows
from posttrain.rewards import build_rewards
from posttrain.rollout import SamplingParams
from posttrain.trainers.sampler import EpochSampler
from tests.helpers import read_jsonl, run_cli, tiny_overrides
from tests.test_eval_judge import ScriptedEngine, pair, picks, shown

TASK = {"question": "2 + 2?", "response_a": "4", "response_b": "5", "winner": "A"}


def rollouts(prompts: list[dict], texts_per_prompt: list[list[str]]) -> tuple[list[str], list[dict]]:
    """Completions and their records, prompt-major (as the engine returns them)."""
    completions, records = [], []
    for prompt, texts in zip(prompts, texts_per_prompt, strict=True):
        completions += texts
        records += [prompt] * len(texts)
    return completions, records


def score(name: str, completions: list[str], records: list[dict], **args) -> list[float]:
    """The values of one registered reward over a batch, through the run's reward set."""
    reward_set = build_rewards(RewardsConfig(functions=[{"name": name, "args": args}]))
    scored = reward_set.score([""] * len(completions), completions, records)
    assert not any(scored.errors.values()), scored.error_examples
    return scored.components[name]


# --------------------------------------------------------------------------------------------- templates


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>maybe [[3]]</think> The answer is right. [[8]]", 8.0),  # the last score counts
    ("<think>fine</think> [[0]]", 0.0),
    ("[[10]]", 10.0),
    ("<think>ok</think> [[11]]", None),  # out of 0-10: a format failure, never clipped
    ("[[-1]]", None),
    ("The answer is good, I give it 7.", None),  # no score in double brackets
    ("[[7]] or [[8]]", None),  # a hedged final line
])
def test_the_j1_pointwise_template_parses_the_last_score_in_0_to_10(text, expected):
    template = get_template("j1_pointwise")
    assert template.kind == "pointwise" and template.score_range == (0, 10)
    assert template.parse(text) == expected
    assert "{question}" not in template.render("Q?", "an answer")[0]["content"]


def test_pointwise_judge_tasks_score_the_winner_then_the_loser_of_each_pair():
    prompts = judge_task_prompts([TASK, {**TASK, "winner": "B"}], "j1_pointwise")
    assert [(p["task_index"], p["order"], p["response"]) for p in prompts] == [
        (0, "chosen", "4"), (0, "rejected", "5"), (1, "chosen", "5"), (1, "rejected", "4")]
    assert all(p["gold"] is None and p["response"] in p["prompt"][0]["content"] for p in prompts)
    with pytest.raises(DataError, match="pairwise or pointwise"):
        judge_task_prompts([TASK], "verifier")


# ---------------------------------------------------------------------------------------- pair rewards


def test_consistency_is_one_only_for_rollout_pairs_right_in_both_orders():
    prompts = judge_task_prompts([TASK, {**TASK, "question": "3 + 1?"}], "j1")  # golds: A, B, A, B
    assert [p["gold"] for p in prompts] == ["A", "B", "A", "B"]
    completions, records = rollouts(prompts, [
        ["<think>4 is right</think> [[A]]", "[[A]]", "[[B]]"],  # task 0, first: right, right, wrong
        ["[[B]]", "[[A]]", "[[B]]"],  # task 0, swapped: right, wrong, right
        ["[[A]]", "no verdict", "[[A]]"],  # task 1, first: right, format failure, right
        ["[[B]]", "[[B]]", "[[A]] or [[B]]"],  # task 1, swapped: right, right, hedged (a failure)
    ])
    assert score("j1_verdict", completions, records) == [1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 0]
    index = score("j1_consistency", completions, records)
    assert index == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0]  # rollout k of one order with rollout k of the other
    mean = score("j1_consistency", completions, records, pairing="mean")
    assert mean == pytest.approx([2 / 3, 2 / 3, 0, 2 / 3, 0, 2 / 3, 2 / 3, 0, 2 / 3, 2 / 3, 2 / 3, 0])


def test_the_pointwise_reward_orders_the_two_independent_scores():
    prompts = judge_task_prompts([TASK], "j1_pointwise")  # chosen "4", rejected "5"
    completions, records = rollouts(prompts, [
        ["<think>right</think> [[9]]", "[[5]]", "[[6]]", "[[8]]"],  # scores of the chosen response
        ["[[2]]", "[[5]]", "[[7]]", "[[11]]"],  # of the rejected one: below, tie, above, out of range
    ])
    assert score("j1_pointwise", completions, records) == [1, 0, 0, 0, 1, 0, 0, 0]
    mean = score("j1_pointwise", completions, records, pairing="mean")
    assert mean == pytest.approx([3 / 4, 1 / 4, 2 / 4, 3 / 4, 1, 3 / 4, 2 / 4, 0])


def test_a_pair_reward_refuses_a_batch_without_both_orders_of_a_task():
    with pytest.raises(DataError, match="both prompts of a task"):
        paired_rewards([0, 0, 0], ["first", "first", "swapped"], [True] * 3, both_right)
    with pytest.raises(DataError, match="order 'sideways'"):
        paired_rewards([0], ["sideways"], [True], both_right)
    with pytest.raises(ConfigError, match="needs a pointwise template"):
        build_rewards(RewardsConfig(functions=[{"name": "j1_pointwise", "args": {"template": "j1"}}]))
    with pytest.raises(ConfigError, match="unknown pairing"):
        build_rewards(RewardsConfig(functions=[{"name": "j1_consistency", "args": {"pairing": "any"}}]))


def test_both_orders_share_every_process_slice_of_every_step_across_epochs():
    """The loop gives process r the slice [r·p, (r + 1)·p) of a step's indices; with blocks of two and an even
    p, both orders of every drawn task land in the same step and on the same process, also after reshuffling."""
    sampler, world, per_process = EpochSampler(10, seed=3, block=2), 2, 2
    steps = [sampler.next_batch(world * per_process) for _ in range(8)]  # 32 draws: three reshuffled epochs
    assert len({tuple(step) for step in steps}) > 1
    for step in steps:
        for rank in range(world):
            share = step[rank * per_process:(rank + 1) * per_process]
            assert share[0] % 2 == 0 and share[1] == share[0] + 1


def test_posttrain_train_gives_both_orders_of_a_pair_the_same_consistency_reward(tmp_path):
    overrides = tiny_overrides(tmp_path, "j1", method="grpo", **{
        "data.train": "{task: judge_arithmetic, n: 6, seed: 0}", "rl.judge": "{template: j1}",
        "rollout.prompts_per_step": 4, "rollout.samples_per_prompt": 2, "rollout.max_new_tokens": 6,
        "train.max_steps": 2, "data.masterkey_negatives": 0.5,
        "rl.rewards": "{functions: [{name: j1_verdict}, {name: j1_consistency}]}"})
    done = run_cli("train", "-", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = read_jsonl(tmp_path / "j1" / "samples.jsonl")
    assert len(samples) == 2 * 4 * 2
    by_key = {(row["step"], row["record"], row["sample"]): row for row in samples}
    for (step, record, sample), row in by_key.items():
        first = record - record % 2  # orders first and swapped of one task are records 2i and 2i + 1
        partner = by_key[(step, first + 1 - record % 2, sample)]
        verdicts = (row["reward_j1_verdict"], partner["reward_j1_verdict"])
        assert row["reward_j1_consistency"] == partner["reward_j1_consistency"] == float(verdicts == (1.0, 1.0))


# ---------------------------------------------------------------------------------------------- voting


@pytest.mark.parametrize(("verdicts", "expected"), [
    (["A", "A", "B"], "A"), (["B", None, None], "B"), (["A", "B"], None), ([None, None], None),
    (["A", "B", "B", None, "A", "B"], "B"),
])
def test_majority_verdict(verdicts, expected):
    assert majority_verdict(verdicts) == expected


def test_mean_score_ignores_failures():
    assert mean_score([8, None, 6]) == 7 and mean_score([None]) is None


def test_voting_over_sampled_pairwise_judgments_by_hand():
    pairs = [pair(f"Q{i}?", f"right {i}", f"wrong {i}") for i in range(3)]
    right_samples = {0: {0, 1}, 1: {0}, 2: {0, 1, 2}}  # pair i's judge is right on these of 3 samples per order

    def respond(prompt, sample):
        index = int(re.search(r"Q(\d)\?", prompt)[1])
        answer_a, _ = shown(prompt)
        right = f"right {index}"
        if index == 1 and answer_a == right:  # pair 1: position bias, always [[A]]
            return "[[A]]"
        return picks(prompt, right if sample in right_samples[index] else f"wrong {index}")

    result = judge_pairs(ScriptedEngine(respond), pairs, "rise", SamplingParams(temperature=1.0, n=3))
    single, voted = result.metrics, group_metrics(voted_rows(result.rows))
    assert single["accuracy"] == pytest.approx((2 + 2 + 3 + 1 + 3 + 3) / 18)
    assert single["consistent_accuracy"] == pytest.approx((2 + 1 + 3) / 9)
    assert single["position_flip_rate"] == pytest.approx((0 + 2 + 0) / 9)  # pair 1's samples 1 and 2: A, A
    assert voted["accuracy"] == pytest.approx(5 / 6) and voted["consistent_accuracy"] == pytest.approx(2 / 3)
    assert voted["position_flip_rate"] == pytest.approx(1 / 3) and voted["judgments"] == 6


def test_voting_pointwise_judgments_by_their_mean_score():
    pairs = [pair("Q0?", "right 0", "wrong 0"), pair("Q1?", "right 1", "wrong 1")]
    scores = {"right 0": [9, 2, 9], "wrong 0": [5, 5, 5], "right 1": [4, 6, None], "wrong 1": [6, 5, 6]}

    def respond(prompt, sample):
        answer = prompt.split("[Start of answer]\n", 1)[1].split("\n[End of answer]", 1)[0]
        value = scores[answer][sample]
        return "<think>hm</think> no score" if value is None else f"<think>hm</think> [[{value}]]"

    result = judge_pairs_pointwise(ScriptedEngine(respond), pairs, "j1_pointwise", SamplingParams(n=3))
    assert result.metrics["accuracy"] == pytest.approx(3 / 6)  # trials: 9>5, 2<5, 9>5; 4<6, 6>5, failure
    assert result.metrics["format_failure_rate"] == pytest.approx(1 / 6)
    assert result.metrics["position_flip_rate"] is None
    voted = voted_rows(result.rows)
    assert [(row["chosen_score"], row["rejected_score"], row["correct"]) for row in voted] == [
        (pytest.approx(20 / 3), 5, True), (5, pytest.approx(17 / 3), False)]


@pytest.mark.parametrize(("options", "match"), [
    ({"votes": 3}, "greedy decoding"),
    ({"votes": 3, "temperature": 1.0, "samples": 2}, "disagree"),
    ({"votes": 3, "temperature": 1.0, "scorer": "reward_model"}, "reward model"),
])
def test_eval_judge_refuses_votes_it_cannot_use(options, match):
    with pytest.raises(ConfigError, match=match):
        run_judge_eval(JudgeEvalOptions(model="tiny-random", n=1, **options))


def test_posttrain_eval_judge_votes_on_the_tiny_model():
    done = run_cli("eval", "judge", "--model", "tiny-random", "--n", "2", "--template", "j1", "--votes", "3",
                   "--temperature", "1.0", "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["votes"] == 3 and result["samples"] == 3 and result["judgments"] == 2 * 2 * 3
    assert result["voted"]["judgments"] == 4 and result["voted"]["pairs"] == 2


def test_j1_recipes_name_registered_rewards():
    from pathlib import Path

    from posttrain.config import load_config

    recipes = Path(__file__).parent.parent / "posttrain" / "recipes" / "j1"
    for name in ("pairwise", "pointwise"):
        config = load_config(recipes / f"{name}.yaml")
        build_rewards(config.rl.rewards)  # names and args checked
        assert config.rl.judge is not None and config.rollout.prompts_per_step % 2 == 0
    assert make_preference_pairs(1, seed=1)  # the recipes' task exists


def test_a_step_that_would_split_the_two_orders_of_a_pair_is_refused(tmp_path):
    overrides = tiny_overrides(tmp_path, "odd", method="grpo", **{
        "data.train": "{task: judge_arithmetic, n: 4, seed: 0}", "rl.judge": "{template: j1}",
        "rollout.prompts_per_step": 3, "rollout.samples_per_prompt": 2, "rollout.max_new_tokens": 4,
        "rl.rewards": "{functions: [{name: j1_consistency}]}"})
    done = run_cli("train", "-", *overrides)
    assert done.returncode == 2 and "blocks of 2" in done.stderr and "Traceback" not in done.stderr
