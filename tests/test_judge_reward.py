"""The ``judge`` reward: a generative judge's verdict as an RL reward, cached, with counted format failures."""

from dataclasses import dataclass

import pytest

from posttrain.config import RewardsConfig
from posttrain.errors import ConfigError
from posttrain.judges import judge_model
from posttrain.models import tiny_tokenizer
from posttrain.rewards import build_rewards


@dataclass
class Judged:
    text: str


class ScriptedJudge:
    """Answers each judge prompt with the first scripted reply whose key occurs in the prompt's text."""

    def __init__(self, replies: dict[str, str]):
        self.tokenizer = tiny_tokenizer()
        self.replies = replies
        self.prompts: list[str] = []

    def generate(self, prompt_ids, params):
        out = []
        for ids in prompt_ids:
            text = self.tokenizer.decode(ids)
            self.prompts.append(text)
            out.append(Judged(next(reply for key, reply in self.replies.items() if key in text)))
        return out


@pytest.fixture
def judge(monkeypatch):
    def install(replies: dict[str, str] | ScriptedJudge) -> ScriptedJudge:
        engine = replies if isinstance(replies, ScriptedJudge) else ScriptedJudge(replies)
        monkeypatch.setattr(judge_model, "load_judge_engine", lambda model, kind="hf": engine)
        return engine

    return install


def rewards(**args):
    return build_rewards(RewardsConfig(functions=[{"name": "judge", "args": {"model": "scripted", **args}}],
                                       max_error_rate=1.0))


RECORD = {"reference": "5", "answer": "8 - 3 = 5\n#### 5", "_where": "test:1"}


def test_verifier_mode_scores_yes_and_no_and_caches(judge):
    engine = judge({"good": "Matches the reference. [[YES]]", "bad": "It does not. [[NO]]"})
    batch = rewards().score(["Q?"] * 3, ["good answer", "bad answer", "good answer"], [RECORD] * 3)
    assert batch.components["judge"] == [1.0, 0.0, 1.0]
    assert len(engine.prompts) == 2  # the repeated sample was judged once
    assert "5" in engine.prompts[0] and "good answer" in engine.prompts[0]


class PreferCompletion(ScriptedJudge):
    """A judge that always prefers the answer written by the policy, wherever it stands."""

    def generate(self, prompt_ids, params):
        texts = [self.tokenizer.decode(ids) for ids in prompt_ids]
        return [Judged("[[A]]" if t.index("my answer") < t.index("8 - 3") else "[[B]]") for t in texts]


def test_pairwise_mode_needs_both_orders_to_give_full_reward(judge):
    judge({"": "Answer A is better. [[A]]"})  # position bias: the completion wins one order of two
    assert rewards(mode="pairwise").score(["Q?"], ["my answer"], [RECORD]).components["judge"] == [0.5]
    judge(PreferCompletion({}))  # a new reward set: a new judge, with no cached judgments
    assert rewards(mode="pairwise").score(["Q?"], ["my answer"], [RECORD]).components["judge"] == [1.0]


def test_pointwise_mode_maps_the_score_to_unit_interval(judge):
    judge({"": "Solid work. [[7]]"})
    value = rewards(mode="pointwise").score(["Q?"], ["an answer"], [RECORD]).components["judge"][0]
    assert value == pytest.approx((7 - 1) / 9)


def test_a_judgment_without_verdict_is_a_counted_error(judge):
    judge({"": "I cannot decide."})
    batch = rewards().score(["Q?", "Q?"], ["one", "two"], [RECORD, RECORD])
    assert batch.errors["judge"] == 2 and batch.components["judge"] == [0.0, 0.0]
    assert "no verdict" in batch.error_examples["judge"]


@pytest.mark.parametrize(("args", "match"), [
    ({"mode": "ranking"}, "unknown judge reward mode"),
    ({"mode": "pairwise", "template": "verifier"}, "needs a pairwise template"),
    ({"template": "nope"}, "unknown judge template"),
])
def test_bad_arguments_are_config_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        rewards(**args)


def test_a_judge_model_is_required():
    with pytest.raises(ConfigError, match="missing a required argument: 'model'"):
        build_rewards(RewardsConfig(functions=[{"name": "judge"}]))
