"""Run configuration: pydantic models, YAML recipes and ``key.sub=value`` overrides.

A recipe is a YAML file whose keys mirror :class:`RunConfig`. Every section forbids unknown keys,
so a typo is an error that names the key instead of a silently ignored setting.

Paths (:mod:`posttrain.recipe_paths` has the details): a relative path written in a recipe is relative to
the recipe's folder, one given as a command-line override to the working directory; ``output_dir`` is
always relative to the working directory, and ``${output_dir}`` in any value stands for it (how a recipe
names a file an earlier run wrote, e.g. ``${output_dir}/grm-s2j/synth/sft.jsonl``). A model, teacher or
template name stays a name unless it is an existing path. :func:`load_config` resolves every path once,
so the ``config.yaml`` a run writes holds absolute paths and loads the same from any directory.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from posttrain.errors import ConfigError, location
from posttrain.recipe_paths import resolve_recipe_paths, substitute_output_dir


class Section(BaseModel):
    """A config section: unknown keys are errors, and no number may be infinite or NaN."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(Section):
    name: str = "smollm2-135m"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    lora: LoraConfig | None = None


class DataSource(Section):
    """Where records come from: a file/directory/hub name (``path``) or a synthetic ``task``."""

    path: str | None = None
    split: str = "train"
    task: str | None = None
    n: int = Field(1000, gt=0)
    seed: int = 0
    levels: list[int] | None = None
    limit: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.path is None) == (self.task is None):
            raise ValueError(
                "give exactly one of `path` (a data file or directory) or `task` (a synthetic task name)"
            )
        return self


class DataConfig(Section):
    train: DataSource = DataSource(task="arithmetic", n=2000, seed=0)
    eval: DataSource | None = None
    max_length: int = Field(512, gt=1)
    overlong: Literal["truncate", "drop"] = "truncate"
    completion_only: bool = True
    packing: bool = False
    skip_invalid: bool = False


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


PATH_FORM = "FILE.py:FUNCTION, e.g. my_rewards.py:score"


def split_reward_path(path: str) -> tuple[str, str]:
    """``"dir/my_rewards.py:score"`` → ``("dir/my_rewards.py", "score")``; a ValueError for other forms."""
    file, sep, function = path.rpartition(":")
    if not sep or not file.endswith(".py") or not function.isidentifier():
        raise ValueError(f"a reward path must be {PATH_FORM} (got {path!r})")
    return file, function


class RewardSpec(Section):
    """One reward of a recipe: a registered ``name`` or a user function ``path`` (``file.py:function``)."""

    name: str | None = None
    path: str | None = None
    weight: float = Field(1.0, allow_inf_nan=False)
    args: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_function(self) -> RewardSpec:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of `name` (a registered reward) or `path` (file.py:function)")
        if self.path is not None:
            split_reward_path(self.path)  # a ValueError names the expected form
        return self

    @property
    def label(self) -> str:
        """The reward's name in logs: the registered name, or the function name of a ``path``."""
        return self.name if self.name is not None else split_reward_path(self.path)[1]


class RewardsConfig(Section):
    """The rewards of an RL run and how failures of a reward function are treated."""

    functions: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="math")], min_length=1)
    on_error: float = Field(
        0.0, allow_inf_nan=False, description="score of a sample whose function raised or gave no number"
    )
    max_error_rate: float = Field(
        0.1, ge=0, le=1, description="fraction of samples with errors in a batch above which the run stops"
    )
    timeout: float | None = Field(
        30.0, ge=0, allow_inf_nan=False,
        description="seconds a reward function call may run before it counts as an error; 0 or null: no limit. "
        "Rewards that run a model of their own (judge, s2j, critique_similarity, metarm) are not limited",
    )


class LaserConfig(Section):
    """LaSeR last-token self-rewarding (Yang et al. 2025, arXiv 2510.14943; defaults from its run scripts).

    The score ``r_s = β_v·(log π(z_c | x, y, EOS) − c_ref)`` of a reserved token ``z_c`` appended after
    EOS is regressed onto the verifier reward (loss weight ``alpha``) from step ``loss_warmup_steps``;
    ``integration_warmup_steps`` steps later the group-normalized scores are mixed into the advantages
    with weight ``tau`` (only in groups whose score std exceeds ``filter_threshold``).
    """

    enabled: bool = False
    token: str | None = Field(None, description="the reserved token z_c; default: chosen per tokenizer")
    c_ref: float = Field(-23.0, allow_inf_nan=False, description="log π_ref(z_c | x, y, EOS), measured per model")
    beta_v: float = Field(0.1, gt=0)
    alpha: float = Field(0.1, ge=0, description="weight of the self-reward MSE loss")
    balanced: bool = Field(True, description="class-balanced weights over correct and incorrect rollouts")
    verifier: str = Field("math", description="the reward (label) whose 0/1 value is the verifier reward r_v")
    loss_warmup_steps: int = Field(0, ge=0)
    integration_warmup_steps: int = Field(0, ge=0, description="steps after the loss starts")
    integrate: bool = Field(True, description="mix self-reward advantages into the policy advantages")
    tau: float = Field(0.1, ge=0, le=1)
    filter_threshold: float = Field(0.1, ge=0)


class JudgeTaskConfig(Section):
    """Train a generative judge with RL (:mod:`posttrain.judges.tasks`): ``data.train`` holds labelled pairs
    (``prompt``/``chosen``/``rejected`` or ``question``/``response_a``/``response_b``/``winner``, e.g.
    ``task: judge_arithmetic``), each rendered with ``template`` in both A/B orders, kept in the same batch."""

    template: str = Field("grm", description="pairwise judge template: grm, s2j, rise, j1")
    hide_critiques: float = Field(0.0, ge=0, le=1, description="fraction of tasks whose critique is dropped "
                                  "(seeded by the run's seed): RM-NLHF's data with and without human critiques")


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


class RLConfig(Section):
    """GRPO-family RL with verifiable rewards. Defaults follow TRL 1.16 ``GRPOConfig`` where it has one."""

    updates_per_step: int = Field(1, gt=0, description="optimizer updates per batch of rollouts, μ")
    loss: Literal["grpo", "bnpo", "dr_grpo", "dapo", "gspo"] = Field(
        "dapo", description="the policy loss's reduction (posttrain.ops.policy); gspo: one length-normalized "
        "importance ratio per sequence (GSPO; its paper clips with eps_low 3e-4, eps_high 4e-4)")
    eps_low: float = Field(0.2, ge=0)
    eps_high: float = Field(0.2, ge=0, description="> eps_low is DAPO's clip-higher (e.g. 0.28)")
    beta: float = Field(0.0, ge=0, description="weight of the KL to the reference model")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus c: the loss subtracts c × the token mean of "
                                "the policy's entropy over the step's response tokens, whatever rl.loss (TRL's "
                                "entropy_coef; posttrain.ops.policy_loss)")
    kl_estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="per-token KL estimate (posttrain.ops.kl_estimate): k1 = −r, k2 = r²/2, k3 = e^r − r − 1 "
        "with r = log π_ref − log π_θ (k3: TRL's)")
    scale: Literal["group", "batch", "none", "whiten"] = Field(
        "group", description="the advantages' divisor (posttrain.ops.group_advantages): group = each group's reward "
        "std, batch = the std of all rewards (TRL's batch), none; whiten = subtract the mean and divide by the std "
        "of the advantages over every response token of the step (REINFORCE++'s global normalization, after the "
        "baseline and the KL returns; posttrain.ops.whiten_advantages)")
    baseline: Literal["mean", "rloo", "none"] = Field(
        "mean", description="subtracted from each reward: the group mean, the mean of the others (RLOO), or none "
        "(REINFORCE++, whose whitening centers the advantages)")
    kl_in: Literal["loss", "reward"] = Field(
        "loss", description="where β·KL to the reference goes: loss = added to each token's loss (GRPO); reward = "
        "subtracted from the reward per token, KL estimated (rl.kl_estimator) from the sampling-time log-probs, the "
        "advantage of a token its return Σ_{s≥t} (γ = 1) plus the row's baselined, scaled reward: token-level "
        "advantages, as REINFORCE++ and OpenRLHF (verl's GRPO instead sums the penalty into the score before the "
        "group normalization); posttrain.ops.kl_penalized_advantages")
    dynamic_sampling: bool = Field(
        False, description="DAPO's dynamic sampling: drop the groups whose rewards are all equal and sample more "
        "prompts (a seeded draw, posttrain.trainers.dynamic_sampling) until the step's groups are full or "
        "rl.max_sampling_rounds rounds ran; logs sampling_rounds and dropped_groups")
    max_sampling_rounds: int = Field(4, ge=1, description="dynamic sampling: generation rounds of a step at most, the "
                                     "first one included; when reached, the step trains on the groups kept")
    preset: Literal["reinforce_pp", "reinforce_pp_baseline"] | None = Field(
        None, description="set the rl keys of a named algorithm (RL_PRESETS) that the recipe leaves unset; the run's "
        "config.yaml shows the values in force. reinforce_pp: REINFORCE++ (KL in the reward, k1, no baseline, "
        "global whitening, token-level clipped loss); reinforce_pp_baseline: the same with the group-mean baseline")
    mask_truncated: bool = Field(False, description="drop completions that hit max_new_tokens from the loss")
    behaviour_correction: Literal["auto", "off", "token_truncate", "token_mask", "sequence_truncate",
                                  "sequence_mask"] = Field(
        "auto", description="importance weights for rollouts drawn by an engine whose probabilities differ from the "
        "learner's (posttrain.ops.behaviour_correction); auto = token_truncate (TIS) with rollout.engine vllm, off "
        "with hf (which samples from the learner's own weights)")
    behaviour_cap: float | None = Field(2.0, gt=0, description="upper bound of the behaviour weights (truncated or "
                                        "masked above; null = none)")
    behaviour_floor: float | None = Field(None, ge=0, description="lower bound of the behaviour weights (null = none)")
    rewards: RewardsConfig = RewardsConfig()
    laser: LaserConfig = LaserConfig()
    judge: JudgeTaskConfig | None = Field(None, description="train a generative judge on judge tasks")


# rl.preset: the rl keys each named algorithm sets where the recipe leaves them unset (RunConfig._rl_preset).
# REINFORCE++ (Hu et al. 2025, arXiv 2501.03262, Eq. 8–10; OpenRLHF advantage_estimator=reinforce): −β·KL_t with
# KL_t = log π_old − log π_ref (k1) in each token's reward, the outcome reward on the last token, returns with γ = 1,
# no baseline, the advantages whitened over all tokens of the batch, PPO's clipped token-level loss.
# REINFORCE++-baseline (OpenRLHF reinforce_baseline): the group mean subtracted from the reward first. rl.beta is
# the recipe's (OpenRLHF's example scripts use 1e-4 and 1e-5).
RL_PRESETS = {
    "reinforce_pp": {"kl_in": "reward", "kl_estimator": "k1", "baseline": "none", "scale": "whiten", "loss": "dapo"},
    "reinforce_pp_baseline": {"kl_in": "reward", "kl_estimator": "k1", "baseline": "mean", "scale": "whiten",
                              "loss": "dapo"},
}


class PPOConfig(Section):
    """PPO with a learned critic (``method: ppo``, :mod:`posttrain.trainers.ppo`): per-token rewards, GAE advantages
    and a value model trained on the returns with value clipping. The policy side (rewards, clip range ε, updates
    per step, the loss's reduction, a KL loss term) is the ``rl:`` section. Defaults follow OpenRLHF (γ = 1,
    λ = 0.95, value clip 0.2, whitened advantages) and TRL's former ``PPOConfig`` (vf_coef 0.1)."""

    value_model: Literal["separate", "value_head"] = Field(
        "separate", description="separate: a critic model of its own (a one-label sequence classifier, its body "
        "initialized from critic_model), trained with its own AdamW (OpenRLHF, verl); value_head: a linear head on "
        "the policy's last hidden states, trained with the policy's loss + vf_coef × the value loss (shared trunk)")
    critic_model: str | None = Field(None, description="separate: the critic's starting weights, a causal LM or a "
                                     "saved reward model (whose head is kept); null: model.name")
    critic_lr: float | None = Field(None, gt=0, description="separate: the critic's learning rate (null: optim.lr); "
                                    "the rest of its optimizer and schedule are optim's")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount γ over the tokens of a completion")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ: 1 = Monte-Carlo returns minus values, 0 = TD errors")
    vf_coef: float = Field(0.1, gt=0, description="value_head: weight of the value loss in the shared loss")
    value_clip: float | None = Field(0.2, gt=0, description="ε_v: the new values are clipped to old ± ε_v in the "
                                     "value loss (null: no clipping)")
    whiten_advantages: bool = Field(True, description="normalize the advantages to mean 0, variance 1 over the "
                                    "response tokens of the step")
    critic_warmup_steps: int = Field(0, ge=0, description="steps at the start that train only the critic (separate: "
                                     "the policy is not updated, its lr schedule still advances; value_head: the "
                                     "policy's loss term is weighted 0)")

    @model_validator(mode="after")
    def _value_model_settings(self) -> PPOConfig:
        separate_only = [f"ppo.{key}" for key in ("critic_model", "critic_lr") if getattr(self, key) is not None]
        if self.value_model == "value_head" and separate_only:
            raise ValueError(f"{', '.join(separate_only)} set the separate critic, but ppo.value_model is "
                             "value_head; remove them or use ppo.value_model=separate")
        if self.value_model == "separate" and self.vf_coef != PPOConfig.model_fields["vf_coef"].default:
            raise ValueError("ppo.vf_coef weighs the value loss in the policy's loss (value_model: value_head); the "
                             "separate critic has its own optimizer: set ppo.critic_lr instead")
        return self


class DistillConfig(Section):
    """On-policy distillation: completions sampled from the student, then a token-level divergence against a
    teacher distribution on those tokens (:mod:`posttrain.trainers.distill`). TS-OPSD policy reheating is
    ``teacher: snapshot`` or ``self`` with ``teacher_temperature`` > 1."""

    teacher: Literal["self", "snapshot", "model", "self_context"] = "self"
    teacher_model: str | None = Field(None, description="teacher: model — an HF model with the student's tokenizer")
    teacher_temperature: float = Field(1.0, description="T: the teacher's logits are divided by it (TS-OPSD: T_h > 1)")
    context_field: str = Field("answer", description="teacher: self_context — the record field shown to the "
                               "teacher only (a worked solution or feedback text)")
    context_template: str = Field("{prompt}\n\nA correct solution for reference:\n{context}\n\nNow solve the "
                                  "problem yourself.", description="the teacher's user message; fields {prompt} and "
                                  "{context}")
    context_weights: Literal["live", "initial"] = Field("live", description="self_context teacher weights: the "
                                                        "current student (SDPO) or the starting ones (OPSD's "
                                                        "fixed teacher)")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = Field(0.5, ge=0, le=1, description="jsd: m = (1 − β)·student + β·teacher")
    top_k_divergence: int = Field(0, ge=0, description="restrict the divergence to the teacher's top-k tokens "
                                  "(0 = full vocabulary)")
    clip: float | None = Field(None, gt=0, description="cap on each token's divergence")
    objective: Literal["divergence", "reward"] = Field("divergence", description="reward = G-OPD: policy gradient "
                                                       "with token reward λ(log q − log π_ref) − (log π − log π_ref)")
    gopd_lambda: float = Field(1.0, ge=0, description="G-OPD λ (1 = on-policy distillation, > 1 = ExOPD); "
                               "π_ref = the starting weights")
    target_entropy: float | None = Field(None, gt=0, description="stop when the mean token entropy (T = 1) of "
                                         "held-out rollouts reaches this")
    entropy_prompts: int = Field(16, gt=0, description="held-out prompts for the target-entropy check")
    entropy_every: int = Field(1, gt=0, description="steps between target-entropy checks")
    rewards: RewardsConfig | None = Field(None, description="rewards scored on the rollouts for logging only")

    @model_validator(mode="after")
    def _teacher(self) -> DistillConfig:
        if not (math.isfinite(self.teacher_temperature) and self.teacher_temperature > 0):
            raise ValueError(f"teacher_temperature = {self.teacher_temperature} must be > 0 (TS-OPSD reheats with "
                             "T > 1, e.g. 1.5 or 2.0)")
        if self.teacher == "model" and not self.teacher_model:
            raise ValueError("teacher: model needs distill.teacher_model (a model name or path)")
        if self.teacher != "model" and self.teacher_model:
            raise ValueError(f"distill.teacher_model is only used with teacher: model (teacher is {self.teacher!r})")
        if self.teacher == "self_context" and not {"{prompt}", "{context}"} <= set(
                re.findall(r"\{\w+\}", self.context_template)):
            raise ValueError("distill.context_template must contain {prompt} and {context}")
        return self


PREFERENCE_REFERENCE_FREE = ("simpo", "orpo")
PREFERENCE_LABEL_SMOOTHING = ("sigmoid", "robust", "simpo")


class PreferenceConfig(Section):
    """Preference optimization (``method: dpo``, :mod:`posttrain.trainers.preference`); the losses are
    :func:`posttrain.ops.dpo_loss` on (chosen, rejected) pairs, and for ``kto``
    :func:`posttrain.ops.kto_loss` on unpaired records (``prompt``, ``completion``, ``label``). Defaults follow
    TRL 1.16 ``DPOConfig`` / ``KTOConfig`` / ``ORPOConfig``. ``simpo`` and ``orpo`` are reference-free: their
    ``reference`` defaults to ``none``."""

    kind: Literal["sigmoid", "robust", "ipo", "hinge", "simpo", "orpo", "kto"] = "sigmoid"
    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="β: scale of the implicit reward (for orpo: "
                        "λ, the weight of the odds-ratio term)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="ε: assumed label-flip rate (cDPO, robust "
                                   "DPO, SimPO); sigmoid, robust and simpo only")
    gamma: float = Field(0.0, allow_inf_nan=False, description="SimPO's target reward margin γ; simpo only")
    rpo_alpha: float = Field(0.0, ge=0, allow_inf_nan=False, description="RPO: weight α of the NLL on the "
                             "chosen completions added to the loss (0 = off; orpo always adds it with weight 1)")
    desirable_weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="KTO's λ_D: weight of the "
                                    "desirable (label true) completions; kto only")
    undesirable_weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="KTO's λ_U: weight of the "
                                      "undesirable (label false) completions; kto only")
    reference: Literal["precompute", "none"] = Field("precompute", description="precompute: the starting "
                                                     "weights' log-probs of every pair, once, cached in the run "
                                                     "directory; none: reference-free (simpo, orpo only)")

    @model_validator(mode="before")
    @classmethod
    def _reference_free_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") in PREFERENCE_REFERENCE_FREE and "reference" not in data:
            return {**data, "reference": "none"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PreferenceConfig:
        free = self.kind in PREFERENCE_REFERENCE_FREE
        if free and self.reference != "none":
            raise ValueError(f"kind {self.kind!r} is reference-free; set preference.reference=none")
        if not free and self.reference == "none":
            raise ValueError(f"kind {self.kind!r} needs reference log-probs; set preference.reference=precompute "
                             f"or use one of {', '.join(PREFERENCE_REFERENCE_FREE)}")
        if self.label_smoothing > 0 and self.kind not in PREFERENCE_LABEL_SMOOTHING:
            raise ValueError(f"kind {self.kind!r} has no label smoothing; set preference.label_smoothing=0 or use "
                             f"one of {', '.join(PREFERENCE_LABEL_SMOOTHING)}")
        if self.gamma != 0 and self.kind != "simpo":
            raise ValueError(f"gamma is SimPO's margin but kind is {self.kind!r}; set preference.gamma=0")
        if self.rpo_alpha and self.kind in ("orpo", "kto"):
            raise ValueError(f"rpo_alpha adds an NLL term to pairwise DPO losses, not to {self.kind!r}; set "
                             "preference.rpo_alpha=0 (orpo adds its own NLL term)")
        if (self.desirable_weight, self.undesirable_weight) != (1.0, 1.0) and self.kind != "kto":
            raise ValueError(f"desirable_weight and undesirable_weight are KTO's, but kind is {self.kind!r}; "
                             "leave them at 1.0 or use kind kto")
        return self


class RewardModelConfig(Section):
    """Scalar reward model (``method: reward_model``): a one-label sequence-classification head on the LM.
    ``bradley_terry``: preference pairs, loss :func:`posttrain.ops.bradley_terry_loss`, as TRL 1.16
    ``RewardTrainer``; ``regression``: ``text`` + ``label`` records, MSE (:func:`posttrain.ops.regression_loss`,
    the MetaRM of RM-NLHF)."""

    objective: Literal["bradley_terry", "regression"] = "bradley_terry"

    margin_field: str | None = Field(None, description="record field holding a per-pair margin m (Llama 2): "
                                     "loss −log σ(r_c − r_r − m)")
    center_coefficient: float | None = Field(None, ge=0, allow_inf_nan=False, description="weight of "
                                             "mean((r_c + r_r)²) that centers rewards on 0 (Eisenstein et al. "
                                             "use 0.01)")


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


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
METHOD_SECTIONS = {"sft": ("sft",), "grpo": ("rl",), "ppo": ("rl", "ppo"), "distill": ("distill",),
                   "dpo": ("preference",), "reward_model": ("reward_model",)}
ON_POLICY_METHODS = ("grpo", "ppo", "distill")
DEFAULT_SAMPLES_PER_PROMPT = {"grpo": 8, "ppo": 1, "distill": 1}
# PPO's KL is in its token rewards (Ziegler et al. 2019, OpenRLHF, verl) unless the recipe says otherwise
PPO_RL_DEFAULTS = {"kl_in": "reward", "kl_estimator": "k1"}
PPO_UNUSED_RL_KEYS = ("scale", "baseline", "laser")  # group advantages and LaSeR: GAE replaces them
MOVED_KEYS = {
    **{f"{section}.{key}": f"rollout.{key}" for section in ("rl", "distill")
       for key in ("prompts_per_step", "temperature", "top_p", "top_k", "max_new_tokens")},
    "rl.group_size": "rollout.samples_per_prompt", "distill.samples_per_prompt": "rollout.samples_per_prompt",
    **{f"{section}.rollout_{key}": f"rollout.{key}" for section in ("rl", "distill") for key in ("batch_size", "dtype")},
    "rl.micro_batch_tokens": "train.micro_batch_tokens", "distill.micro_batch_tokens": "train.micro_batch_tokens",
}


def changed_keys(section: Section, prefix: str) -> list[str]:
    """The dotted keys of ``section`` whose values differ from its class's defaults."""
    default = type(section)().model_dump(mode="json")
    return [f"{prefix}.{key}" for key, value in section.model_dump(mode="json").items() if value != default.get(key)]


class RunConfig(Section):
    name: str = Field("run", description="the run's directory under output_dir: one path component of letters, "
                      "digits and . _ + - (not starting with . or -)")
    output_dir: str = "runs"
    seed: int = 0
    method: Literal["sft", "grpo", "ppo", "distill", "dpo", "reward_model"] = "sft"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    ppo: PPOConfig = PPOConfig()
    distill: DistillConfig = DistillConfig()
    preference: PreferenceConfig = PreferenceConfig()
    reward_model: RewardModelConfig = RewardModelConfig()
    eval: EvalConfig = EvalConfig()
    rollout: RolloutConfig = RolloutConfig()
    dist: DistConfig = DistConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Keys of earlier versions name their new place instead of being just unknown."""
        if isinstance(data, dict):
            moved = [f"{old} is now {new}" for old, new in MOVED_KEYS.items()
                     if isinstance(data.get(old.split(".")[0]), dict) and old.split(".")[1] in data[old.split(".")[0]]]
            if moved:
                raise ValueError("; ".join(moved) + " (the sampling settings of every on-policy method are in "
                                 "`rollout:`); move the keys there")
        return data

    @field_validator("name")
    @classmethod
    def _one_safe_component(cls, name: str) -> str:
        if not RUN_NAME.fullmatch(name) or len(name) > 200:
            raise ValueError("a run name is one folder name of letters, digits and . _ + - (not starting with . or "
                             "-); put other folders in output_dir, e.g. output_dir=runs/experiments name=first")
        return name

    @model_validator(mode="after")
    def _only_the_methods_settings(self) -> RunConfig:
        """A setting the chosen method does not use is an error, not silently ignored: another method's section
        changed from its defaults, ``train.grad_accum`` or ``train.micro_batch_tokens`` with an on-policy method
        (its step is ``prompts_per_step`` prompts, split into passes by ``train.batch_size`` and its own
        ``micro_batch_tokens``)."""
        used = METHOD_SECTIONS[self.method]
        unused = [key for section in dict.fromkeys(s for sections in METHOD_SECTIONS.values() for s in sections)
                  if section not in used for key in changed_keys(getattr(self, section), section)]
        if self.method == "ppo":
            unused += [key for key in changed_keys(self.rl, "rl") if key.split(".")[1] in PPO_UNUSED_RL_KEYS]
        on_policy = self.method in ON_POLICY_METHODS
        if on_policy:
            unused += [key for key in changed_keys(self.train, "train") if key == "train.grad_accum"]
        else:
            unused += changed_keys(self.rollout, "rollout")
        if unused:
            sections = ", ".join(f"`{section}:`" for section in used)
            raise ValueError(f"method {self.method} does not use {', '.join(unused)}; remove "
                             f"{'it' if len(unused) == 1 else 'them'} (method {self.method} is configured in "
                             f"{sections}{', `rollout:` and train.batch_size' if on_policy else ''})")
        return self

    @model_validator(mode="after")
    def _rl_preset(self) -> RunConfig:
        """``rl.preset`` sets its :data:`RL_PRESETS` keys where the recipe left them unset; then the rl settings that
        do not go together are refused."""
        rl = self.rl
        for key, value in RL_PRESETS.get(rl.preset, {}).items():
            if key not in rl.model_fields_set:
                setattr(rl, key, value)
        if rl.laser.enabled and (rl.kl_in == "reward" or rl.dynamic_sampling):
            raise ValueError("rl.laser mixes its self-rewards into one advantage per row over the step's whole "
                             f"groups; it works with rl.kl_in=loss and without rl.dynamic_sampling (got kl_in={rl.kl_in}, "
                             f"dynamic_sampling={rl.dynamic_sampling})")
        if rl.kl_in == "reward" and rl.loss == "gspo":
            raise ValueError("rl.loss=gspo takes one ratio per sequence and rl.kl_in=reward gives an advantage per "
                             "token; use rl.kl_in=loss with gspo, or another rl.loss")
        return self

    @model_validator(mode="after")
    def _method_defaults(self) -> RunConfig:
        """Checks across sections; the samples per prompt of the on-policy method (grpo 8, ppo 1, distill 1); PPO's
        KL in the reward (:data:`PPO_RL_DEFAULTS`, where the recipe leaves them unset)."""
        if self.method == "reward_model" and self.eval.kind == "math":
            raise ValueError("a reward model cannot be evaluated by generating math answers; set eval.kind=none for "
                             "method: reward_model")
        if (self.rollout.engine == "server") != (self.rollout.server_url is not None):
            raise ValueError("rollout.server_url is the address of a rollout server and goes with "
                             "rollout.engine=server (start one with `posttrain rollout serve --model M`)")
        if self.method == "ppo":
            for key, value in PPO_RL_DEFAULTS.items():
                if key not in self.rl.model_fields_set:
                    setattr(self.rl, key, value)
        if self.method in ON_POLICY_METHODS and self.rollout.samples_per_prompt is None:
            self.rollout.samples_per_prompt = DEFAULT_SAMPLES_PER_PROMPT[self.method]
        if self.method == "grpo" and self.rollout.samples_per_prompt < 2 and (
                self.rl.scale == "group" or self.rl.baseline == "rloo"):
            raise ValueError("rollout.samples_per_prompt (the group size) must be >= 2 with rl.scale=group or "
                             "rl.baseline=rloo (a group of one has no spread); raise it or set rl.scale=none")
        return self

    @model_validator(mode="after")
    def _memory_mode(self) -> RunConfig:
        """``train.memory=lean`` sets :data:`LEAN_SETTINGS` where the recipe left the key unset — except the update
        inside backward in a launch of several processes (``WORLD_SIZE`` > 1), whose engines average gradients after
        backward; the update inside backward turns clipping off where ``optim.max_grad_norm`` is unset, and refuses
        clipping set explicitly."""
        if self.train.memory == "lean":
            several = int(os.environ.get("WORLD_SIZE", "1")) > 1
            for (section, key), value in LEAN_SETTINGS.items():
                part = getattr(self, section)
                if key not in part.model_fields_set and not (several and key == "update_in_backward"):
                    setattr(part, key, value)
            if self.method in ON_POLICY_METHODS and "engine" not in self.rollout.model_fields_set:
                self.rollout.engine = LEAN_ROLLOUT_ENGINE
        if self.optim.update_in_backward:
            if "max_grad_norm" not in self.optim.model_fields_set:
                self.optim.max_grad_norm = None
            elif self.optim.max_grad_norm:
                raise ValueError(
                    f"optim.max_grad_norm={self.optim.max_grad_norm} cannot be applied with optim.update_in_backward "
                    "(on with train.memory=lean): each parameter is updated as soon as its gradient is ready, before "
                    "the global gradient norm is known; set optim.max_grad_norm=null (no clipping) or "
                    "optim.update_in_backward=false (the update after backward, which clips)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.max_steps=20"`` → ``(["train", "max_steps"], 20)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {text!r} is not of the form key.sub=value",
            fix="write e.g. train.max_steps=20 or sft.loss=profit",
        )
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict, overrides: list[str], base: Path | None = None) -> dict:
    """Set each ``key.sub=value`` in a nested dict, creating sections as needed. With ``base``, the path
    fields in the values are resolved against that folder (see :mod:`posttrain.recipe_paths`)."""
    for text in overrides:
        keys, value = parse_override(text)
        if base is not None:
            value = _resolved_override(keys, value, base)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(keys)}: {key} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _resolved_override(keys: list[str], value: Any, base: Path) -> Any:
    """An override's value with its path fields resolved against ``base``, as if it stood in a recipe there."""
    nested = value
    for key in reversed(keys):
        nested = {key: nested}
    nested = resolve_recipe_paths(nested, base)
    for key in keys:
        nested = nested[key]
    return nested


def _describe_validation_error(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{location(source, None, field)}: unknown key")
        else:
            got = f" (got {item.get('input')!r})" if item["loc"] else ""
            lines.append(f"{location(source, None, field)}: {item['msg']}{got}")
    return ConfigError(
        "invalid configuration:\n  " + "\n  ".join(lines),
        fix="correct or remove the keys named above; `posttrain train --help` lists the sections",
    )


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, overrides_dir: str | Path | None = None
) -> RunConfig:
    """Read a YAML recipe (or start from defaults), apply overrides and validate.

    Paths are resolved as the module docstring says: those in the recipe against its folder, those in
    ``overrides`` against ``overrides_dir`` (default: the working directory; a pipeline passes its own
    folder for the overrides written in it), then ``${output_dir}`` is replaced everywhere.
    """
    raw: dict = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        path = Path(path)
        raw = resolve_recipe_paths(_read_recipe(path), path.resolve().parent)
    raw = apply_overrides(raw, overrides or [], base=Path(overrides_dir or Path.cwd()).resolve())
    raw = substitute_output_dir(raw, str(raw.get("output_dir", RunConfig.model_fields["output_dir"].default)))
    return validate_config(raw, source)


def validate_config(raw: dict, source: str) -> RunConfig:
    """``raw`` validated as a :class:`RunConfig`; a :class:`ConfigError` naming each bad key (at ``source``)."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise _describe_validation_error(exc, source) from None


def _read_recipe(path: Path) -> dict:
    """The mapping a recipe file holds; a ConfigError when it is missing, not YAML, or not a mapping."""
    if not path.is_file():
        raise ConfigError(
            f"recipe {path} does not exist",
            fix="pass the path of a YAML recipe, e.g. posttrain/recipes/quickstart.yaml",
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = location(str(path), mark.line + 1 if mark else None)
        raise ConfigError(f"recipe is not valid YAML: {exc}", where=where) from None
    if not isinstance(raw, dict):
        raise ConfigError("a recipe must be a mapping of sections", where=str(path))
    return raw


def dump_config(config: RunConfig) -> str:
    """The resolved configuration as YAML (what ``config.yaml`` in a run directory holds)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
