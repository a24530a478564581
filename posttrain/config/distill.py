"""On-policy distillation (``distill:``): the teacher (the student itself, a snapshot, another model
or the student shown a context), the token-level divergence or G-OPD's reward objective, and the
target-entropy stop.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, model_validator

from posttrain.config.feedback import FeedbackConfig
from posttrain.config.rewards import RewardsConfig
from posttrain.config.sections import Section

FEEDBACK_TEACHERS = ("self_feedback", "self_revision")


class DistillConfig(Section):
    """On-policy distillation: completions sampled from the student, then a token-level divergence against a
    teacher distribution on those tokens (:mod:`posttrain.trainers.distill`). TS-OPSD policy reheating is
    ``teacher: snapshot`` or ``self`` with ``teacher_temperature`` > 1; SDPO is ``teacher: self_feedback``,
    SD-Zero ``teacher: self_revision``."""

    teacher: Literal["self", "snapshot", "model", "self_context", "self_feedback", "self_revision"] = "self"
    teacher_model: str | None = Field(None, description="teacher: model — an HF model with the student's tokenizer")
    teacher_temperature: float = Field(1.0, description="T: the teacher's logits are divided by it (TS-OPSD: T_h > 1)")
    context_field: str = Field("answer", description="teacher: self_context — the record field shown to the "
                               "teacher only (a worked solution or feedback text)")
    context_template: str = Field("{prompt}\n\nA correct solution for reference:\n{context}\n\nNow solve the "
                                  "problem yourself.", description="the teacher's user message; fields {prompt} and "
                                  "{context}")
    context_weights: Literal["live", "initial", "ema"] = Field(
        "live", description="self_context / self_feedback / self_revision teacher weights: the current student, the "
        "starting ones (OPSD's fixed teacher), or ema: an exponential moving average of the student from the starting "
        "weights, θ_T ← (1 − α)·θ_T + α·θ after every optimizer step (SDPO's code and TRL's SDPOTrainer default)")
    teacher_update_rate: float = Field(0.05, gt=0, le=1, description="context_weights: ema — α (SDPO's and TRL's "
                                       "default 0.05)")
    feedback: FeedbackConfig = Field(FeedbackConfig(), description="teacher: self_feedback / self_revision — the "
                                     "per-rollout teacher context (SDPO, SD-Zero; method srpo)")
    entropy_weighting: Literal["none", "exp", "linear"] = Field("none", description="weight each token's divergence "
                                                                "by the teacher's entropy H: exp = exp(−H/τ), "
                                                                "linear = 1 − H/log V (SRPO)")
    entropy_tau: float = Field(1.0, gt=0, description="τ of entropy_weighting: exp (nats)")
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
    rewards: RewardsConfig | None = Field(None, description="rewards scored on the rollouts: logged, and the "
                                          "verdicts of teacher: self_feedback / self_revision")

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
