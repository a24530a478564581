"""Generation engines behind one interface: prompts in; token ids, sampling log-probs, finish reasons out."""

from posttrain.rollout.base import FinishReason, Generation, RolloutEngine, SamplingParams, WeightSyncEngine
from posttrain.rollout.hf import HFEngine, pad_token_id, stop_token_ids
from posttrain.rollout.vllm import VLLMEngine
from posttrain.rollout.vllm_support import vllm_available

__all__ = ["FinishReason", "Generation", "HFEngine", "RolloutEngine", "SamplingParams", "VLLMEngine",
           "WeightSyncEngine", "pad_token_id", "stop_token_ids", "vllm_available"]
