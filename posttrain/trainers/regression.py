"""Scalar regression heads (``method: reward_model`` with ``reward_model.objective: regression``): the MetaRM.

A one-label sequence-classification head on the LM (:func:`posttrain.models.reward.load_reward_model`) scores
each text at its last token (:func:`posttrain.models.reward.sequence_scores`); the loss is the mean squared error
against the records' ``label`` over the global batch (:func:`posttrain.ops.regression_loss`; RM-NLHF's MetaRM,
Wang et al. 2026, arXiv 2601.07349, methods.md §4.5), so any split into micro-batches, token budgets or
processes gives the gradient of one big batch.
"""

from __future__ import annotations

import torch

from posttrain.config import RunConfig
from posttrain.data import micro_batches, padded_batch
from posttrain.data.regression import encode_texts, regression_text
from posttrain.errors import DataError
from posttrain.models.reward import sequence_scores
from posttrain.ops import squared_errors
from posttrain.trainers.distributed import Processes
from posttrain.trainers.loop import Method, StepBatches, StepTotals


class RegressionMethod(Method):
    """MSE regression of a scalar head for :class:`posttrain.trainers.loop.Trainer` (built by
    ``method: reward_model`` with ``reward_model.objective: regression``)."""

    def __init__(self, config: RunConfig, records: list[dict], tokenizer, processes: Processes):
        self.config, self.processes, self.pad_id = config, processes, tokenizer.pad_token_id
        texts = [regression_text(record, tokenizer) for record in records]
        self.rows, self.truncated = encode_texts(texts, tokenizer, config.data.max_length)
        self.labels = torch.tensor([record["label"] for record in records], dtype=torch.float32)
        if not self.rows:
            raise DataError("no regression records", fix="give records with `text` and `label`")
        self.num_examples = len(self.rows)
        self.examples_per_step = config.train.batch_size * config.train.grad_accum

    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        train = self.config.train
        groups = micro_batches(share, [len(self.rows[i]) for i in share], train.batch_size, train.micro_batch_tokens)
        batches = [(padded_batch([self.rows[i] for i in group], self.pad_id, self.processes.device),
                    self.labels[group].to(self.processes.device)) for group in groups]
        return StepBatches(batches, StepTotals(rows=len(indices)))

    def loss(self, model, batch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, labels = batch
        scores = sequence_scores(model, inputs)
        loss = squared_errors(scores, labels).sum() / totals.of("rows")
        errors = (scores.detach() - labels).float()
        return loss, {"loss": float(loss.detach()), "rows": float(len(labels)),
                      "squared_error": float((errors**2).sum()), "absolute_error": float(errors.abs().sum()),
                      "score_sum": float(scores.detach().sum()), "tokens": float(inputs["attention_mask"].sum())}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        rows = max(sums["rows"], 1.0)
        return {"loss": sums["loss"], "mse": sums["squared_error"] / rows, "mae": sums["absolute_error"] / rows,
                "mean_score": sums["score_sum"] / rows, "tokens": sums["tokens"]}
