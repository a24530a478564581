"""Best-of-N selectors on hand pools, the accuracy-vs-N curve, and `posttrain eval bon` end to end."""

import json
import random

import pytest

from posttrain.errors import ConfigError, DataError
from posttrain.evals.bon import (
    SELECTORS,
    Candidate,
    best_of_n_curve,
    pointwise_judge_scores,
    select_judge,
    select_laser,
    select_laser_weighted_majority,
    select_majority,
    select_random,
    select_self_certainty,
)
from tests.helpers import read_jsonl, run_cli

RNG = random.Random(0)


def pool_of(answers, certainty=None, laser=None, correct_answer="a"):
    certainty = certainty or [0.0] * len(answers)
    laser = laser or [0.0] * len(answers)
    return [
        Candidate(answer, answer == correct_answer, sc, r_s)
        for answer, sc, r_s in zip(answers, certainty, laser, strict=True)
    ]


def test_majority_picks_the_most_frequent_answer_and_breaks_ties_by_first_appearance():
    assert select_majority(pool_of(["b", "a", "a"]), RNG) == 1
    assert select_majority(pool_of(["c", "b", "b", "c", "a"]), RNG) == 0  # c and b tie: c was seen first
    assert select_majority(pool_of([None, None, "b"]), RNG) == 2  # no answer casts no vote
    assert select_majority(pool_of([None, None]), RNG) == 0


def test_self_certainty_borda_votes():
    # Ranked by SC: b, b, c, a, a -> b: sqrt(5) + sqrt(4) = 4.24, a: sqrt(2) + 1 = 2.41, c: sqrt(3) = 1.73.
    candidates = pool_of(["a", "a", "b", "b", "c"], certainty=[0.1, 0.2, 0.9, 0.8, 0.5])
    assert select_majority(candidates, RNG) == 0  # a and b tie on counts; a came first
    assert select_self_certainty(candidates, RNG) == 2
    # With p = 0.5 two low-ranked votes beat the single most certain one; with p = 2 they do not.
    candidates = pool_of(["a", "a", "b", "c"], certainty=[0.1, 0.2, 0.9, 0.5])
    assert select_self_certainty(candidates, RNG) == 0  # a: sqrt(2) + 1 = 2.41 > b: 2 > c: 1.73
    assert select_self_certainty(candidates, RNG, power=2.0) == 2  # b: 16 > c: 9 > a: 4 + 1


def test_laser_picks_the_highest_score_first_on_ties():
    assert select_laser(pool_of(["a", "b", "c"], laser=[0.2, 0.9, 0.9]), RNG) == 1
    assert select_laser(pool_of([None, "b"], laser=[0.7, 0.1]), RNG) == 0  # any candidate can win


def test_laser_weighted_majority_sums_clipped_scores_per_answer():
    assert select_laser_weighted_majority(pool_of(["a", "b", "b"], laser=[0.9, 0.3, 0.4]), RNG) == 0
    # Raw sums would be a: 0.3 - 0.3 = 0 < b: 0.2; clipped to [0, 1]: a: 0.3 > b: 0.2.
    assert select_laser_weighted_majority(pool_of(["a", "a", "b"], laser=[0.3, -0.3, 0.2]), RNG) == 0
    assert select_laser_weighted_majority(pool_of(["a", "b", "b"], laser=[0.1, 1.5, 0.0]), RNG) == 1
    # All weights clipped to 0: the count decides, as plain majority.
    assert select_laser_weighted_majority(pool_of(["a", "b", "b"], laser=[-1.0, -2.0, -3.0]), RNG) == 1


def test_judge_picks_the_highest_judge_score_first_on_ties():
    pool = [Candidate("a", True, judge_score=s) for s in (0.2, 0.9, 0.9, -1.0)]
    assert select_judge(pool, RNG) == 1


def test_pointwise_judge_scores_map_to_unit_interval_and_mark_failures(monkeypatch):
    from dataclasses import dataclass

    from posttrain.judges import judge_model
    from posttrain.models import tiny_tokenizer

    @dataclass
    class Judged:
        text: str

    class Scripted:
        tokenizer = tiny_tokenizer()

        def generate(self, prompt_ids, params):
            texts = [self.tokenizer.decode(ids) for ids in prompt_ids]
            return [Judged("[[10]]" if "best" in t else "[[1]]" if "worst" in t else "no score") for t in texts]

    monkeypatch.setattr(judge_model, "load_judge_engine", lambda model, kind="hf": Scripted())
    scores = pointwise_judge_scores("scripted-bon", ["Q?"] * 3, ["best", "worst", "other"])
    assert scores == [1.0, 0.0, -1.0]
    with pytest.raises(ConfigError, match="needs a pointwise template"):
        pointwise_judge_scores("scripted-bon", ["Q?"], ["x"], template="rise")


def test_random_selector_reaches_every_candidate():
    rng = random.Random(1)
    picks = {select_random(pool_of(["a", "b", "c"]), rng) for _ in range(100)}
    assert picks == {0, 1, 2}


def hand_pool():
    return [
        # one correct answer among three copies of a wrong one; r_s points at the correct one
        pool_of(["a", "b", "b", "b"], certainty=[0.1, 0.2, 0.3, 0.4], laser=[0.9, 0.1, 0.1, 0.1]),
        pool_of(["a", "a", "a", "a"]),
        pool_of([None, "b", "c", "d"]),
    ]


def test_curve_at_n_1_is_the_mean_accuracy_for_every_selector():
    curve = best_of_n_curve(hand_pool(), [1], list(SELECTORS), draws=3, seed=0)
    mean_accuracy = (1 / 4 + 1 + 0) / 3
    for name in SELECTORS:
        assert curve[name][1] == pytest.approx(mean_accuracy)


def test_curve_at_n_equal_to_the_pool_applies_the_selector_to_the_whole_pool():
    curve = best_of_n_curve(hand_pool(), [4], list(SELECTORS))
    assert curve["majority"][4] == pytest.approx(1 / 3)  # b wins prompt 1, a wins prompt 2
    assert curve["laser"][4] == pytest.approx(2 / 3)
    assert curve["laser_weighted_majority"][4] == pytest.approx(2 / 3)  # a: 0.9 > b: 0.3
    assert curve["self_certainty"][4] == pytest.approx(1 / 3)  # b holds ranks 1-3


def test_curve_is_reproducible_and_between_bounds():
    first = best_of_n_curve(hand_pool(), [1, 2, 4], ["random", "majority"], draws=5, seed=7)
    assert first == best_of_n_curve(hand_pool(), [1, 2, 4], ["random", "majority"], draws=5, seed=7)
    assert all(0.0 <= value <= 1.0 for per_n in first.values() for value in per_n.values())


def test_curve_input_errors():
    with pytest.raises(ConfigError, match="unknown best-of-N selector"):
        best_of_n_curve(hand_pool(), [1], ["oracle"])
    with pytest.raises(DataError, match="only 4 samples, fewer than N = 8"):
        best_of_n_curve(hand_pool(), [1, 8], ["majority"])
    with pytest.raises(ConfigError, match="N values"):
        best_of_n_curve(hand_pool(), [0], ["majority"])


def test_cli_bon_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "bon"
    options = "--model tiny-random --data task:arithmetic --prompts 2 --n 1,2,4 --max-new-tokens 6 --draws 3"
    done = run_cli("eval", "bon", *options.split(), "--out", str(out))
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[1].split()
    defaults = [name for name in SELECTORS if name != "judge"]  # the judge selector needs --judge
    assert header == ["N", *defaults]
    result = json.loads((out / "bon.json").read_text())
    assert result["num_prompts"] == 2 and result["samples_per_prompt"] == 4
    assert set(result["accuracy"]) == set(defaults) and set(result["accuracy"]["laser"]) == {"1", "2", "4"}
    for per_n in result["accuracy"].values():
        assert per_n["1"] == pytest.approx(result["mean_accuracy"])
    assert (out / "bon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 8 and all(row["self_certainty"] >= 0 for row in rows)

    bad = run_cli("eval", "bon", "--model", "tiny-random", "--select", "majority,judges", "--n", "1")
    assert bad.returncode == 2 and "unknown best-of-N selector(s): judges" in bad.stderr
    bad = run_cli("eval", "bon", "--model", "tiny-random", "--select", "majority,judge", "--n", "1")
    assert bad.returncode == 2 and "the judge selector needs a judge model" in bad.stderr
    bad = run_cli("eval", "bon", "--model", "tiny-random", "--n", "1,x")
    assert bad.returncode == 2 and "'1,x' is not a list of integers" in bad.stderr
