"""PPO with a learned critic (``method: ppo``; Schulman et al. 2017, arXiv 1707.06347; the RLHF form of Ziegler et
al. 2019 and Ouyang et al. 2022 that OpenRLHF and verl train).

One step is :class:`posttrain.trainers.rl.RLMethod`'s — ``rollout.prompts_per_step`` prompts, ``G`` completions each
(default 1), rewards, the reference's log-probs when a KL is used, micro-batches — then, per micro-batch:

1. the critic's values ``V_t`` of the response tokens (:mod:`posttrain.trainers.critic`);
2. per-token rewards: the sequence's reward on its last token, with ``rl.kl_in=reward`` ``−β·KL_t`` on every token
   (``β = rl.beta``, ``KL_t`` the ``rl.kl_estimator`` estimate; :func:`posttrain.ops.token_rewards`);
3. GAE advantages and returns ``R_t = A_t + V_t`` (:func:`posttrain.ops.gae_advantages`, ``ppo.gamma``, ``ppo.lam``),
   the advantages whitened over all response tokens of the step (``ppo.whiten_advantages``; every process's;
   the one whitening of :func:`posttrain.ops.whiten_advantages`).

The policy minimizes :func:`posttrain.ops.policy_loss_sum` with these ``[B, T]`` advantages (``rl.loss`` its
reduction, ``rl.eps_low``/``rl.eps_high`` its clip range, ``rl.updates_per_step`` the epochs over the batch; with
``rl.kl_in=loss`` ``rl.beta`` weighs a KL term in the loss instead). The critic minimizes the clipped value loss :func:`posttrain.ops.value_loss_sum` ÷
the step's response tokens: with ``value_head`` added to the policy's loss with weight ``ppo.vf_coef`` (one
optimizer); with ``separate`` by the critic's own optimizer, ``rl.updates_per_step`` updates over the same
micro-batches before the policy's. For the first ``ppo.critic_warmup_steps`` steps only the critic learns.

Where the papers leave it open: a completion cut at ``rollout.max_new_tokens`` still ends its episode (its reward
on its last token, no bootstrap from the value after it), as in OpenRLHF and verl; the KL in the reward is that of
the sampling policy's log-probs (the learner's own when those differ from the engine's).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.ops import gae_advantages, token_rewards, value_loss_sum
from posttrain.trainers.critic import SeparateCritic, ValueHead
from posttrain.trainers.distributed import Processes
from posttrain.trainers.loop import StepBatches, StepTotals, total_steps
from posttrain.trainers.rl import RLMethod, RolloutBatch

# the sums RLMethod.summarize reads from the policy's passes: zero in a step that trains only the separate critic
POLICY_SUMS = ("loss", "policy_loss", "entropy_sum", "clip_region_sum", "clip_low_sum", "clip_high_sum", "tokens")


@dataclass
class PPOBatch(RolloutBatch):
    """A rollout micro-batch with GAE's results: ``advantages``, ``returns`` and the critic's ``old_values`` (all
    ``[B, T-1]``, 0 outside ``completion_mask``); ``critic_only`` in the critic's warm-up steps."""

    returns: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    critic_only: bool = False
    reward_kl: float = 0.0  # Σ of the KL in the reward over the response tokens (rl.kl_in=reward)


class PPOMethod(RLMethod, name="ppo"):
    """PPO with a critic for :class:`posttrain.trainers.loop.Trainer` (the module docstring)."""

    writes_advantages = False  # per token, computed after the samples are written

    def __init__(self, config: RunConfig, records: list[dict], model, tokenizer, processes: Processes):
        self.ppo = config.ppo
        super().__init__(config, records, model, tokenizer, processes)
        if self.ppo.value_model == "value_head":
            self.critic = ValueHead(config, model)
        else:
            updates = total_steps(config, self.num_examples, self.examples_per_step, processes.world_size) \
                * self.updates_per_step
            self.critic = SeparateCritic(config, model, tokenizer, processes, updates)

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Each rollout's reward: GAE turns it into per-token advantages once the rows are built."""
        return rewards.float()

    def _token_advantages(self, model, micro_batches: list[RolloutBatch]) -> dict[str, float]:
        """Nothing: PPO puts the KL in its token rewards before GAE (:meth:`_scored`)."""
        return {}

    # -- one step ---------------------------------------------------------------------------------
    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        work = super().step_batches(model, indices, share, step)  # each batch's advantages: its rows' rewards
        critic_only = step < self.ppo.critic_warmup_steps
        batches = [self._scored(model, batch, critic_only) for batch in work.micro_batches]
        stats = {**work.stats, **self._advantage_stats(batches)}
        if self.rl.kl_in == "reward" and self.rl.beta > 0:  # RLMethod.summarize logs it as `kl`
            stats["reward_kl_sum"] = sum(batch.reward_kl for batch in batches)
        if self.ppo.whiten_advantages:
            self._whiten(batches)
        if not self.critic.shared:
            stats.update(self.critic.fit(batches, work.totals.of("tokens"), self.updates_per_step))
            if critic_only:
                batches = []  # no pass, no gradient: the policy's optimizer leaves every weight as it is
        return StepBatches(batches, work.totals, stats)

    def _scored(self, model, batch: RolloutBatch, critic_only: bool) -> PPOBatch:
        """The batch with its critic values, token rewards, GAE advantages and returns."""
        mask = batch.completion_mask
        in_reward = self.rl.kl_in == "reward" and self.rl.beta > 0
        kl = self._reward_kl(model, batch) if in_reward else None
        values = self.critic.values(model, batch.input_ids, batch.position_ids).float() * mask
        rewards = token_rewards(batch.advantages, mask, kl, self.rl.beta if in_reward else 0.0)
        advantages, returns = gae_advantages(rewards, values, mask, self.ppo.gamma, self.ppo.lam)
        scored = PPOBatch(**{f.name: getattr(batch, f.name) for f in fields(RolloutBatch)})
        scored.advantages, scored.returns, scored.old_values, scored.critic_only = advantages, returns, values, critic_only
        if kl is not None:
            scored.reward_kl = float(torch.where(mask.bool(), kl, 0.0).sum())
        return scored

    @staticmethod
    def _advantage_stats(batches: list[PPOBatch]) -> dict[str, float]:
        """Additive sums over the response tokens: returns, values, advantages (before whitening), the residual
        ``R − V`` (for the explained variance)."""
        stats = {"response_tokens": 0.0, "return_sum": 0.0, "return_squares": 0.0, "value_sum": 0.0,
                 "advantage_sum": 0.0, "residual_sum": 0.0, "residual_squares": 0.0}
        for batch in batches:
            mask = batch.completion_mask
            residual = (batch.returns - batch.old_values) * mask
            stats["response_tokens"] += float(mask.sum())
            stats["return_sum"] += float(batch.returns.sum())
            stats["return_squares"] += float(batch.returns.square().sum())
            stats["value_sum"] += float(batch.old_values.sum())
            stats["advantage_sum"] += float(batch.advantages.sum())
            stats["residual_sum"] += float(residual.sum())
            stats["residual_squares"] += float(residual.square().sum())
        return stats

    # -- loss -------------------------------------------------------------------------------------
    def loss(self, model, batch: PPOBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy's loss; with the value head, plus ``vf_coef`` × the value loss ÷ the step's response tokens
        (the policy's term weighted 0 in the critic's warm-up)."""
        if not self.critic.shared:
            return super().loss(model, batch, totals)
        out = self._forward(model, batch, with_entropy=True, with_hidden=True)
        loss, stats = self.policy_objective(out, batch, totals)
        mask = batch.completion_mask
        result = value_loss_sum(ValueHead.from_hidden(model, out.hidden), batch.old_values, batch.returns, mask,
                                self.ppo.value_clip)
        value_loss = result.loss / totals.of("tokens")
        if batch.critic_only:
            loss = loss * 0.0
        loss = loss + self.ppo.vf_coef * value_loss
        stats.update(value_loss=float(value_loss.detach()), value_clipped=float(result.clipped),
                     value_tokens=float(mask.sum()), loss=float(loss.detach()))
        return loss, stats

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = super().summarize({**dict.fromkeys(POLICY_SUMS, 0.0), **sums})
        tokens = max(sums["response_tokens"], 1.0)
        mean_return, mean_residual = sums["return_sum"] / tokens, sums["residual_sum"] / tokens
        return_variance = sums["return_squares"] / tokens - mean_return**2
        residual_variance = sums["residual_squares"] / tokens - mean_residual**2
        metrics.update(
            value_loss=sums.get("value_loss", 0.0) / self.updates_per_step,
            value_clip_fraction=sums.get("value_clipped", 0.0) / max(sums.get("value_tokens", 0.0), 1.0),
            returns=mean_return, values=sums["value_sum"] / tokens, advantages=sums["advantage_sum"] / tokens,
            # 1 − Var(R − V) / Var(R) over the step's response tokens: 1 for a perfect critic, ≤ 0 for a useless one
            explained_variance=1.0 - residual_variance / return_variance if return_variance > 1e-12 else 0.0,
        )
        if not self.critic.shared:
            metrics["critic_grad_norm"] = sums.get("critic_grad_norm", 0.0) / self.updates_per_step
            metrics["critic_skipped"] = sums.get("critic_skipped", 0.0)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------------
    def save_state(self, directory) -> None:
        """The separate critic's weights, optimizer and schedule go into every checkpoint (the value head is part
        of the model's weights)."""
        super().save_state(directory)
        if not self.critic.shared:
            self.critic.save(Path(directory) / "critic")

    def load_state(self, directory) -> None:
        super().load_state(directory)
        if not self.critic.shared:
            self.critic.load(Path(directory) / "critic")

