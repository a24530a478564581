"""LaSeR class weights, self-rewarding MSE and advantage integration against hand computations."""

import math

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import DataError
from posttrain.models import tiny_tokenizer
from posttrain.ops import laser_class_weights, laser_loss, self_reward_advantages
from posttrain.trainers.distributed import Processes
from posttrain.trainers.laser import LaserPlugin


def test_class_weights_balance_the_valid_rows():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    valid = torch.tensor([True, True, True, True, False, True])
    # valid: 1 correct, 4 incorrect, N = 5 → w = 5/(2·1) = 2.5 and 5/(2·4) = 0.625; the truncated row gets 0
    expected = torch.tensor([2.5, 0.625, 0.625, 0.625, 0.0, 0.625])
    torch.testing.assert_close(laser_class_weights(rewards, valid), expected)
    # each class carries half of the total weight N
    assert laser_class_weights(rewards, valid).sum().item() == pytest.approx(5.0)


def test_class_weights_with_an_empty_class_or_no_valid_row():
    rewards = torch.tensor([0.0, 0.0, 1.0])
    valid = torch.tensor([1, 1, 0])
    # only incorrect valid rows: N/(2·N) = 1/2 each, as the official code
    torch.testing.assert_close(laser_class_weights(rewards, valid), torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(laser_class_weights(rewards, torch.zeros(3)), torch.zeros(3))


def test_class_weights_need_binary_rewards_on_valid_rows():
    with pytest.raises(DataError, match="binary verifier reward"):
        laser_class_weights(torch.tensor([1.0, 0.5]), torch.tensor([1, 1]))
    # a truncated row may carry any reward
    torch.testing.assert_close(
        laser_class_weights(torch.tensor([1.0, 0.5]), torch.tensor([1, 0])), torch.tensor([0.5, 0.0])
    )


def test_laser_loss_is_a_weighted_mean_over_all_rows():
    scores = torch.tensor([0.9, 0.2, -0.1, 0.5], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    valid = torch.tensor([1, 1, 1, 0])
    # weights over valid rows (1 correct, 2 incorrect, N = 3): 1.5, 0.75, 0.75, and 0 for the truncated row
    expected = (1.5 * 0.1**2 + 0.75 * 0.2**2 + 0.75 * 0.1**2) / 4  # the truncated row counts in the mean
    loss = laser_loss(scores, rewards, valid)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # d/ds_i = 2·w_i·(s_i − r_i)/B
    torch.testing.assert_close(
        scores.grad, torch.tensor([2 * 1.5 * -0.1, 2 * 0.75 * 0.2, 2 * 0.75 * -0.1, 0.0]) / 4
    )
    unbalanced = laser_loss(scores, rewards, valid, balanced=False)
    assert unbalanced.item() == pytest.approx((0.1**2 + 0.2**2 + 0.1**2) / 4)


def test_laser_loss_uses_the_generation_batch_weights_for_a_micro_batch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    valid = torch.ones(4)
    weights = laser_class_weights(rewards, valid)  # 2.0, 2/3, 2/3, 2/3
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5])
    micro = laser_loss(scores[:2], rewards[:2], valid[:2], class_weights=weights[:2])
    assert micro.item() == pytest.approx((2.0 * 0.25 + (2 / 3) * 0.25) / 2)


def test_self_reward_advantages_by_hand():
    # group 1: scores clip to [1, 0.2] and the truncated row scores 0 → mean 0.4, unbiased std sqrt(0.28)
    # group 2: clipped scores [0.3, 0.32, 0.31] have std 0.01 ≤ 0.1 → the original advantages are kept
    scores = torch.tensor([1.5, 0.2, 0.9, 0.3, 0.32, 0.31])
    valid = torch.tensor([1, 1, 0, 1, 1, 1])
    advantages = torch.tensor([1.0, -0.5, -0.5, 0.2, 0.3, -0.5])
    std = math.sqrt((0.6**2 + 0.2**2 + 0.4**2) / 2)
    self_advantages = torch.tensor([0.6 / std, -0.2 / std, -0.4 / std])
    expected = torch.cat([0.9 * advantages[:3] + 0.1 * self_advantages, advantages[3:]])
    result = self_reward_advantages(scores, valid, advantages, group_size=3, tau=0.1, filter_threshold=0.1)
    torch.testing.assert_close(result, expected)


def test_self_reward_advantages_with_tau_one_are_the_normalized_scores():
    scores = torch.tensor([-0.5, 1.0, 0.25, 0.75])
    advantages = torch.zeros(4)
    result = self_reward_advantages(scores, torch.ones(4), advantages, group_size=4, tau=1.0)
    clipped = torch.tensor([0.0, 1.0, 0.25, 0.75])
    torch.testing.assert_close(result, (clipped - clipped.mean()) / clipped.std())


def test_self_reward_advantages_reject_groups_of_one():
    with pytest.raises(ValueError, match="groups of G >= 2"):
        self_reward_advantages(torch.zeros(3), torch.ones(3), torch.zeros(3), group_size=1)
    with pytest.raises(ValueError, match="groups of G >= 2"):
        self_reward_advantages(torch.zeros(3), torch.ones(3), torch.zeros(3), group_size=2)


@pytest.mark.parametrize("balanced", [True, False])
def test_the_plugin_weights_follow_rl_laser_balanced(balanced):
    config = load_config(None, ["method=grpo", "rl.laser.enabled=true", f"rl.laser.balanced={str(balanced).lower()}"])
    plugin = LaserPlugin.from_config(config, ["math"], tiny_tokenizer())
    finished = torch.tensor([True, True, True, False])
    extras = plugin.step_extras({"math": [1.0, 0.0, 0.0, 1.0]}, finished, Processes("cpu"), slice(0, 4), step=0)
    expected = laser_class_weights(torch.tensor([1.0, 0.0, 0.0, 1.0]), finished) if balanced else finished.float()
    torch.testing.assert_close(extras.class_weights, expected)
    assert balanced == (not torch.equal(extras.class_weights, finished.float()))
