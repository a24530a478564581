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
from posttrain.ops.gae import Moments, gae_advantages, masked_moments, token_rewards, whiten
from posttrain.ops.laser import laser_class_weights, laser_loss, laser_loss_sum, self_reward_advantages
from posttrain.ops.logprobs import hidden_logprobs, soft_cap, token_entropy, token_logprobs
from posttrain.ops.policy import (
    BEHAVIOUR_CORRECTIONS,
    POLICY_LOSS_KINDS,
    POLICY_LOSS_TOTALS,
    BehaviourCorrection,
    PolicyLoss,
    behaviour_correction,
    kl_estimate,
    policy_loss,
    policy_loss_sum,
)
from posttrain.ops.preference import (
    PREFERENCE_KINDS,
    PreferenceLoss,
    bradley_terry_loss,
    bradley_terry_losses,
    dpo_loss,
    regression_loss,
    rpo_sum,
    rpo_term,
    squared_errors,
)
from posttrain.ops.scores import laser_score, self_certainty, token_self_certainty
from posttrain.ops.sft import SFT_KINDS, profit_keep_mask, sft_loss, sft_loss_sum, sft_token_weights
from posttrain.ops.value import ValueLoss, value_loss_sum

__all__ = [
    "ADVANTAGE_BASELINES",
    "ADVANTAGE_SCALES",
    "DIVERGENCE_KINDS",
    "BEHAVIOUR_CORRECTIONS",
    "BehaviourCorrection",
    "POLICY_LOSS_KINDS",
    "POLICY_LOSS_TOTALS",
    "PREFERENCE_KINDS",
    "Moments",
    "PolicyLoss",
    "PreferenceLoss",
    "SFT_KINDS",
    "TargetLogprobs",
    "TokenDistill",
    "ValueLoss",
    "bradley_terry_loss",
    "bradley_terry_losses",
    "regression_loss",
    "causal_lm_parts",
    "completion_logprobs",
    "distill_divergence",
    "dpo_loss",
    "extrapolated_token_rewards",
    "gae_advantages",
    "group_advantages",
    "hidden_divergence",
    "hidden_logprobs",
    "kl_estimate",
    "laser_class_weights",
    "laser_loss",
    "laser_loss_sum",
    "laser_score",
    "masked_moments",
    "policy_loss",
    "behaviour_correction",
    "policy_loss_sum",
    "profit_keep_mask",
    "rpo_sum",
    "rpo_term",
    "self_certainty",
    "self_reward_advantages",
    "sft_loss",
    "sft_loss_sum",
    "squared_errors",
    "soft_cap",
    "sft_token_weights",
    "token_divergence",
    "token_entropy",
    "token_logprobs",
    "token_rewards",
    "value_loss_sum",
    "whiten",
    "token_self_certainty",
]
