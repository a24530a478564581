"""How the on-policy methods (``grpo``, ``ppo``, ``distill``) sample their completions (``rollout:``):
the engine (HF generate, vLLM in this process, or a rollout server), prompts and samples per step, the sampling
distribution, and the engine's batch, dtype and memory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.config.sections import Section


class RolloutConfig(Section):
    """How every on-policy method (``grpo``, ``distill``) samples its completions: ``prompts_per_step`` prompts,
    ``samples_per_prompt`` completions each, from ``softmax(logits / temperature)`` restricted by ``top_k`` and
    ``top_p`` (:class:`posttrain.rollout.SamplingParams`), by the rollout ``engine``."""

    engine: Literal["hf", "vllm", "auto", "server"] = Field(
        "auto", description="hf: the learner's own model.generate; vllm: a vLLM engine in this process, its weights "
        "synced from the learner before every rollout; auto: vllm when it is installed and supports the model, "
        "else hf (the run prints which and why); server: the engine of `posttrain rollout serve` at server_url, "
        "its weights pushed over torch.distributed (gloo, or NCCL on CUDA)")
    server_url: str | None = Field(None, description="engine server: the address of `posttrain rollout serve`, "
                                   "e.g. http://127.0.0.1:8765")
    prompts_per_step: int = Field(4, gt=0, description="prompts per step (all processes together)")
    samples_per_prompt: int | None = Field(None, gt=0, description="completions per prompt; grpo's group size G "
                                           "(default 8), distill's samples (default 1)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(64, gt=0, description="hf: sequences generated at once")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="the engine's weights: hf samples with the weights cast to this type for the call (null = "
        "the model's own), vllm runs in it (null = bfloat16). The learner keeps its weights, and the importance "
        "ratio is taken against the engine's sampling log-probs (docs/benchmarks.md has what each costs here)")
    kv_cache_gib: float | None = Field(None, gt=0, description="vllm: KV cache size in GiB (null = sized for one "
                                       "step's sequences, twice over, at least 0.25 GiB)")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm on CUDA: the share of GPU memory the "
                                          "engine may take (the learner shares the device)")
    sleep: bool = Field(True, description="vllm on CUDA: free the KV cache and offload the engine's weights during "
                        "the update, wake for the next rollout")
