"""Rewards: batched reward objects ``(prompts, completions, **columns) -> list[float | None]`` (TRL's convention),
registered by name and combined with weights; per-sample functions ``(prompt, completion, record) -> float`` keep
working through an adapter (:mod:`posttrain.rewards.base` states the rule).

Importing this package registers the built-in rewards ``math``, ``format``, ``length``, ``judge`` and the
generative-reward-model rewards ``verdict``, ``s2j``, ``critique_similarity`` and ``metarm``, J1's judge
rewards ``j1_verdict``, ``j1_consistency`` and ``j1_pointwise``, and ``likelihood`` (the policy's own
log-probability of the reference answer after its reasoning).
"""

from posttrain.config import RewardsConfig, RewardSpec
from posttrain.rewards import builtin, grm, j1, judge, likelihood  # noqa: F401  (registers the built-in rewards)
from posttrain.rewards.base import Reward, batched, columns_of
from posttrain.rewards.custom import load_reward_function
from posttrain.rewards.registry import REWARDS, build_rewards, check_rewards_for_records, register_reward
from posttrain.rewards.scoring import RewardBatch, RewardError, RewardSet

__all__ = [
    "REWARDS",
    "Reward",
    "RewardBatch",
    "RewardError",
    "RewardSet",
    "RewardSpec",
    "RewardsConfig",
    "batched",
    "build_rewards",
    "check_rewards_for_records",
    "columns_of",
    "load_reward_function",
    "register_reward",
]
