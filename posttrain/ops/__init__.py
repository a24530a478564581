"""Pure tensor math: log-probabilities, entropies and losses. Each formula lives in one function here."""

from posttrain.ops.forward import TargetLogprobs, causal_lm_parts, completion_logprobs
from posttrain.ops.logprobs import hidden_logprobs, token_entropy, token_logprobs
from posttrain.ops.sft import SFT_KINDS, profit_keep_mask, sft_loss, sft_token_weights

__all__ = [
    "SFT_KINDS",
    "TargetLogprobs",
    "causal_lm_parts",
    "completion_logprobs",
    "hidden_logprobs",
    "profit_keep_mask",
    "sft_loss",
    "sft_token_weights",
    "token_entropy",
    "token_logprobs",
]
