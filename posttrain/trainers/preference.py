"""Preference optimization (``method: dpo``) and Bradley–Terry reward models (``method: reward_model``).

Both train on tokenized (chosen, rejected) pairs (:func:`posttrain.data.preference.tokenize_pairs`). A
micro-batch of ``n`` pairs is **one** forward pass over ``2n`` right-padded rows, the chosen sides first:

* ``dpo`` — each side's sequence log-prob is ``π = Σ_t log π_θ(y_t)`` over its completion tokens
  (:func:`posttrain.ops.completion_logprobs`, no full logits), the loss :func:`posttrain.ops.dpo_loss` of
  ``preference.kind`` plus RPO's ``α·rpo_term`` (Pang et al. 2024). The reference log-probs are those of the
  starting weights, computed once for every pair before the first step (with fresh LoRA adapters: the
  model with its adapters disabled, :func:`posttrain.models.disabled_adapter`) and cached in
  ``runs/<name>/reference_logps.pt`` under a hash of the pairs' tokens and the model, so a resumed run
  reuses them. ``simpo`` and ``orpo`` are reference-free and compute none; ``orpo`` adds the NLL of the chosen
  completions (its ``L_SFT``) as RPO does with weight 1. ``kto`` trains on unpaired records instead
  (:class:`posttrain.trainers.kto.KTOMethod`).
* ``reward_model`` — a one-label sequence-classification head on the LM (:func:`posttrain.models.reward.load_reward_model`); the
  reward of a row is the head's score at its last real token, the loss
  :func:`posttrain.ops.bradley_terry_loss` (with ``reward_model.margin_field`` and
  ``reward_model.center_coefficient``), as TRL 1.16 ``RewardTrainer``.

Every loss here is a mean over the pairs of the global batch, so a micro-batch contributes
``Σ_its pairs loss / N_pairs`` (RPO's token mean: ``−Σ π_c / N_chosen tokens``; both counts are the step's
:class:`~posttrain.trainers.loop.StepTotals` ``pairs`` and ``tokens``) and any split into micro-batches,
token budgets (``train.micro_batch_tokens``) or processes gives the gradient of one big batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.data import collate, micro_batches
from posttrain.data.preference import PreferencePair, TokenizedPairs, tokenize_pairs, tokenize_unpaired
from posttrain.errors import ConfigError, DataError, location
from posttrain.models import disabled_adapter
from posttrain.models.reward import sequence_scores
from posttrain.ops import bradley_terry_losses, completion_logprobs, dpo_loss, rpo_sum
from posttrain.trainers.distributed import Processes
from posttrain.trainers.inputs import training_records
from posttrain.trainers.loop import Method, StepBatches, StepTotals, method_class
from posttrain.trainers.precision import autocast, resolve
from posttrain.trainers.regression import RegressionMethod

REFERENCE_FILE = "reference_logps.pt"


@dataclass
class PairBatch:
    """``n`` pairs as ``2n`` rows (chosen rows, then rejected rows) and what their loss needs."""

    inputs: dict[str, torch.Tensor]  # collate(): input_ids, attention_mask, position_ids, loss_mask
    indices: torch.Tensor  # [n] pair indices
    margins: torch.Tensor | None = None  # [n] reward-model margins
    labels: torch.Tensor | None = None  # [n] KTO: whether each completion is desirable
    reference_point: torch.Tensor | None = None  # KTO's z₀ of the step


class PairMethod(Method):
    """Micro-batching shared by both methods: ``train.batch_size`` pairs a pass, split by token budget."""

    @classmethod
    def from_config(cls, config: RunConfig, model, tokenizer, processes: Processes) -> tuple[Method, dict]:
        """The method over the recipe's preference pairs (a regression head over ``text`` + ``label`` records for
        ``reward_model.objective: regression``)."""
        if config.method == "reward_model" and config.reward_model.objective == "regression":
            records, summary = training_records(config.data, "regression")
            method = RegressionMethod(config, records.records, tokenizer, processes)
            summary.update(truncated=method.truncated)
            return method, summary
        records, summary = training_records(config.data, "unpaired" if trains_unpaired(config) else "preference")
        method, pairs = build_pair_method(config, records.records, model, tokenizer, processes)
        summary.update(examples=len(pairs), truncated=pairs.truncated, dropped=pairs.dropped)
        return method, summary

    def __init__(self, config: RunConfig, pairs: list[PreferencePair], pad_id: int, processes: Processes):
        self.config = config
        self.pairs = pairs
        self.pad_id = pad_id
        self.processes = processes
        self.num_examples = len(pairs)
        self.examples_per_step = config.train.batch_size * config.train.grad_accum
        self._chosen_tokens = [sum(pair.chosen.loss_mask) for pair in pairs]

    def pair_groups(self, share: list[int]) -> list[list[int]]:
        """``train.batch_size`` pairs a pass; with ``train.micro_batch_tokens``, each pass is split longest
        first so that ``2n rows × longest`` stays within that many padded tokens."""
        train = self.config.train
        return micro_batches(share, [2 * self.pairs[i].longest for i in share], train.batch_size,
                             train.micro_batch_tokens)

    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        totals = StepTotals(pairs=len(indices), tokens=sum(self._chosen_tokens[i] for i in indices))
        return StepBatches([self.collate(group) for group in self.pair_groups(share)], totals)

    def collate(self, indices: list[int], sides: tuple[str, ...] = ("chosen", "rejected")) -> PairBatch:
        """The rows of ``sides`` of the pairs ``indices``, side after side."""
        pairs = [self.pairs[i] for i in indices]
        inputs = collate([getattr(pair, side) for side in sides for pair in pairs], self.pad_id)
        device = self.processes.device
        return PairBatch({key: value.to(device) for key, value in inputs.items()}, torch.tensor(indices))


# ------------------------------------------------------------------------------------------------- DPO


class PreferenceMethod(PairMethod, name="dpo"):
    """DPO and its family (``preference.kind``) for :class:`posttrain.trainers.loop.Trainer`."""

    def __init__(self, config: RunConfig, pairs: list[PreferencePair], model, pad_id: int, processes: Processes,
                 label_smoothing: list[float] | None = None):
        super().__init__(config, pairs, pad_id, processes)
        self.preference = config.preference
        # [N] per-pair ε (preference.label_smoothing_field, CREAM's 1 − C), else the one preference.label_smoothing
        self.pair_smoothing = None if label_smoothing is None else torch.tensor(label_smoothing)
        self.reference = None  # [N, 2]: reference (chosen, rejected) log-probs of every pair
        if self.preference.reference == "precompute":
            self.reference = self._cached_reference(model)

    def sequence_logps(self, model, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs ``[2n]`` and completion lengths ``[2n]`` of a batch's rows."""
        inputs = batch.inputs
        # no attention mask: rows are right-padded, so under causal attention no real token sees padding
        out = completion_logprobs(model, inputs["input_ids"], inputs["loss_mask"],
                                  position_ids=inputs["position_ids"], chunk_size=self.config.train.chunk_size)
        return out.logprobs.sum(-1), out.mask.sum(-1)

    def loss(self, model, batch: PairBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        logps, lengths = self.sequence_logps(model, batch)
        pairs = len(batch.indices)
        chosen, rejected = logps[:pairs], logps[pairs:]
        reference = (None, None)
        if self.reference is not None:
            ref = self.reference[batch.indices].to(device=logps.device, dtype=logps.dtype)
            reference = (ref[:, 0], ref[:, 1])
        pref = self.preference
        smoothing = pref.label_smoothing if self.pair_smoothing is None else self.pair_smoothing[batch.indices]
        result = dpo_loss(chosen, rejected, *reference, beta=pref.beta, kind=pref.kind,
                          label_smoothing=smoothing, gamma=pref.gamma,
                          chosen_lengths=lengths[:pairs], rejected_lengths=lengths[pairs:])
        loss = result.losses.sum() / totals.of("pairs")
        stats = {}
        nll_weight = 1.0 if pref.kind == "orpo" else pref.rpo_alpha  # ORPO's L_SFT, RPO's α
        if nll_weight:
            nll = rpo_sum(chosen) / totals.of("tokens")
            loss = loss + nll_weight * nll
            stats["chosen_nll"] = float(nll.detach())
        margins = result.chosen_rewards - result.rejected_rewards
        stats.update({
            "loss": float(loss.detach()),
            "pairs": float(pairs),
            "correct": float((margins > 0).sum()),
            "margin_sum": float(margins.sum()),
            "chosen_reward_sum": float(result.chosen_rewards.sum()),
            "rejected_reward_sum": float(result.rejected_rewards.sum()),
            "chosen_logp_sum": float(chosen.detach().sum()),
            "rejected_logp_sum": float(rejected.detach().sum()),
            "tokens": float(batch.inputs["attention_mask"].sum()),
        })
        return loss, stats

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = max(sums["pairs"], 1.0)
        metrics = {"loss": sums["loss"], "reward_accuracy": sums["correct"] / pairs,
                   "reward_margin": sums["margin_sum"] / pairs, "tokens": sums["tokens"]}
        for name in ("chosen_reward", "rejected_reward", "chosen_logp", "rejected_logp"):
            metrics[name] = sums[f"{name}_sum"] / pairs
        if "chosen_nll" in sums:
            metrics["chosen_nll"] = sums["chosen_nll"]
        return metrics

    # -- the reference ---------------------------------------------------------------------------
    def reference_key(self, model) -> str:
        """A hash of everything the reference log-probs depend on: model, dtype, device type, autocast and pair
        tokens."""
        parameter = next(model.parameters())
        device_type = self.processes.device.type
        precision = resolve(self.config.train.precision, device_type, parameter.dtype)
        digest = hashlib.sha256(f"{self.config.model.name}|{parameter.dtype}|{device_type}|{precision}|"
                                f"{len(self.pairs)}".encode())
        for pair in self.pairs:
            for example in (pair.chosen, pair.rejected):
                digest.update(array("q", example.input_ids).tobytes())
                digest.update(array("b", example.loss_mask).tobytes())
        return digest.hexdigest()

    def _cached_reference(self, model) -> torch.Tensor:
        """The reference log-probs from ``reference_logps.pt`` when its key matches, else computed and saved
        by the main process. The other processes always wait for it, then read the file: were they to look
        first, one could find the file the main process has just written and go on without the barrier the
        main process then waits in."""
        path = self.config.run_dir / REFERENCE_FILE
        key = self.reference_key(model)
        cached = None
        if self.processes.is_main:
            cached = read_reference(path, key)
            if cached is None:
                print(f"computing reference log-probs of {len(self.pairs)} pairs ...", flush=True)
                cached = self.compute_reference(model)
                write_reference(path, key, cached)
        self.processes.barrier()
        return cached if cached is not None else read_reference(path, key)

    def compute_reference(self, model) -> torch.Tensor:
        """``[N, 2]`` log-probs of every pair under the starting weights (fresh LoRA: adapters disabled)."""
        fresh_adapters = self.config.model.lora is not None
        order = sorted(range(len(self.pairs)), key=lambda i: -self.pairs[i].longest)  # little padding
        result = torch.zeros(len(self.pairs), 2, dtype=torch.float32)
        model.eval()
        with torch.no_grad(), disabled_adapter(model) if fresh_adapters else contextlib.nullcontext():
            for group in self.pair_groups(order):
                batch = self.collate(group)
                with autocast(model, self.config.train.precision):
                    logps, _ = self.sequence_logps(model, batch)
                result[batch.indices] = logps.float().cpu().view(2, -1).T
        return result


def read_reference(path: Path, key: str) -> torch.Tensor | None:
    """Cached reference log-probs ``[N, 2]``, or None when there is no cache or it was made for other pairs."""
    if not path.is_file():
        return None
    cached = torch.load(path, weights_only=True)
    return cached["logps"] if cached.get("key") == key else None


def write_reference(path: Path, key: str, logps: torch.Tensor) -> None:
    """Write the cache atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"key": key, "logps": logps}, temporary)
    os.replace(temporary, path)


# ---------------------------------------------------------------------------------------- reward model


class RewardModelMethod(PairMethod, name="reward_model"):
    """Bradley–Terry reward-model training for :class:`posttrain.trainers.loop.Trainer`."""

    def __init__(self, config: RunConfig, pairs: list[PreferencePair], margins: list[float] | None, pad_id: int,
                 processes: Processes):
        super().__init__(config, pairs, pad_id, processes)
        self.margins = None if margins is None else torch.tensor(margins, dtype=torch.float32)

    def collate(self, indices: list[int], sides: tuple[str, ...] = ("chosen", "rejected")) -> PairBatch:
        batch = super().collate(indices, sides)
        if self.margins is not None:
            batch.margins = self.margins[batch.indices].to(self.processes.device)
        return batch

    def loss(self, model, batch: PairBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        rewards = sequence_scores(model, batch.inputs)
        pairs = len(batch.indices)
        chosen, rejected = rewards[:pairs], rewards[pairs:]
        margins = None if batch.margins is None else batch.margins.to(rewards.dtype)
        losses = bradley_terry_losses(chosen, rejected, margins, self.config.reward_model.center_coefficient)
        loss = losses.sum() / totals.of("pairs")
        margins = (chosen - rejected).detach()
        stats = {
            "loss": float(loss.detach()), "pairs": float(pairs), "correct": float((margins > 0).sum()),
            "margin_sum": float(margins.sum()), "chosen_reward_sum": float(chosen.detach().sum()),
            "rejected_reward_sum": float(rejected.detach().sum()),
            "tokens": float(batch.inputs["attention_mask"].sum()),
        }
        return loss, stats

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = max(sums["pairs"], 1.0)
        return {"loss": sums["loss"], "accuracy": sums["correct"] / pairs, "margin": sums["margin_sum"] / pairs,
                "chosen_reward": sums["chosen_reward_sum"] / pairs,
                "rejected_reward": sums["rejected_reward_sum"] / pairs, "tokens": sums["tokens"]}


# ------------------------------------------------------------------------------------------- building


def build_pair_method(config: RunConfig, records: list[dict], model, tokenizer, processes: Processes
                      ) -> tuple[PairMethod, TokenizedPairs]:
    """The ``dpo`` or ``reward_model`` method over normalized preference records (unpaired records for
    ``preference.kind: kto``), and the tokenized pairs."""
    data = config.data
    if data.packing or (config.method == "dpo" and not data.completion_only):
        raise ConfigError(f"method {config.method} trains on right-padded pairs of completions",
                          where="data.packing" if data.packing else "data.completion_only",
                          fix="set data.packing=false and data.completion_only=true")
    unpaired = trains_unpaired(config)
    if unpaired:
        tokenized = tokenize_unpaired(records, tokenizer, data.max_length, overlong=data.overlong, seed=config.seed)
    else:
        tokenized = tokenize_pairs(records, tokenizer, data.max_length, overlong=data.overlong)
    if not tokenized.pairs:
        raise DataError("no usable preference pairs", where=str(data.train.path or data.train.task),
                        fix="check the data path and data.max_length (pairs whose prompt fills it are dropped)")
    pad_id = tokenizer.pad_token_id
    if unpaired:  # KTO builds on PreferenceMethod (posttrain.trainers.kto), registered as the method "kto"
        labels = [records[pair.index]["label"] for pair in tokenized.pairs]
        return method_class("kto")(config, tokenized.pairs, labels, model, pad_id, processes), tokenized
    if config.method == "dpo":
        field = config.preference.label_smoothing_field
        smoothing = None if field is None else [
            _record_number(records[pair.index], field, "preference.label_smoothing_field", (0.0, 1.0))
            for pair in tokenized.pairs]
        return PreferenceMethod(config, tokenized.pairs, model, pad_id, processes, smoothing), tokenized
    field = config.reward_model.margin_field
    margins = None if field is None else [
        _record_number(records[pair.index], field, "reward_model.margin_field") for pair in tokenized.pairs]
    return RewardModelMethod(config, tokenized.pairs, margins, pad_id, processes), tokenized


def trains_unpaired(config: RunConfig) -> bool:
    """Whether the run trains on unpaired records (KTO) rather than preference pairs."""
    return config.method == "dpo" and config.preference.kind == "kto"


def _record_number(record: dict, field: str, setting: str, bounds: tuple[float, float] | None = None) -> float:
    """The number in ``record[field]`` (the field a ``setting`` names), within ``bounds`` when given."""
    value = record.get(field)
    number = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if not number or (bounds is not None and not bounds[0] <= value <= bounds[1]):
        wanted = "a number" if bounds is None else f"a number in [{bounds[0]:g}, {bounds[1]:g}]"
        raise DataError(f"{setting} is {field!r} but this record's {field!r} is not {wanted} (got {value!r})",
                        where=location(record.get("_where"), field=field),
                        fix=f"give every record {wanted} as {field!r}, or unset {setting}")
    return float(value)
