"""Rewards: functions (prompt, completion, record) -> float, registered by name and combined with weights.

Importing this package registers the built-in rewards ``math``, ``format``, ``length``, ``judge`` and the
generative-reward-model rewards ``verdict``, ``s2j``, ``critique_similarity`` and ``metarm``.
"""

from posttrain.config import RewardsConfig, RewardSpec
from posttrain.rewards import builtin, grm, judge  # noqa: F401  (registers the built-in rewards)
from posttrain.rewards.custom import load_reward_function
from posttrain.rewards.registry import (
    REWARDS,
    RewardBatch,
    RewardError,
    RewardSet,
    build_rewards,
    check_rewards_for_records,
    register_reward,
)

__all__ = [
    "REWARDS",
    "RewardBatch",
    "RewardError",
    "RewardSet",
    "RewardSpec",
    "RewardsConfig",
    "build_rewards",
    "check_rewards_for_records",
    "load_reward_function",
    "register_reward",
]
