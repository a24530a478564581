"""The sections every method shares: the optimizer (``optim:``), the loop (``train:``, with
``train.memory=lean`` and its :data:`LEAN_SETTINGS`), several processes (``dist:``), the SFT loss (``sft:``), the
held-out evaluation (``eval:``) and the metric trackers (``logging:``).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from posttrain.config.sections import Section


class OptimConfig(Section):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float | None = Field(1.0, description="clip the global gradient norm to this; null or 0: no "
                                        "clipping (the default with optim.update_in_backward, which cannot clip)")
    state_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="precision of AdamW's two moments: float32 (torch.optim.AdamW) or bfloat16 with "
        "stochastic rounding, which halves the optimizer's memory (posttrain.trainers.optimizer)")
    update_in_backward: bool = Field(
        False, description="apply each parameter's AdamW update inside the last backward of an update, as soon as "
        "its gradient is ready, and free that gradient (posttrain.trainers.optimizer.AdamWInBackward): the "
        "gradients of the whole model never exist at once in that backward. Global-norm clipping is then "
        "impossible (max_grad_norm must be unset or 0), and it runs on one process only")


# train.memory=lean: what it turns on, unless the recipe sets the key itself (RunConfig._memory_mode).
# The token budget stays at 600: on the SFT benchmark (8 × 256 tokens, docs/benchmarks.md) lean peaked at 2706 MB
# with 600-token passes and 2668 MB with one pass (0). With several passes the update inside backward saves
# little (2706 against 2720 MB after backward: the gradients live whole between passes); with one pass it saves
# more (2668 against 2889 MB) but the pass's activations take most of it back, and they grow with the batch
# where 600-token passes keep them bounded.
LEAN_MICRO_BATCH_TOKENS = 600
# On-policy methods sample with HF generate from the learner's own weights: vLLM's second copy of the weights, its
# KV cache and runtime cost GRPO 3702 against 2687 MB (0.98× against 0.71× TRL's peak RSS, at 1.51× against 1.19×
# its speed) and distillation 3692 against 2759 MB (docs/benchmarks.md). rollout.engine set in the recipe wins.
LEAN_ROLLOUT_ENGINE = "hf"
LEAN_SETTINGS = {("optim", "state_dtype"): "bfloat16", ("optim", "update_in_backward"): True,
                 ("train", "gradient_checkpointing"): True, ("train", "micro_batch_tokens"): LEAN_MICRO_BATCH_TOKENS}


class TrainConfig(Section):
    memory: Literal["standard", "lean"] = Field(
        "standard", description="lean: turn on what saves memory without changing results beyond the documented "
        "tolerance, unless the recipe sets the key itself: bf16 optimizer moments (optim.state_dtype), the update "
        "inside backward (optim.update_in_backward, which turns clipping off: optim.max_grad_norm), activation "
        "checkpointing (train.gradient_checkpointing), token-budgeted passes (train.micro_batch_tokens) and, for "
        "grpo and distill, rollouts from HF generate (rollout.engine=hf: no second copy of the weights); the run's "
        "config.yaml shows the values in force (docs/benchmarks.md has the measurements)")
    batch_size: int = Field(8, gt=0, description="examples per process per micro-step")
    grad_accum: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    log_every: int = Field(1, gt=0)
    save_every: int = Field(0, ge=0, description="checkpoint every N optimizer steps; 0 = only at the end")
    save_final: bool = True
    final_checkpoint: Literal["full", "weights"] = Field(
        "full", description="what the checkpoint at the run's end holds. full: everything a longer run needs to "
        "continue exactly (optimizer, scheduler, random and method states). weights: the model, tokenizer and "
        "trainer state only - about a third of the size with AdamW in fp32, still the start of another run "
        "(model.name=CHECKPOINT/model, a pipeline stage's `from`), but a longer max_steps can no longer continue "
        "it (TRL's save_only_model, for the last checkpoint only: one killed mid-run still resumes exactly)")
    keep_checkpoints: int = Field(2, gt=0)
    eval_every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only at start and end")
    eval_at_start: bool = True
    resume: str = Field(
        "auto", description="auto (latest checkpoint of this run, if any), never, or a checkpoint path"
    )
    chunk_size: int = Field(1024, gt=0, description="rows of vocabulary-sized logits computed at once")
    micro_batch_tokens: int = Field(600, ge=0, description="split each batch (of padded rows), longest first, into "
                                    "forward passes of at most this many padded tokens (0 = no split): the same "
                                    "gradient, less padding and activation memory, and faster on a CPU "
                                    "(docs/benchmarks.md); train.memory=lean keeps 600, which bounds activations "
                                    "at any batch size (LEAN_MICRO_BATCH_TOKENS has the measurements)")
    gradient_checkpointing: bool = Field(
        False, description="recompute layer activations in backward: less memory, ~1/3 more compute"
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="mixed precision over float32 master weights: bf16 or fp16 autocast (fp16 with a dynamic "
        "loss scale), fp32 none; auto = bf16 on CUDA, fp32 on CPU (posttrain.trainers.precision)")
    max_nonfinite_steps: int = Field(3, gt=0, description="optimizer updates whose loss or gradient norm is "
                                     "infinite or NaN are skipped (the weights stay as they were); this many in a "
                                     "row stop the run with an error")


class DistConfig(Section):
    """How several processes (``accelerate launch --num_processes N``) share the training (posttrain.trainers.parallel)."""

    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="ddp: a full replica per process, gradients averaged in buckets during backward; fsdp: "
        "FSDP2 (fully_shard) shards parameters, gradients and optimizer state over the processes; auto: fsdp when "
        "accelerate was launched with --use_fsdp (its config file), else ddp. One process ignores it")
    reshard_after_forward: bool = Field(
        True, description="fsdp: free each layer's gathered parameters after its forward and gather them again in "
        "backward (ZeRO-3, least memory); false keeps them until backward (ZeRO-2-like, less communication)")


class SFTConfig(Section):
    loss: Literal["nll", "profit", "profit_lower", "dft"] = "nll"
    tau: float = Field(0.1, ge=0, le=1)


class EvalConfig(Section):
    kind: Literal["math", "none"] = "math"
    n: int | None = Field(None, gt=0, description="number of held-out prompts (all when unset)")
    k: int = Field(1, gt=0)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(32, gt=0)


Tracker = Literal["tensorboard", "wandb"]
TRACKERS: tuple[str, ...] = get_args(Tracker)


class LoggingConfig(Section):
    """Where metrics go besides ``metrics.jsonl`` (always written): :mod:`posttrain.trainers.tracking`."""

    report_to: list[Tracker] = Field(
        default_factory=lambda: ["tensorboard"], description="trackers the metrics also go to, as in TRL: "
        "tensorboard, wandb (pip install wandb); a single name, `all`, or `none` (metrics.jsonl only)")
    wandb_project: str | None = Field(None, description="W&B project (default: WANDB_PROJECT, else posttrain)")
    wandb_entity: str | None = Field(None, description="W&B team or user (default: WANDB_ENTITY, else your "
                                     "default entity)")
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="W&B mode (default: WANDB_MODE, else online); offline runs sync later with `wandb sync`")

    @field_validator("report_to", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """TRL's spellings: one name as a string, ``all`` for every tracker, ``none`` (or nothing) for none."""
        if value is None or value == "none" or value == ["none"]:
            return []
        if value == "all" or value == ["all"]:
            return list(TRACKERS)
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _once_each(cls, names: list[str]) -> list[str]:
        return list(dict.fromkeys(names))
