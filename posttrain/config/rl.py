"""GRPO-family RL (``rl:``) with its LaSeR self-rewarding (``rl.laser:``) and generative-judge tasks
(``rl.judge:``), the named algorithms of ``rl.preset`` (:data:`RL_PRESETS`), and PPO's critic (``ppo:``), whose
policy side is the ``rl:`` section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from posttrain.config.rewards import RewardsConfig
from posttrain.config.sections import Section


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

    template: str = Field("grm", description="judge template: pairwise (grm, s2j, rise, j1: both A/B orders of a "
                          "pair) or pointwise (j1_pointwise: the pair's two responses scored one a prompt)")
    hide_critiques: float = Field(0.0, ge=0, le=1, description="fraction of tasks whose critique is dropped "
                                  "(seeded by the run's seed): RM-NLHF's data with and without human critiques")


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
