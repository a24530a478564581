"""Rewards as batched objects (issue #15): TRL's batched convention, the per-sample adapter, ``None`` as "not
applicable", per-run state (no globals) checkpointed with the reward set, one model call per batch."""

from __future__ import annotations

import textwrap
import time

import pytest

from posttrain import judges, rewards
from posttrain.judges import grm_scores, judge_model, metarm
from posttrain.rewards import (
    RewardsConfig,
    RewardSpec,
    batched,
    build_rewards,
    columns_of,
)
from posttrain.rewards.base import is_batched
from tests.test_judge_reward import ScriptedJudge

TIMEOUT = 0.3


def score(*names, completions=("a", "b"), records=None, weights=None, args=None, **settings):
    specs = [RewardSpec(name=name, weight=(weights or {}).get(name, 1.0), args=(args or {}).get(name, {}))
             for name in names]
    config = RewardsConfig(functions=specs, **settings)
    records = records or [{} for _ in completions]
    return build_rewards(config).score(["p"] * len(completions), list(completions), records)


# ------------------------------------------------------------------------------------------ the two forms


def test_the_form_rule_marker_first_then_a_completions_parameter():
    def trl_style(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    def old_style(prompt, completion, record):
        return 1.0

    def unusual(prompts, texts, **kwargs):
        return [1.0] * len(texts)

    assert is_batched(trl_style) and not is_batched(old_style) and not is_batched(unusual)
    assert is_batched(batched(unusual))
    old_style.batched = True  # an explicit marker wins over the signature
    assert is_batched(old_style)


def test_a_batched_user_function_gets_columns_args_and_is_called_once_per_batch(tmp_path):
    (tmp_path / "trl_rewards.py").write_text(textwrap.dedent("""
        calls = []

        def contains(prompts, completions, reference, word="pear", **kwargs):
            calls.append((list(prompts), list(completions), list(reference), sorted(kwargs)))
            return [float(word in c and r in c) for c, r in zip(completions, reference)]

        def named_only(completions, reference):
            return [float(r in c) for c, r in zip(completions, reference)]
    """))
    config = RewardsConfig(functions=[
        RewardSpec(path="trl_rewards.py:contains", weight=2.0, args={"word": "apple"}),
        RewardSpec(path="trl_rewards.py:named_only")])
    reward_set = build_rewards(config, base_dir=tmp_path)
    records = [{"reference": "1", "extra": "x"}, {"reference": "2"}, {"reference": "3", "completion_tokens": 4}]
    batch = reward_set.score(["p0", "p1", "p2"], ["1 apple", "2 pears", "one apple"], records)
    assert batch.components == {"contains": [1.0, 0.0, 0.0], "named_only": [1.0, 1.0, 0.0]}
    assert batch.total.tolist() == [3.0, 1.0, 0.0]
    module = reward_set.rewards[0].reward.fn.__globals__
    assert module["calls"] == [(["p0", "p1", "p2"], ["1 apple", "2 pears", "one apple"], ["1", "2", "3"],
                                ["completion_tokens", "extra"])]  # one call; missing fields are None


def test_an_old_per_sample_function_keeps_working_with_its_own_records(registered):
    seen = []

    def per_sample(prompt, completion, record, bonus=0.0):
        seen.append(record)
        return record["score"] + bonus  # a KeyError where the record lacks the field

    name = registered("old_form_test", per_sample)
    batch = score(name, completions=("a", "b"), records=[{"score": 1}, {}], args={name: {"bonus": 0.5}},
                  max_error_rate=1.0)
    assert seen == [{"score": 1}, {}]  # each call gets the sample's exact record
    assert batch.components["old_form_test"] == [1.5, 0.0]
    assert batch.error_examples["old_form_test"] == "sample 1: raised KeyError: 'score'"
    adapter = build_rewards(RewardsConfig(functions=[{"name": name}])).rewards[0].reward  # callable in the batched form
    assert adapter(["p", "p"], ["a", "b"], **columns_of([{"score": 2}, {"score": 3}])) == [2, 3]


# ------------------------------------------------------------------------------------------- None


def test_none_is_not_applicable_left_out_of_the_total_and_no_error(registered):
    def sometimes(prompts, completions, **kwargs):
        return [None if c.startswith("skip") else 1.0 for c in completions]

    def never(prompts, completions, **kwargs):
        return [None] * len(completions)

    first = registered("sometimes_test", sometimes)
    second = registered("never_test", never)
    batch = score(first, second, weights={first: 2.0, second: 5.0}, completions=("a", "skip", "b"))
    assert batch.total.tolist() == [2.0, 0.0, 2.0]  # nansum over functions; nothing applies to sample 1: 0
    assert batch.errors == {"sometimes_test": 0, "never_test": 0} and batch.error_rate == 0.0
    assert batch.components["sometimes_test"] == [1.0, 0.0, 1.0]
    assert batch.applicable["sometimes_test"] == [True, False, True]
    metrics = batch.metrics()
    assert metrics["reward/sometimes_test"] == 1.0  # the mean over the samples it applies to
    assert metrics["reward/sometimes_test/not_applicable"] == 1.0
    assert metrics["reward/never_test"] == 0.0 and metrics["reward/never_test/not_applicable"] == 3.0


def test_none_from_a_per_sample_function_stays_an_error(registered):
    spec = registered("old_none_test", lambda prompt, completion, record: None)
    batch = score(spec, max_error_rate=1.0)
    assert batch.error_examples["old_none_test"] == "sample 0: returned NoneType None, not a real number"


# ------------------------------------------------------------------------------- batched failures


@pytest.mark.parametrize("result, problem", [
    ([1.0], "returned 1 values for 2 completions, not one number or None per completion"),
    (3.0, "returned float 3.0 for 2 completions, not one number or None per completion"),
])
def test_a_batched_result_of_the_wrong_shape_fails_every_sample(registered, result, problem):
    spec = registered("wrong_shape_test", lambda prompts, completions: result)
    batch = score(spec, max_error_rate=1.0)
    assert batch.errors == {"wrong_shape_test": 2} and batch.error_rate == 1.0
    assert batch.error_examples["wrong_shape_test"] == f"sample 0: {problem}"


def test_bad_entries_fail_their_sample_alone_and_name_it(registered):
    spec = registered("bad_entry_test", lambda prompts, completions: [1.0, "x", float("nan"), ValueError("no verdict")])
    batch = score(spec, completions=("a", "b", "c", "d"), max_error_rate=1.0, on_error=-1.0)
    assert batch.components["bad_entry_test"] == [1.0, -1.0, -1.0, -1.0]
    assert batch.errors == {"bad_entry_test": 3}
    assert batch.error_examples["bad_entry_test"] == "sample 1: returned str 'x', not a real number"


def test_a_raising_or_exiting_batched_function_fails_the_batch_and_scoring_goes_on(registered):
    def exits(prompts, completions):
        raise SystemExit(2)

    spec = registered("exits_batched_test", exits)
    fine = registered("fine_batched_test", lambda prompts, completions: [1.0] * len(completions))
    batch = score(spec, fine, max_error_rate=1.0)
    assert batch.errors == {"exits_batched_test": 2, "fine_batched_test": 0}
    assert batch.error_examples["exits_batched_test"] == \
        "sample 0: raised SystemExit: sys.exit(2) was called in the reward function"


def test_the_timeout_limits_one_batched_call(registered):
    calls = []

    def slow(prompts, completions):
        calls.append(len(completions))
        time.sleep(100)

    spec = registered("slow_batched_test", slow)
    batch = score(spec, completions=("a", "b", "c"), max_error_rate=1.0, timeout=TIMEOUT)
    assert calls == [3]  # one call for the batch, not one per sample
    assert batch.errors == {"slow_batched_test": 3}
    assert batch.error_examples["slow_batched_test"] == f"sample 0: timed out after {TIMEOUT:g} s"


# ----------------------------------------------------------------------------------- the judge reward


RECORDS = [{"reference": str(i), "answer": f"#### {i}", "_where": f"test:{i}"} for i in range(4)]


class CountingJudge(ScriptedJudge):
    def __init__(self, replies):
        super().__init__(replies)
        self.calls = 0

    def generate(self, prompt_ids, params):
        self.calls += 1
        return super().generate(prompt_ids, params)


class FailingJudge:
    tokenizer = ScriptedJudge({}).tokenizer

    def generate(self, prompt_ids, params):
        raise AssertionError("every judgment should have come from the restored cache")


def judge_rewards(mode="verifier"):
    return build_rewards(RewardsConfig(functions=[{"name": "judge", "args": {"model": "scripted", "mode": mode}}],
                                       max_error_rate=1.0))


@pytest.mark.parametrize("mode, prompts_per_sample", [("verifier", 1), ("pairwise", 2)])
def test_the_judge_reward_judges_a_batch_in_one_model_call(monkeypatch, mode, prompts_per_sample):
    engine = CountingJudge({"good": "[[YES]] [[A]]", "": "[[NO]] [[B]]"})
    monkeypatch.setattr(judge_model, "load_judge_engine", lambda model, kind="hf": engine)
    completions = ["good 0", "bad 1", "good 2", "bad 3", "good 0"]  # the repeat is judged once
    batch = judge_rewards(mode).score(["Q?"] * 5, completions, [*RECORDS, RECORDS[0]])
    assert engine.calls == 1 and len(engine.prompts) == 4 * prompts_per_sample
    assert batch.errors["judge"] == 0 and len(batch.components["judge"]) == 5


def test_a_record_without_reference_fails_its_sample_alone(monkeypatch):
    monkeypatch.setattr(judge_model, "load_judge_engine", lambda model, kind="hf": ScriptedJudge({"": "[[YES]]"}))
    batch = judge_rewards().score(["Q?"] * 2, ["one", "two"], [RECORDS[0], {"_where": "test:9"}])
    assert batch.components["judge"] == [1.0, 0.0] and batch.errors["judge"] == 1
    assert batch.error_examples["judge"].startswith("sample 1: raised DataError: test:9: the record has no")


def test_the_judge_cache_round_trips_through_the_reward_sets_state(monkeypatch, tmp_path):
    first_engine = ScriptedJudge({"good": "[[YES]]", "": "[[NO]]"})
    monkeypatch.setattr(judge_model, "load_judge_engine", lambda model, kind="hf": first_engine)
    first = judge_rewards()
    values = first.score(["Q?"] * 2, ["good", "bad"], RECORDS[:2]).components["judge"]
    first.save_state(tmp_path)
    assert (tmp_path / "rewards" / "judge" / "judgments.json").is_file()
    monkeypatch.setattr(judge_model, "load_judge_engine", lambda model, kind="hf": FailingJudge())
    second = judge_rewards()
    second.load_state(tmp_path)
    assert second.score(["Q?"] * 2, ["good", "bad"], RECORDS[:2]).components["judge"] == values == [1.0, 0.0]


def test_two_runs_in_one_process_share_no_judge_state(monkeypatch):
    engines = iter([ScriptedJudge({"": "[[YES]]"}), ScriptedJudge({"": "[[NO]]"})])
    monkeypatch.setattr(judge_model, "load_judge_engine", lambda model, kind="hf": next(engines))
    run_a, run_b = judge_rewards(), judge_rewards()
    # the same model name, sample and record: each run judges with its own judge and cache
    assert run_a.score(["Q?"], ["same"], RECORDS[:1]).components["judge"] == [1.0]
    assert run_b.score(["Q?"], ["same"], RECORDS[:1]).components["judge"] == [0.0]
    assert run_a.rewards[0].reward.judge is not run_b.rewards[0].reward.judge


# ------------------------------------------------------------------------------------ the MetaRM reward


def grm_completion(choice: str) -> str:
    return f"<critics>Step 1 is wrong: 7 - 4 is 3.</critics><choice>[[{choice}]]</choice>"


def grm_records():
    common = {"question": "7 - 4?", "response_a": "3", "response_b": "4"}
    return [{**common, "gold": "A", "critique": "Step 1 is wrong: 7 - 4 is 3."}, {**common, "gold": "A"},
            {**common, "gold": "B"}, {**common, "gold": "A"}]


def test_the_metarm_reward_scores_a_batch_in_one_forward_and_round_trips_its_state(tmp_path, monkeypatch):
    from tests.test_metarm import final_weights, train_metarm

    run_dir, _ = train_metarm(tmp_path, steps=1)
    config = RewardsConfig(functions=[{"name": "metarm", "args": {"model": str(final_weights(run_dir)), "lr": 1e-2}}])
    calls = []
    score_texts = metarm.MetaRM.score
    monkeypatch.setattr(metarm.MetaRM, "score", lambda self, texts: calls.append(len(texts)) or score_texts(self, texts))
    first = build_rewards(config)
    completions = [grm_completion(c) for c in "AAAA"]  # sample 2 (gold B) is wrong
    batch = first.score(["Q"] * 4, completions, grm_records())
    assert calls[0] == 2  # the two right verdicts on records without a critique, in one call
    assert batch.extra["metarm/updated_examples"] == 1.0  # after_batch trained on the critique-bearing one
    second = build_rewards(config)  # another run in the same process: the first one's update does not reach it
    assert second.score(["Q"] * 4, completions, grm_records()).components == batch.components
    first_model = first.rewards[0].reward.metarm
    assert first_model is not second.rewards[0].reward.metarm
    first.save_state(tmp_path / "state")
    assert (tmp_path / "state" / "rewards" / "metarm" / "metarm.pt").is_file()
    third = build_rewards(config)
    third.load_state(tmp_path / "state")
    restored = third.rewards[0].reward.metarm
    texts = ["<conv_his>x</conv_his>", "another text"]
    assert restored.score(texts) == first_model.score(texts)
    assert restored.optimizer is not None and restored.optimizer.state_dict()["state"]


# ---------------------------------------------------------------------------------------- no globals


def test_rewards_and_judges_keep_no_run_state_in_module_globals():
    """Module-level mutable values of rewards/ and judges/ are registries and constant tables only."""
    import importlib
    import pkgutil

    allowed = {"REWARDS", "TEMPLATES",  # registries
               "DEFAULT_TEMPLATES", "RIGHT_VERDICT", "PUNCTUATION", "PLACEHOLDERS", "REWARDBENCH_SUBSETS",
               "REWARDBENCH_WEIGHTS", "CATEGORY_OF_SUBSET"}  # constant tables
    found = set()
    for package in (rewards, judges):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, value in vars(module).items():
                if isinstance(value, dict | list | set) and not name.startswith("__"):
                    found.add(name)
                if hasattr(value, "cache_info") and getattr(value, "__module__", None) == module.__name__:
                    found.add(name)  # an lru_cache: a process-wide cache
    assert found <= allowed, f"module-level state: {sorted(found - allowed)}"
    assert not hasattr(grm_scores, "_METARMS") and not hasattr(judge_model, "CACHE")
