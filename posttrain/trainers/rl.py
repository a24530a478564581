"""RL with verifiable rewards: the GRPO family, optionally with LaSeR last-token self-rewarding.

One step: ``prompts_per_step`` prompts → ``G`` sampled completions each (the rollout engine, with the
log-probability of every sampled token) → rewards (:mod:`posttrain.rewards`) → group advantages
(:func:`posttrain.ops.group_advantages`) → ``μ = updates_per_step`` optimizer updates over those rollouts,
each minimizing :func:`posttrain.ops.policy_loss` with the importance ratio taken against the sampling
log-probabilities (with top-p/top-k sampling, which changes those, against a forward pass of the policy
before the first update instead).

The loss of a micro-batch is its share of the loss of the **whole generation batch** (all micro-batches
of all processes): the sum :func:`posttrain.ops.policy_loss_sum` divided by the step's total that
``POLICY_LOSS_TOTALS[rl.loss]`` names (rows for ``grpo``/``dr_grpo``, trained tokens for ``bnpo``/``dapo``),
so the gradient does not depend on how the batch is split (with one micro-batch on one process each kind is
exactly TRL 1.16's loss).

LaSeR (Yang et al. 2025, arXiv 2510.14943; methods.md §6): each row is ``prompt, completion, z_c``, where
the completion ends with EOS; the forward pass that gives the policy log-probabilities also gives
``log π(z_c | x, y, EOS)``, hence ``r_s = β_v·(T·log π_T(z_c) − c_ref)`` (:func:`posttrain.ops.laser_score`),
at the cost of one extra token. The loss adds ``α·mean_i[w_i·(r_s,i − r_v,i)²]`` over non-truncated rows
with class-balanced ``w`` (:func:`posttrain.ops.laser_loss`); after the warm-ups the advantages become
``(1 − τ)·A + τ·Â_s`` (:func:`posttrain.ops.self_reward_advantages`) with ``r_s`` from that same forward,
which is why micro-batches then hold whole groups.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.data import encode_prompts, micro_batches, prompt_text
from posttrain.errors import ConfigError, DataError
from posttrain.evals.selfreward import reserved_token
from posttrain.judges.tasks import judge_task_prompts
from posttrain.models import disabled_adapter, is_peft_model
from posttrain.ops import (
    POLICY_LOSS_TOTALS,
    completion_logprobs,
    group_advantages,
    laser_class_weights,
    laser_loss_sum,
    laser_score,
    policy_loss_sum,
    self_reward_advantages,
)
from posttrain.rewards import build_rewards, check_rewards_for_records
from posttrain.rollout import Generation, HFEngine, SamplingParams
from posttrain.trainers.distributed import Processes
from posttrain.trainers.inputs import training_records
from posttrain.trainers.loop import Method, StepBatches, StepTotals
from posttrain.trainers.rollouts import (
    append_samples,
    prompts_per_process,
    rollout_rows,
    rollout_seed,
    samples_path,
)
from posttrain.trainers.run_log import truncate_metrics


@dataclass
class RolloutBatch:
    """One micro-batch of rollouts, as right-padded rows ``prompt, completion[, z_c]``.

    Per-token tensors are ``[B, T-1]``, aligned with the targets ``input_ids[:, 1:]``; ``completion_mask``
    marks the completion tokens trained on, ``reserved_index`` the target index of ``z_c`` (LaSeR).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor  # completion tokens (even masked truncated ones) + z_c: what the head projects
    completion_mask: torch.Tensor
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    advantages: torch.Tensor  # [B]
    verifier: torch.Tensor  # [B] r_v (LaSeR)
    valid: torch.Tensor  # [B] finished with EOS
    class_weights: torch.Tensor  # [B] LaSeR weights over the whole generation batch
    reserved_index: torch.Tensor | None  # [B]
    integrate: bool
    laser_loss_on: bool
    sequence_tokens: float  # prompt + completion (+ z_c) tokens of all rows; a sampled pad token counts
    scores: torch.Tensor | None = None  # r_s from the first update's forward (reused for μ > 1)


class RLMethod(Method, name="grpo"):
    """GRPO-family RL (and LaSeR) for :class:`posttrain.trainers.loop.Trainer`."""

    @classmethod
    def from_config(cls, config: RunConfig, model, tokenizer, processes: Processes) -> tuple[RLMethod, dict]:
        records, summary = training_records(config.data, "prompt")
        judge = config.rl.judge
        if judge is not None:  # each labelled pair becomes two judge prompts, one per A/B order
            records.records = judge_task_prompts(records.records, judge.template,
                                                 hide_critiques=judge.hide_critiques, seed=config.seed)
            summary.update(tasks=summary["examples"], examples=len(records.records))
        if not records.records:
            raise DataError(f"no prompts in {records.source}", fix="check the data path")
        return cls(config, records.records, model, tokenizer, processes), summary

    def __init__(self, config: RunConfig, records: list[dict], model, tokenizer, processes: Processes):
        rl = config.rl
        self.config, self.rl, self.tokenizer, self.processes = config, rl, tokenizer, processes
        self.records = records
        self.prompts = encode_prompts(records, tokenizer)
        self.prompt_texts = [prompt_text(record) for record in records]
        self.num_examples = len(records)
        self.examples_per_step = prompts_per_process(rl.prompts_per_step, processes, "rl")
        self.updates_per_step = rl.updates_per_step
        self.rewards = build_rewards(rl.rewards)
        check_rewards_for_records(self.rewards, records, config.data.train.path or f"task:{config.data.train.task}")
        self.rewards.prepare(tokenizer)
        if rl.judge is not None:  # both A/B orders of a judge task in the same step
            self.sample_block = 2
        self.engine = HFEngine(model, tokenizer, batch_size=rl.rollout_batch_size, dtype=rl.rollout_dtype)
        self.pad_id = self.engine.pad_id
        self.reserved_id = None
        if rl.laser.enabled:
            if rl.laser.verifier not in self.rewards.labels:
                raise ConfigError(f"rl.laser.verifier = {rl.laser.verifier!r} is not one of the run's rewards "
                                  f"{self.rewards.labels}", where="rl.laser.verifier",
                                  fix="name the 0/1 reward (usually math) that verifies a completion")
            self.reserved_id = reserved_token(tokenizer, rl.laser.token)
        self.reference = None
        if rl.beta > 0 and not is_peft_model(model):
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self._samples_checked = False
        self.samples_path = samples_path(config.run_dir, processes)

    # -- rollouts ---------------------------------------------------------------------------------
    def _sampling(self, step: int) -> SamplingParams:
        rl = self.rl
        return SamplingParams(temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k,
                              max_new_tokens=rl.max_new_tokens, n=rl.group_size,
                              seed=rollout_seed(self.config.seed, step, self.processes))

    def _laser_phase(self, step: int) -> tuple[bool, bool]:
        laser = self.rl.laser
        if not laser.enabled:
            return False, False
        loss_on = step >= laser.loss_warmup_steps
        integrate = laser.integrate and step >= laser.loss_warmup_steps + laser.integration_warmup_steps
        return loss_on, integrate

    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        rl = self.rl
        if not self._samples_checked:  # a resumed run drops the samples a killed run wrote past its checkpoint
            truncate_metrics(self.samples_path, step)
            self._samples_checked = True
        started = time.perf_counter()
        generations = self.engine.generate([self.prompts[i] for i in share], self._sampling(step))
        rollout_seconds = time.perf_counter() - started
        records = [self.records[share[g.prompt_index]] for g in generations]
        scored = self.rewards.score([self.prompt_texts[share[g.prompt_index]] for g in generations],
                                    [g.text for g in generations],
                                    [{**r, "finish_reason": g.finish_reason, "completion_tokens": len(g)}
                                     for r, g in zip(records, generations, strict=True)])
        rewards = scored.total.double()
        finished = torch.tensor([g.finish_reason == "eos" for g in generations])
        verifier = (scored.components[rl.laser.verifier] if rl.laser.enabled else torch.zeros(len(generations)))
        verifier = torch.as_tensor(verifier, dtype=torch.float32)
        # advantages and LaSeR class weights over the whole generation batch (all processes)
        all_rewards = self.processes.gather(rewards)
        advantages = group_advantages(all_rewards, rl.group_size, scale=rl.scale, baseline=rl.baseline)
        local = slice(self.processes.rank * len(generations), (self.processes.rank + 1) * len(generations))
        advantages = advantages[local].float()
        valid_all = self.processes.gather(finished.float()).bool()  # gloo has no bool all_gather
        weights = laser_class_weights(self.processes.gather(verifier), valid_all)[local] \
            if rl.laser.enabled else torch.zeros(len(generations))
        trained = [not (rl.mask_truncated and g.finish_reason == "length") for g in generations]
        local_tokens = sum(len(g) for g, keep in zip(generations, trained, strict=True) if keep)
        totals = self.processes.sum_values({"rows": len(generations), "tokens": local_tokens})
        self._write_samples(step, share, generations, scored, advantages)

        loss_on, integrate = self._laser_phase(step)
        micro_batches = []
        for part in self._micro_batch_rows(generations, integrate):
            index = torch.tensor(part)
            micro_batches.append(self._micro_batch(
                model, [generations[i] for i in part], [trained[i] for i in part], advantages[index],
                verifier[index], finished[index], weights[index], integrate, loss_on))
        stats = {
            "reward_sum": float(rewards.sum()), "reward_squares": float((rewards**2).sum()),
            "rollouts": float(len(generations)), "completion_tokens": float(sum(len(g) for g in generations)),
            "truncated": float((~finished).sum()), "reward_errors": float(sum(scored.errors.values())),
            "rollout_seconds": rollout_seconds,
        }
        for label, values in scored.components.items():
            stats[f"component/{label}"] = float(torch.as_tensor(values, dtype=torch.float64).sum())
        for key, value in scored.extra.items():  # stateful rewards' metrics, averaged over processes
            stats[f"extra/{key}"] = value
        return StepBatches(micro_batches, StepTotals(rows=totals["rows"], tokens=totals["tokens"]), stats=stats)

    def _micro_batch_rows(self, generations: list[Generation], integrate: bool) -> list[list[int]]:
        """Rows of each forward pass: ``train.batch_size`` rows, each chunk split longest first into passes of
        at most ``rl.micro_batch_tokens`` padded tokens (when set). When LaSeR integrates self-rewards into the
        advantages, passes are whole groups instead (every group's scores must come from one forward)."""
        size, group = self.config.train.batch_size, self.rl.group_size
        extra = 0 if self.reserved_id is None else 1
        lengths = [len(g.prompt_ids) + len(g) + extra for g in generations]
        if integrate:
            return micro_batches(range(len(generations)), lengths, max(1, size // group) * group)
        return micro_batches(range(len(generations)), lengths, size, self.rl.micro_batch_tokens)

    def _micro_batch(self, model, generations: list[Generation], trained: list[bool], advantages, verifier,
                     finished, weights, integrate: bool, loss_on: bool) -> RolloutBatch:
        tail = [] if self.reserved_id is None else [self.reserved_id]
        rows = rollout_rows(generations, self.pad_id, tail, trained)
        device = self.processes.device
        batch = RolloutBatch(
            input_ids=rows.input_ids.to(device), position_ids=rows.position_ids.to(device),
            target_mask=rows.target_mask.to(device), completion_mask=rows.completion_mask.to(device),
            old_logprobs=rows.sampled_logprobs.to(device), ref_logprobs=None,
            advantages=advantages.to(device), verifier=verifier.to(device), valid=finished.to(device),
            class_weights=weights.to(device), reserved_index=rows.tail_index.to(device) if tail else None,
            integrate=integrate, laser_loss_on=loss_on,
            sequence_tokens=rows.sequence_tokens)
        rl = self.rl
        if rl.top_p < 1 or rl.top_k > 0:  # sampling log-probs are of the truncated distribution
            batch.old_logprobs = self._logprobs(model, batch)
        if rl.beta > 0:
            if self.reference is None:
                with disabled_adapter(model):
                    batch.ref_logprobs = self._logprobs(model, batch)
            else:
                batch.ref_logprobs = self._logprobs(self.reference, batch)
        return batch

    def _logprobs(self, model, batch: RolloutBatch) -> torch.Tensor:
        with torch.no_grad(), self.processes.autocast(model):
            return self._forward(model, batch, with_entropy=False).logprobs.detach()

    def _forward(self, model, batch: RolloutBatch, with_entropy: bool):
        # full-length rows, right-padded: causal attention never looks at the padding after a row
        loss_mask = torch.nn.functional.pad(batch.target_mask, (1, 0))  # loss_mask[:, t+1] marks target t
        return completion_logprobs(model, batch.input_ids, loss_mask, position_ids=batch.position_ids,
                                   temperature=self.rl.temperature, with_entropy=with_entropy,
                                   chunk_size=self.config.train.chunk_size)

    # -- loss -------------------------------------------------------------------------------------
    def loss(self, model, batch: RolloutBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        rl, laser = self.rl, self.rl.laser
        out = self._forward(model, batch, with_entropy=True)
        rows = torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device)
        advantages = batch.advantages
        scores = None
        if batch.reserved_index is not None:
            reserved_logprob = out.logprobs[rows, batch.reserved_index]
            scores = laser_score(rl.temperature * reserved_logprob, laser.c_ref, laser.beta_v)
            if batch.scores is None:
                batch.scores = scores.detach()
            if batch.integrate:
                advantages = self_reward_advantages(batch.scores, batch.valid, advantages, rl.group_size,
                                                    laser.tau, laser.filter_threshold)
        mask = batch.completion_mask
        result = policy_loss_sum(out.logprobs, batch.old_logprobs, advantages, mask, kind=rl.loss,
                                 eps_low=rl.eps_low, eps_high=rl.eps_high, ref_logprobs=batch.ref_logprobs,
                                 beta=rl.beta, max_completion_length=rl.max_new_tokens)
        tokens = float(mask.sum())
        loss = result.loss / totals.of(POLICY_LOSS_TOTALS[rl.loss])
        stats = {
            "policy_loss": float(loss.detach()), "trained_tokens": tokens,
            "clip_low_sum": float(result.clip_low) * tokens, "clip_high_sum": float(result.clip_high) * tokens,
            "clip_region_sum": float(result.clip_region) * tokens,
            "entropy_sum": float((out.entropy.detach() * mask).sum()),
            "tokens": batch.sequence_tokens,
        }
        if result.kl is not None:
            stats["kl_sum"] = float(result.kl) * tokens
        if scores is not None:
            stats.update(self._laser_stats(batch, scores, reserved_logprob))
            if batch.laser_loss_on and laser.alpha > 0:
                sr_loss = laser_loss_sum(scores, batch.verifier, batch.valid,
                                         class_weights=batch.class_weights) / totals.of("rows")
                loss = loss + laser.alpha * sr_loss
                stats["self_reward_loss"] = float(sr_loss.detach())
        stats["loss"] = float(loss.detach())
        return loss, stats

    def _laser_stats(self, batch: RolloutBatch, scores: torch.Tensor, reserved_logprob: torch.Tensor) -> dict:
        """Counts for self-verification accuracy on correct / incorrect finished completions (r_s > 0.5)."""
        valid = batch.valid
        correct = valid & (batch.verifier == 1)
        incorrect = valid & (batch.verifier == 0)
        predicted = scores.detach() > 0.5
        return {
            "sv_correct": float(correct.sum()), "sv_incorrect": float(incorrect.sum()),
            "sv_true_pos": float((predicted & correct).sum()), "sv_true_neg": float((~predicted & incorrect).sum()),
            "score_sum": float((scores.detach() * valid).sum()), "scored": float(valid.sum()),
            "p_reserved_sum": float((reserved_logprob.detach().exp() * valid).sum()),
        }

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        passes = self.updates_per_step
        rollouts = max(sums["rollouts"], 1.0)
        tokens = max(sums.get("trained_tokens", 0.0), 1.0)
        mean = sums["reward_sum"] / rollouts
        metrics = {
            "loss": sums["loss"] / passes, "policy_loss": sums["policy_loss"] / passes,
            "reward": mean, "reward_std": max(sums["reward_squares"] / rollouts - mean**2, 0.0) ** 0.5,
            "completion_length": sums["completion_tokens"] / rollouts,
            "truncated_fraction": sums["truncated"] / rollouts, "reward_errors": sums["reward_errors"],
            "entropy": sums["entropy_sum"] / tokens, "clip_fraction": sums["clip_region_sum"] / tokens,
            "clip_low": sums["clip_low_sum"] / tokens, "clip_high": sums["clip_high_sum"] / tokens,
            "tokens": sums["tokens"] / passes, "rollout_seconds": sums["rollout_seconds"] / self.processes.world_size,
        }
        for key, value in sums.items():
            if key.startswith("component/"):  # summed values of each reward function
                metrics["reward_" + key.removeprefix("component/")] = value / rollouts
            elif key.startswith("extra/"):
                metrics[key.removeprefix("extra/")] = value / self.processes.world_size
        if "math" in self.rewards.labels:
            metrics["accuracy"] = metrics["reward_math"]
        if "kl_sum" in sums:
            metrics["kl"] = sums["kl_sum"] / tokens
        if "sv_correct" in sums:
            metrics.update(_self_verification(sums))
            if "self_reward_loss" in sums:
                metrics["self_reward_loss"] = sums["self_reward_loss"] / passes
        return metrics

    def save_state(self, directory) -> None:
        """Stateful rewards (the online MetaRM, which each process trains on its own rollouts) into the
        checkpoint being written, one directory per process."""
        self.rewards.save_state(Path(directory) / f"rank{self.processes.rank}")

    def load_state(self, directory) -> None:
        self.rewards.load_state(Path(directory) / f"rank{self.processes.rank}")

    def _write_samples(self, step: int, share: list[int], generations: list[Generation], scored,
                       advantages: torch.Tensor) -> None:
        columns = [{"reward": float(scored.total[i]), "advantage": float(advantages[i]),
                    **{f"reward_{k}": float(v[i]) for k, v in scored.components.items()}}
                   for i in range(len(generations))]
        append_samples(self.samples_path, step, share, generations, columns)


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
