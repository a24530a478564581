"""KTO (``method: dpo`` with ``preference.kind: kto``) on unpaired records: ``prompt``, ``completion``, ``label``.

Each example is a pair of rows (:func:`posttrain.data.preference.tokenize_unpaired`): its own completion and a
*mismatched* one (its prompt with another record's completion). The reference log-probs of both rows are
precomputed and cached like DPO's (:class:`~posttrain.trainers.preference.PreferenceMethod`). Per step:

1. the reference point ``z₀`` (:func:`posttrain.ops.kto_reference_point`) from the mismatched rows of **all** the
   step's examples, over every process: a no-grad pass of the current policy, gathered before the first
   micro-batch. TRL 1.16 estimates it per device batch (mismatching within that batch); one estimate per step
   keeps the step's gradient independent of how it is split into micro-batches and processes (the
   normalization rule, docs/design.md), and the mismatched completions come from a fixed seeded pairing so
   that their reference log-probs can be precomputed;
2. the loss :func:`posttrain.ops.kto_loss` on the own rows: each micro-batch contributes
   ``Σ_its examples loss / N_examples`` (the step's :class:`~posttrain.trainers.loop.StepTotals` ``rows``),
   TRL's mean over the batch.
"""

from __future__ import annotations

import torch

from posttrain.config import RunConfig
from posttrain.data.preference import PreferencePair
from posttrain.ops import kto_loss, kto_reference_point
from posttrain.trainers.distributed import Processes
from posttrain.trainers.loop import StepBatches, StepTotals
from posttrain.trainers.precision import autocast
from posttrain.trainers.preference import PairBatch, PreferenceMethod

OWN, MISMATCHED = ("chosen",), ("rejected",)  # the sides of a tokenized unpaired example


class KTOMethod(PreferenceMethod, name="kto"):
    """KTO for :class:`posttrain.trainers.loop.Trainer` (built by ``build_pair_method`` for ``method: dpo`` with
    ``preference.kind: kto``, which finds it in the method registry under "kto"; see the module docstring)."""

    def __init__(self, config: RunConfig, pairs: list[PreferencePair], labels: list[bool], model, pad_id: int,
                 processes: Processes):
        super().__init__(config, pairs, model, pad_id, processes)  # the reference: [N, 2] own, mismatched
        self.labels = torch.tensor(labels, dtype=torch.bool)

    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        # one row per example in each pass; in lockstep (FSDP) as many passes on every process, as the forwards
        # of the reference point are collective there
        train = self.config.train
        groups = self.processes.micro_batches(share, [self.pairs[i].longest for i in share], train.batch_size,
                                              train.micro_batch_tokens)
        reference_point = self.reference_point(model, groups)
        batches = []
        for group in groups:
            batch = self.collate(group, OWN)
            batch.labels = self.labels[batch.indices].to(self.processes.device)
            batch.reference_point = reference_point
            batches.append(batch)
        stats = {"kl_rows": float(reference_point) * len(share)}  # summed over processes: z₀ × the step's rows
        return StepBatches(batches, StepTotals(rows=len(indices)), stats)

    def reference_point(self, model, groups: list[list[int]]) -> torch.Tensor:
        """``z₀`` of the step: the policy's and the reference's log-probs of the mismatched rows of every process."""
        policy, reference = [], []
        model.eval()
        with torch.no_grad():
            for group in groups:
                batch = self.collate(group, MISMATCHED)
                with autocast(model, self.config.train.precision):
                    logps, _ = self.sequence_logps(model, batch)
                policy.append(logps.float())
                reference.append(self.reference[batch.indices, 1].to(logps.device))
        gathered = [self.processes.gather(torch.cat(parts)) for parts in (policy, reference)]
        return kto_reference_point(*gathered)

    def loss(self, model, batch: PairBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        logps, _ = self.sequence_logps(model, batch)
        ref = self.reference[batch.indices, 0].to(device=logps.device, dtype=logps.dtype)
        pref = self.preference
        result = kto_loss(logps, ref, batch.labels, batch.reference_point, beta=pref.beta,
                          desirable_weight=pref.desirable_weight, undesirable_weight=pref.undesirable_weight)
        loss = result.losses.sum() / totals.of("rows")
        desirable, logps = batch.labels, logps.detach()
        stats = {
            "loss": float(loss.detach()),
            "rows": float(len(logps)),
            "desirable": float(desirable.sum()),
            "desirable_reward_sum": float(result.rewards[desirable].sum()),
            "undesirable_reward_sum": float(result.rewards[~desirable].sum()),
            "desirable_logp_sum": float(logps[desirable].sum()),
            "undesirable_logp_sum": float(logps[~desirable].sum()),
            "tokens": float(batch.inputs["attention_mask"].sum()),
        }
        return loss, stats

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        rows = max(sums["rows"], 1.0)
        counts = {"desirable": sums["desirable"], "undesirable": sums["rows"] - sums["desirable"]}
        metrics = {"loss": sums["loss"], "kl": sums["kl_rows"] / rows, "tokens": sums["tokens"]}
        for label, count in counts.items():
            for name in ("reward", "logp"):
                metrics[f"{label}_{name}"] = sums[f"{label}_{name}_sum"] / max(count, 1.0)
        metrics["reward_margin"] = metrics["desirable_reward"] - metrics["undesirable_reward"]
        return metrics
