"""Supervised fine-tuning: ``nll``, ProFit, ProFit-lower and DFT on completion tokens.

The loss of a global batch is ``−Σ_t w_t log p_θ(y_t) / N`` (:func:`posttrain.ops.sft_loss`),
with ``N`` the number of completion tokens in the whole global batch, so gradient accumulation and
several processes give exactly the gradient of one big batch. Examples are packed into rows of at
most ``max_length`` tokens with positions restarting per example and no attention across examples
(``data.packing``), or padded one per row.
"""

from __future__ import annotations

import torch

from posttrain.config import RunConfig
from posttrain.data import Example, collate, micro_batches, pack_examples, tokenize_sft
from posttrain.errors import DataError
from posttrain.ops import completion_logprobs, sft_loss_sum, sft_token_weights
from posttrain.trainers.distributed import Processes
from posttrain.trainers.inputs import training_records
from posttrain.trainers.loop import Method, StepBatches, StepTotals


class SFTMethod(Method, name="sft"):
    """The SFT method for :class:`posttrain.trainers.loop.Trainer`."""

    @classmethod
    def from_config(cls, config: RunConfig, model, tokenizer, processes: Processes) -> tuple[SFTMethod, dict]:
        data = config.data
        records, summary = training_records(data, "sft")
        tokenized = tokenize_sft(records.records, tokenizer, data.max_length, overlong=data.overlong,
                                 completion_only=data.completion_only)
        if not tokenized.examples:
            raise DataError(f"no usable training examples in {records.source}", fix="check the data path and "
                            "data.max_length (examples longer than it may all be dropped)")
        block = data.sample_block
        if block > 1 and (tokenized.dropped or len(tokenized.examples) % block):
            raise DataError(f"data.sample_block = {block} draws consecutive records together, but {records.source} "
                            f"gives {len(tokenized.examples)} usable examples ({tokenized.dropped} dropped as "
                            "over-long), which breaks the blocks", where="data.sample_block",
                            fix="give whole blocks of records and a data.max_length that drops none, or use 1")
        summary.update(examples=len(tokenized.examples), truncated=tokenized.truncated, dropped=tokenized.dropped)
        return cls(config, tokenized.examples, tokenizer.pad_token_id, processes.device), summary

    def __init__(self, config: RunConfig, examples: list[Example], pad_id: int, device: torch.device):
        self.config = config
        self.examples = examples
        self.num_examples = len(examples)
        self.examples_per_step = config.train.batch_size * config.train.grad_accum
        self.sample_block = config.data.sample_block
        self.pad_id = pad_id
        self.device = device
        # target tokens of an example: loss_mask[1:] (the first token is never predicted)
        self._targets = [sum(example.loss_mask[1:]) for example in examples]

    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        train = self.config.train
        # padded rows: regroup each batch by length into forward passes of at most micro_batch_tokens tokens
        budget = 0 if self.config.data.packing else train.micro_batch_tokens
        micro = micro_batches(share, [len(self.examples[i]) for i in share], train.batch_size, budget)
        totals = StepTotals(rows=len(indices), tokens=sum(self._targets[i] for i in indices))
        return StepBatches([self.collate(part) for part in micro], totals)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        examples = [self.examples[i] for i in indices]
        rows = pack_examples(examples, self.config.data.max_length) if self.config.data.packing else examples
        batch = collate(rows, self.pad_id)
        return {key: value.to(self.device) for key, value in batch.items()}

    def loss(self, model, batch: dict[str, torch.Tensor], totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        # no attention mask: rows are right-padded and packed examples are kept apart by their positions
        out = completion_logprobs(model, batch["input_ids"], batch["loss_mask"], position_ids=batch["position_ids"],
                                  chunk_size=self.config.train.chunk_size)
        sft = self.config.sft
        loss = sft_loss_sum(out.logprobs, out.mask, sft.loss, sft.tau) / totals.of("tokens")
        kept = sft_token_weights(out.logprobs, out.mask, "profit", sft.tau)
        tokens = batch["attention_mask"].sum()
        stats = {
            "loss": float(loss.detach()),
            "target_tokens": float(out.mask.sum()),
            "kept_tokens": float(kept.sum()),
            "nll_sum": float(-(out.logprobs.detach() * out.mask).sum()),
            "tokens": float(tokens),
        }
        return loss, stats

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        targets = max(sums["target_tokens"], 1.0)
        metrics = {"loss": sums["loss"], "nll": sums["nll_sum"] / targets, "tokens": sums["tokens"]}
        # fraction of target tokens with sg p ≤ τ: what ProFit masks out (logged for every loss kind)
        metrics["masked_fraction"] = 1.0 - sums["kept_tokens"] / targets
        return metrics
