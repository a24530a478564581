"""Pure tensor math: log-probabilities, entropies and losses. Each formula lives in one function here."""

from posttrain.ops.advantages import ADVANTAGE_BASELINES, ADVANTAGE_SCALES, group_advantages
from posttrain.ops.distill import (
    DIVERGENCE_KINDS,
    TokenDistill,
    distill_divergence,
    extrapolated_token_rewards,
    hidden_divergence,
    token_divergence,
)
from posttrain.ops.forward import TargetLogprobs, causal_lm_parts, completion_logprobs
from posttrain.ops.laser import laser_class_weights, laser_loss, self_reward_advantages
from posttrain.ops.logprobs import hidden_logprobs, soft_cap, token_entropy, token_logprobs
from posttrain.ops.policy import POLICY_LOSS_KINDS, PolicyLoss, k3_kl, policy_loss
from posttrain.ops.preference import (
    PREFERENCE_KINDS,
    PreferenceLoss,
    bradley_terry_loss,
    dpo_loss,
    regression_loss,
    rpo_term,
)
from posttrain.ops.scores import laser_score, self_certainty, token_self_certainty
from posttrain.ops.sft import SFT_KINDS, profit_keep_mask, sft_loss, sft_token_weights

__all__ = [
    "ADVANTAGE_BASELINES",
    "ADVANTAGE_SCALES",
    "DIVERGENCE_KINDS",
    "POLICY_LOSS_KINDS",
    "PREFERENCE_KINDS",
    "PolicyLoss",
    "PreferenceLoss",
    "SFT_KINDS",
    "TargetLogprobs",
    "TokenDistill",
    "bradley_terry_loss",
    "regression_loss",
    "causal_lm_parts",
    "completion_logprobs",
    "distill_divergence",
    "dpo_loss",
    "extrapolated_token_rewards",
    "group_advantages",
    "hidden_divergence",
    "hidden_logprobs",
    "k3_kl",
    "laser_class_weights",
    "laser_loss",
    "laser_score",
    "policy_loss",
    "profit_keep_mask",
    "rpo_term",
    "self_certainty",
    "self_reward_advantages",
    "sft_loss",
    "soft_cap",
    "sft_token_weights",
    "token_divergence",
    "token_entropy",
    "token_logprobs",
    "token_self_certainty",
]
