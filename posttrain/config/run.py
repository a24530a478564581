"""The whole run (:class:`RunConfig`, the shape of a recipe): its name and output folder, the method and
one field per section, and the checks across sections — which sections each method uses
(:data:`METHOD_SECTIONS`), keys of earlier versions and their new place (:data:`MOVED_KEYS`), ``rl.preset``, the
on-policy defaults and ``train.memory=lean``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from posttrain.config.data import DataConfig
from posttrain.config.distill import FEEDBACK_TEACHERS, DistillConfig
from posttrain.config.feedback import FeedbackConfig
from posttrain.config.model import ModelConfig
from posttrain.config.preference import PreferenceConfig, RewardModelConfig
from posttrain.config.rl import RL_PRESETS, PPOConfig, RLConfig
from posttrain.config.rollout import RolloutConfig
from posttrain.config.sections import Section, changed_keys
from posttrain.config.training import (
    LEAN_ROLLOUT_ENGINE,
    LEAN_SETTINGS,
    DistConfig,
    EvalConfig,
    LoggingConfig,
    OptimConfig,
    SFTConfig,
    TrainConfig,
)

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
METHOD_SECTIONS = {"sft": ("sft",), "grpo": ("rl",), "ppo": ("rl", "ppo"), "distill": ("distill",),
                   "srpo": ("rl", "distill"), "dpo": ("preference",), "reward_model": ("reward_model",)}
ON_POLICY_METHODS = ("grpo", "ppo", "distill", "srpo")
DEFAULT_SAMPLES_PER_PROMPT = {"grpo": 8, "ppo": 1, "distill": 1, "srpo": 8}
SRPO_UNUSED_DISTILL_KEYS = ("rewards", "objective", "gopd_lambda", "target_entropy", "teacher_model")
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


def unused_sections(method: str) -> tuple[str, ...]:
    """The sections a run of ``method`` never reads: the other methods' sections, and ``rollout:`` off-policy."""
    used = METHOD_SECTIONS[method]
    others = dict.fromkeys(section for sections in METHOD_SECTIONS.values() for section in sections
                           if section not in used)
    return (*others, *(() if method in ON_POLICY_METHODS else ("rollout",)))


class RunConfig(Section):
    name: str = Field("run", description="the run's directory under output_dir: one path component of letters, "
                      "digits and . _ + - (not starting with . or -)")
    output_dir: str = "runs"
    seed: int = 0
    method: Literal["sft", "grpo", "ppo", "distill", "srpo", "dpo", "reward_model"] = "sft"
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
        unused = [key for section in unused_sections(self.method) for key in changed_keys(getattr(self, section), section)]
        if self.method == "ppo":
            unused += [key for key in changed_keys(self.rl, "rl") if key.split(".")[1] in PPO_UNUSED_RL_KEYS]
        if self.method == "srpo":  # the rewards are rl.rewards; the distillation is SDPO's divergence
            unused += [key for key in changed_keys(self.distill, "distill")
                       if key.split(".")[1] in SRPO_UNUSED_DISTILL_KEYS]
        on_policy = self.method in ON_POLICY_METHODS
        if on_policy:
            unused += [key for key in changed_keys(self.train, "train") if key == "train.grad_accum"]
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
        self._feedback_teacher()
        if self.method in ("grpo", "srpo") and self.rollout.samples_per_prompt < 2 and (
                self.rl.scale == "group" or self.rl.baseline == "rloo"):
            raise ValueError("rollout.samples_per_prompt (the group size) must be >= 2 with rl.scale=group or "
                             "rl.baseline=rloo (a group of one has no spread); raise it or set rl.scale=none")
        return self

    def _feedback_teacher(self) -> None:
        """SRPO distills toward SDPO's feedback teacher; a feedback teacher that reads verdicts needs rewards."""
        distill = self.distill
        if self.method == "srpo":
            if "teacher" not in distill.model_fields_set:
                distill.teacher = "self_feedback"
            if "entropy_weighting" not in distill.model_fields_set:
                distill.entropy_weighting = "exp"
            if distill.teacher != "self_feedback":
                raise ValueError("method srpo distills its failed rollouts toward the feedback-conditioned "
                                 f"self-teacher; set distill.teacher=self_feedback (got {distill.teacher!r})")
            if self.rl.laser.enabled:
                raise ValueError("method srpo does not combine with rl.laser (LaSeR's tail token would be "
                                 "distilled); use method grpo for LaSeR")
        if distill.context_weights == "ema" and distill.teacher not in ("self_context", *FEEDBACK_TEACHERS):
            raise ValueError(f"distill.context_weights=ema averages the weights of a self-teacher shown a context; "
                             f"distill.teacher is {distill.teacher!r} (use self_context, self_feedback or self_revision)")
        if distill.context_weights == "ema" and self.model.lora is not None:
            raise ValueError("distill.context_weights=ema keeps a full copy of the weights averaged with the student's; "
                             "with model.lora use context_weights=live or initial")
        if distill.context_weights == "ema" and self.dist.strategy == "fsdp":
            raise ValueError("distill.context_weights=ema is not available with dist.strategy=fsdp (the average is "
                             "kept unsharded); use ddp, or context_weights=live or initial")
        if distill.feedback != FeedbackConfig() and distill.teacher not in FEEDBACK_TEACHERS:
            raise ValueError(f"distill.feedback is used by teacher: self_feedback or self_revision (teacher is "
                             f"{distill.teacher!r}); set distill.teacher or remove distill.feedback")
        needs_rewards = distill.teacher == "self_revision" or (
            distill.teacher == "self_feedback" and {"sibling", "verdict"} & set(distill.feedback.sources))
        if self.method == "distill" and needs_rewards and distill.rewards is None:
            raise ValueError(f"distill.teacher={distill.teacher} with feedback {distill.feedback.sources} needs a "
                             "verdict per rollout; set distill.rewards (e.g. {functions: [{name: math}]}) or use "
                             "distill.feedback.sources=[field]")

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
