"""LaSeR last-token self-rewarding (Yang et al. 2025, arXiv 2510.14943; methods.md §6) as a plug-in of
:class:`posttrain.trainers.rl.RLMethod`, built only when ``rl.laser.enabled``.

Each row is ``prompt, completion, z_c``, where the completion ends with EOS; the forward pass that gives the
policy log-probabilities also gives ``log π(z_c | x, y, EOS)``, hence ``r_s = β_v·(T·log π_T(z_c) − c_ref)``
(:func:`posttrain.ops.laser_score`), at the cost of one extra token. The loss adds
``α·mean_i[w_i·(r_s,i − r_v,i)²]`` over non-truncated rows with class-balanced ``w``
(:func:`posttrain.ops.laser_loss`); after the warm-ups the advantages become ``(1 − τ)·A + τ·Â_s``
(:func:`posttrain.ops.self_reward_advantages`) with ``r_s`` from that same forward, which is why micro-batches
then hold whole groups.

:class:`LaserPlugin`'s hooks, called by ``RLMethod`` at fixed points: :meth:`~LaserPlugin.tail_tokens` (the
reserved token appended after each completion), :meth:`~LaserPlugin.step_extras` (verifier rewards and class
weights over the whole generation batch, the phases of the step), :meth:`~LaserPlugin.batch_fields` (a
micro-batch's :class:`LaserBatch`, attached to the rollout batch as ``batch.laser``),
:meth:`~LaserPlugin.scores` and :meth:`~LaserPlugin.advantages` (``r_s`` and the integrated advantages),
:meth:`~LaserPlugin.loss_term` (the self-reward loss and its stats) and :meth:`~LaserPlugin.summarize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import RunConfig
from posttrain.errors import ConfigError
from posttrain.models.self_scores import reserved_token
from posttrain.ops import laser_class_weights, laser_loss_sum, laser_score, self_reward_advantages
from posttrain.trainers.distributed import Processes


@dataclass
class LaserStep:
    """A step's LaSeR inputs for this process's rollouts: ``[n]`` tensors and the phases of the step."""

    verifier: torch.Tensor  # r_v
    valid: torch.Tensor  # finished with EOS
    class_weights: torch.Tensor  # over the whole generation batch (all processes)
    loss_on: bool
    integrate: bool


@dataclass
class LaserBatch:
    """A micro-batch's LaSeR tensors (``[B]``), attached to the rollout batch as ``batch.laser``."""

    verifier: torch.Tensor  # r_v
    valid: torch.Tensor  # finished with EOS
    class_weights: torch.Tensor  # LaSeR weights over the whole generation batch
    reserved_index: torch.Tensor  # target index of z_c
    integrate: bool
    loss_on: bool
    scores: torch.Tensor | None = None  # r_s from the first update's forward (reused for μ > 1)


class LaserPlugin:
    """LaSeR's part of an RL step: the reserved token, the self-reward loss and the integrated advantages."""

    def __init__(self, config: RunConfig, labels, tokenizer):
        laser = config.rl.laser
        if laser.verifier not in labels:
            raise ConfigError(f"rl.laser.verifier = {laser.verifier!r} is not one of the run's rewards "
                              f"{labels}", where="rl.laser.verifier",
                              fix="name the 0/1 reward (usually math) that verifies a completion")
        self.laser, self.temperature, self.group_size = laser, config.rollout.temperature, config.rollout.samples_per_prompt
        self.reserved_id = reserved_token(tokenizer, laser.token)

    @classmethod
    def from_config(cls, config: RunConfig, labels, tokenizer) -> LaserPlugin | None:
        """The plug-in of ``rl.laser``; ``None`` when LaSeR is off."""
        return cls(config, labels, tokenizer) if config.rl.laser.enabled else None

    def tail_tokens(self) -> list[int]:
        """Appended after each completion (which ends with EOS): ``z_c``."""
        return [self.reserved_id]

    def phases(self, step: int) -> tuple[bool, bool]:
        """(self-reward loss on, self-rewards integrated into the advantages) at ``step``."""
        laser = self.laser
        loss_on = step >= laser.loss_warmup_steps
        integrate = laser.integrate and step >= laser.loss_warmup_steps + laser.integration_warmup_steps
        return loss_on, integrate

    def step_extras(self, components: dict, finished: torch.Tensor, processes: Processes, local: slice,
                    step: int) -> LaserStep:
        """The verifier rewards of this process's rollouts and their weights: class-balanced over all processes
        (``rl.laser.balanced``), else 1 on every finished row."""
        verifier = torch.as_tensor(components[self.laser.verifier], dtype=torch.float32)
        valid_all = processes.gather(finished.float()).bool()  # gloo has no bool all_gather
        weights = laser_class_weights(processes.gather(verifier), valid_all)[local] if self.laser.balanced \
            else finished.float()
        loss_on, integrate = self.phases(step)
        return LaserStep(verifier, finished, weights, loss_on, integrate)

    def batch_fields(self, extras: LaserStep, index: torch.Tensor, reserved_index: torch.Tensor,
                     device) -> LaserBatch:
        """The rows ``index`` of a step's LaSeR inputs, on ``device``."""
        return LaserBatch(verifier=extras.verifier[index].to(device), valid=extras.valid[index].to(device),
                          class_weights=extras.class_weights[index].to(device),
                          reserved_index=reserved_index.to(device), integrate=extras.integrate,
                          loss_on=extras.loss_on)

    def scores(self, logprobs: torch.Tensor, fields: LaserBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``r_s`` and ``log π(z_c)`` of each row from the policy forward's per-target ``logprobs``; the first
        update's scores are kept in ``fields.scores``."""
        rows = torch.arange(fields.reserved_index.shape[0], device=fields.reserved_index.device)
        reserved_logprob = logprobs[rows, fields.reserved_index]
        scores = laser_score(self.temperature * reserved_logprob, self.laser.c_ref, self.laser.beta_v)
        if fields.scores is None:
            fields.scores = scores.detach()
        return scores, reserved_logprob

    def advantages(self, fields: LaserBatch, advantages: torch.Tensor) -> torch.Tensor:
        """``(1 − τ)·A + τ·Â_s`` once integration is on, else ``advantages`` unchanged."""
        if not fields.integrate:
            return advantages
        return self_reward_advantages(fields.scores, fields.valid, advantages, self.group_size,
                                      self.laser.tau, self.laser.filter_threshold)

    def loss_term(self, fields: LaserBatch, scores: torch.Tensor, reserved_logprob: torch.Tensor,
                  rows_total: float) -> tuple[torch.Tensor | None, dict[str, float]]:
        """``α·`` this micro-batch's self-reward loss ÷ the step's rows (``None`` before the loss warm-up ends
        or with ``α = 0``) and the self-verification counts."""
        stats = _laser_stats(fields, scores, reserved_logprob)
        if not (fields.loss_on and self.laser.alpha > 0):
            return None, stats
        sr_loss = laser_loss_sum(scores, fields.verifier, fields.valid, class_weights=fields.class_weights) / rows_total
        stats["self_reward_loss"] = float(sr_loss.detach())
        return self.laser.alpha * sr_loss, stats

    def summarize(self, sums: dict[str, float], passes: int) -> dict[str, float]:
        """Self-verification metrics and the self-reward loss per update."""
        if "sv_correct" not in sums:
            return {}
        metrics = _self_verification(sums)
        if "self_reward_loss" in sums:
            metrics["self_reward_loss"] = sums["self_reward_loss"] / passes
        return metrics


def _laser_stats(fields: LaserBatch, scores: torch.Tensor, reserved_logprob: torch.Tensor) -> dict[str, float]:
    """Counts for self-verification accuracy on correct / incorrect finished completions (r_s > 0.5)."""
    valid = fields.valid
    correct = valid & (fields.verifier == 1)
    incorrect = valid & (fields.verifier == 0)
    predicted = scores.detach() > 0.5
    return {
        "sv_correct": float(correct.sum()), "sv_incorrect": float(incorrect.sum()),
        "sv_true_pos": float((predicted & correct).sum()), "sv_true_neg": float((~predicted & incorrect).sum()),
        "score_sum": float((scores.detach() * valid).sum()), "scored": float(valid.sum()),
        "p_reserved_sum": float((reserved_logprob.detach().exp() * valid).sum()),
    }


def _self_verification(sums: dict[str, float]) -> dict[str, float]:
    """LaSeR's metrics: accuracy of r_s > 0.5 on correct and on incorrect completions, their harmonic mean (F1)."""
    metrics = {"self_reward": sums["score_sum"] / max(sums["scored"], 1.0),
               "p_reserved": sums["p_reserved_sum"] / max(sums["scored"], 1.0)}
    if sums["sv_correct"]:
        metrics["sv_acc_correct"] = sums["sv_true_pos"] / sums["sv_correct"]
    if sums["sv_incorrect"]:
        metrics["sv_acc_incorrect"] = sums["sv_true_neg"] / sums["sv_incorrect"]
    if sums["sv_correct"] and sums["sv_incorrect"]:  # defined only when the batch has both classes
        on_correct, on_incorrect = metrics["sv_acc_correct"], metrics["sv_acc_incorrect"]
        metrics["sv_f1"] = 2 * on_correct * on_incorrect / max(on_correct + on_incorrect, 1e-12)
    return metrics
