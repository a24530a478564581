"""The ``likelihood`` reward: log π_θ(a* | p, z) of the reference answer after the policy's own reasoning."""

import json
from pathlib import Path

import pytest
import torch

from posttrain.config import RewardsConfig, load_config
from posttrain.data import encode_prompts
from posttrain.errors import ConfigError
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.rewards import build_rewards
from posttrain.rewards.likelihood import LikelihoodReward, reasoning_before_answer
from posttrain.trainers.run import train
from tests.helpers import train_steps
from tests.rl_helpers import rl_overrides

RECIPES = Path(__file__).resolve().parents[1] / "posttrain" / "recipes"


def test_the_reasoning_is_cut_before_its_own_final_answer_line():
    assert reasoning_before_answer("2 + 3 = 5.\n#### 5", "####") == "2 + 3 = 5."
    assert reasoning_before_answer("a\n  #### 4\nmore #### 9", "####") == "a"
    assert reasoning_before_answer("no final line here ####7 inline  ", "####") == "no final line here ####7 inline"
    assert reasoning_before_answer("keep all\n#### 1", None) == "keep all\n#### 1"


def _hand_logprob(model, tokenizer, prompt, context, answer):
    """Σ log p(answer tokens) from one unpadded forward's full logits."""
    prompt_ids = encode_prompts([{"prompt": prompt}], tokenizer)[0]
    context_ids = tokenizer.encode(context, add_special_tokens=False)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    ids = torch.tensor([[*prompt_ids, *context_ids, *answer_ids]])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].double().log_softmax(-1)
    start = len(prompt_ids) + len(context_ids)
    return sum(float(logprobs[position - 1, ids[0, position]]) for position in range(start, ids.shape[1]))


def test_the_reward_is_the_teacher_forced_log_probability_of_the_reference():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    reward = build_rewards(RewardsConfig.model_validate({"functions": [{"name": "likelihood",
                                                                        "args": {"batch_size": 2}}]}))
    reward.prepare(tokenizer, policy=model)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "And 7 - 4?"}],
               "plain text prompt"]
    completions = ["2 + 3 = 5.\n#### 5", "7 minus 4 is a longer line of reasoning, 3.\n#### 4", "just 12"]
    references = ["5", "3", "12"]
    batch = reward.score(["q"] * 3, completions, [{"prompt": p, "reference": r} for p, r in zip(prompts, references,
                                                                                              strict=True)])
    expected = [_hand_logprob(model, tokenizer, prompt, reasoning_before_answer(text, "####") + "\n#### ", answer)
                for prompt, text, answer in zip(prompts, completions, references, strict=True)]
    assert batch.errors["likelihood"] == 0
    assert batch.components["likelihood"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert all(value < 0 for value in expected)
    assert model.training  # restored after scoring in eval mode


def test_a_custom_answer_template_and_no_policy():
    model, tokenizer = tiny_model(), tiny_tokenizer()
    reward = LikelihoodReward(answer_template=" The answer is {reference}", answer_marker=None)
    with pytest.raises(ConfigError, match="none was attached"):
        reward(["q"], ["x"], prompt=["q"], reference=["1"])
    reward.prepare(tokenizer)
    reward.attach_policy(model)
    (value,) = reward(["q"], ["I think\n#### 2"], prompt=["q"], reference=["7"])
    assert value == pytest.approx(_hand_logprob(model, tokenizer, "q", "I think\n#### 2 The answer is ", "7"), rel=1e-4)


@pytest.mark.parametrize("args", [{"answer_template": "#### {reference} done"}, {"answer_template": "####"},
                                  {"batch_size": 0}])
def test_bad_likelihood_args_are_config_errors(args):
    with pytest.raises(ConfigError, match="rewards.functions"):
        build_rewards(RewardsConfig.model_validate({"functions": [{"name": "likelihood", "args": args}]}))


def test_grpo_trains_on_the_likelihood_reward_of_its_own_policy(tmp_path):
    rewards = json.dumps({"functions": [{"name": "likelihood"}]})
    config = load_config(None, rl_overrides(tmp_path, "likelihood", f"rl.rewards={rewards}", "train.max_steps=2"))
    train(config)
    steps = train_steps(config.run_dir)
    assert len(steps) == 2
    assert all(step["reward"] < 0 for step in steps.values())  # a log-probability


def test_the_likelihood_recipe_loads():
    config = load_config(RECIPES / "likelihood_arithmetic.yaml")
    weights = {spec.name: spec.weight for spec in config.rl.rewards.functions}
    assert weights == {"likelihood": 1.0, "math": 0.0}  # only the likelihood trains; accuracy is logged
