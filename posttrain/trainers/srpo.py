"""SRPO: group-relative policy optimization and self-distillation, routed per rollout by its reward (Li et al.
2026, "Unifying Group-Relative and Self-Distillation Policy Optimization via Sample Routing", arXiv 2604.02288;
methods.md §7.9). ``method: srpo``, configured in ``rl:`` (rewards, advantages, the policy loss) and ``distill:``
(the feedback teacher, the divergence, the entropy weighting).

One step samples and scores groups exactly as GRPO (:class:`posttrain.trainers.rl.RLMethod`). Rollout ``i`` is
**correct** when its total reward is ≥ ``distill.feedback.success_threshold``, else **failed**:

* correct rollouts get GRPO's advantage-weighted clipped policy gradient (:func:`posttrain.ops.policy_loss_sum`
  with the group advantages of the whole step, failed rollouts included in the groups' statistics);
* failed rollouts are distilled toward SDPO's feedback-conditioned self-teacher (``distill.teacher:
  self_feedback``, contexts from :mod:`posttrain.trainers.feedback`; a failed rollout with no feedback is skipped
  unless ``feedback.no_feedback: prompt``), each token weighted by the teacher's entropy
  (:func:`posttrain.ops.entropy_weights`, ``distill.entropy_weighting``; default ``exp``, τ_H = ``entropy_tau``).

    L = L_PG / D_PG + Σ_{failed i, t} w_{i,t}·d_{i,t} / N

Normalization: ``L_PG`` is GRPO's loss sum over the correct rollouts' tokens, divided by the total
``rl.loss`` names over the **whole** step (rows for ``grpo``/``dr_grpo``, trained tokens for ``bnpo``/``dapo``),
so with every rollout correct SRPO is exactly GRPO; the distillation sum is divided by ``N``, the step's trained
completion tokens (all rollouts), so with every rollout failed and ``w ≡ 1`` it is exactly SDPO
(``method: distill, teacher: self_feedback``) on those rollouts. ``distill_weight`` logs the mean ``w`` over the
distilled tokens, ``entropy`` the student's over every routed token (policy and distilled), the ``clip_*`` fractions
are over the policy tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.config import RunConfig
from posttrain.rollout import Generation
from posttrain.trainers.distributed import Processes
from posttrain.trainers.feedback import feedback_metrics, is_correct
from posttrain.trainers.rl import RLMethod, RolloutBatch
from posttrain.trainers.rollouts import RolloutRows, rollout_rows
from posttrain.trainers.teacher import DistillTeacher, FeedbackContexts, row_token_flags


@dataclass
class RoutedBatch(RolloutBatch):
    """A GRPO micro-batch whose ``completion_mask`` holds the correct rollouts only, with the failed rollouts'
    teacher rows and which rows are distilled."""

    teacher_rows: RolloutRows | None = None  # the same completions after each rollout's teacher prompt
    distilled: list[bool] | None = None


class SRPOMethod(RLMethod, name="srpo"):
    """SRPO for :class:`posttrain.trainers.loop.Trainer`."""

    def __init__(self, config: RunConfig, records: list[dict], model, tokenizer, processes: Processes):
        super().__init__(config, records, model, tokenizer, processes)
        self.teacher = DistillTeacher(config, model, tokenizer, processes)
        self.teacher.check_feedback_records(records, config.data.train.path or f"task:{config.data.train.task}")
        self.threshold = config.distill.feedback.success_threshold
        self.correct: list[bool] = []
        self.contexts: FeedbackContexts | None = None

    def _sample_groups(self, model, indices: list[int], share: list[int], step: int):
        """GRPO's groups, then each rollout's route and, for the failed ones, its teacher prompt."""
        sampled = super()._sample_groups(model, indices, share, step)
        rewards = sampled.scored.total.tolist()
        self.correct = [is_correct(r, self.threshold) for r in rewards]
        records = [self.records[sampled.prompts[g.prompt_index]] for g in sampled.generations]
        self.contexts = self.teacher.feedback_contexts(records, [g.prompt_index for g in sampled.generations],
                                                       sampled.generations, rewards,
                                                       routed=[not c for c in self.correct])
        return sampled

    def _sample_columns(self, count: int, scored, advantages: torch.Tensor) -> list[dict]:
        """GRPO's columns plus each rollout's route (``policy`` or ``distill``), the feedback its teacher was shown
        and whether it was distilled."""
        columns = super()._sample_columns(count, scored, advantages)
        for column, correct, kinds, distilled in zip(columns, self.correct, self.contexts.kinds,
                                                     self.contexts.distilled, strict=True):
            column.update(route="policy" if correct else "distill", feedback=list(kinds), distilled=distilled)
        return columns

    def step_batches(self, model, indices: list[int], share: list[int], step: int):
        work = super().step_batches(model, indices, share, step)
        work.stats.update(self.contexts.stats, correct=float(sum(self.correct)))
        return work

    def _micro_batch(self, model, generations: list[Generation], trained: list[bool], advantages, laser,
                     index: torch.Tensor) -> RoutedBatch:
        rows = index.tolist()
        policy_rows = [keep and self.correct[i] for keep, i in zip(trained, rows, strict=True)]
        batch = super()._micro_batch(model, generations, policy_rows, advantages, laser, index)
        teacher_rows = rollout_rows(generations, self.pad_id, prompt_ids=[self.contexts.prompt_ids[i] for i in rows])
        distilled = [keep and self.contexts.distilled[i] for keep, i in zip(trained, rows, strict=True)]
        return RoutedBatch(**vars(batch), teacher_rows=teacher_rows, distilled=distilled)

    def loss(self, model, batch: RoutedBatch, totals) -> tuple[torch.Tensor, dict[str, float]]:
        out = self._forward(model, batch, with_entropy=True, with_hidden=True)
        loss, stats = self.policy_objective(out, batch, totals)
        routed = batch.completion_mask + torch.stack([batch.target_mask[row] * keep
                                                      for row, keep in enumerate(batch.distilled)])
        stats.update(distill_loss=0.0, distill_weight_sum=0.0, distilled_tokens=0.0, divergence_sum=0.0,
                     routed_tokens=float(routed.sum()), routed_entropy_sum=float((out.entropy.detach() * routed).sum()))
        if not any(batch.distilled):
            return loss, stats
        mask = batch.target_mask.bool()
        flags = row_token_flags(batch.target_mask, batch.distilled)
        tokens = self.teacher.divergence(model, out.hidden[:, :-1][mask], batch.input_ids[:, 1:][mask],
                                         batch.teacher_rows)
        weights = self.teacher.token_weights(tokens, flags)
        distill = (tokens.divergence * weights).sum() / totals.of("tokens")
        loss = loss + distill
        stats.update(distill_loss=float(distill.detach()), distill_weight_sum=float(weights.sum()),
                     distilled_tokens=float(flags.sum()),
                     divergence_sum=float((tokens.divergence.detach() * flags).sum()), loss=float(loss.detach()))
        return loss, stats

    def frozen_models(self) -> list[torch.nn.Module]:
        return [*super().frozen_models(), *self.teacher.frozen_models()]

    def after_step(self, model, step: int) -> tuple[dict[str, float], bool]:
        self.teacher.update_average(model)  # context_weights: ema
        return super().after_step(model, step)

    def save_state(self, directory) -> None:
        super().save_state(directory)
        self.teacher.save_average(directory)

    def load_state(self, directory) -> None:
        super().load_state(directory)
        self.teacher.load_average(directory)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = super().summarize(sums)
        passes, rollouts = self.updates_per_step, max(sums["rollouts"], 1.0)
        distilled = max(sums["distilled_tokens"], 1.0)
        metrics.update(entropy=sums["routed_entropy_sum"] / max(sums["routed_tokens"], 1.0),
                       distill_loss=sums["distill_loss"] / passes, correct_fraction=sums["correct"] / rollouts,
                       distill_weight=sums["distill_weight_sum"] / distilled,
                       divergence=sums["divergence_sum"] / distilled, **feedback_metrics(sums, rollouts))
        return metrics
