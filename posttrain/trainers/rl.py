"""RL with verifiable rewards: the GRPO family, optionally with LaSeR last-token self-rewarding
(:mod:`posttrain.trainers.laser`).

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

``rl.kl_in=reward`` puts β·KL in the rewards per token (``RolloutBatch.advantages`` is then ``[B, T-1]``:
:func:`posttrain.ops.kl_penalized_advantages`), ``rl.scale=whiten`` whitens over the step's response tokens and
``rl.dynamic_sampling`` is :mod:`posttrain.trainers.dynamic_sampling`.

With ``rl.laser.enabled`` a :class:`posttrain.trainers.laser.LaserPlugin` appends the reserved token ``z_c``
to each row, adds its self-reward loss and, after its warm-ups, mixes the self-rewards into the advantages
(micro-batches then hold whole groups); its module docstring has the math.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.data import encode_prompts, prompt_text
from posttrain.errors import DataError
from posttrain.judges.tasks import judge_task_prompts
from posttrain.models import disabled_adapter, is_peft_model
from posttrain.ops import (
    POLICY_LOSS_TOTALS,
    behaviour_correction,
    completion_logprobs,
    group_advantages,
    kl_estimate,
    kl_penalized_advantages,
    policy_loss_sum,
    token_moments,
    whiten_advantages,
)
from posttrain.rewards import build_rewards, check_rewards_for_records
from posttrain.rollout import Generation, SamplingParams, pad_token_id
from posttrain.trainers.distributed import Processes
from posttrain.trainers.dynamic_sampling import SampledGroups, fill_groups, refill_prompts
from posttrain.trainers.inputs import training_records
from posttrain.trainers.laser import LaserBatch, LaserPlugin, LaserStep
from posttrain.trainers.loop import Method, StepBatches, StepTotals
from posttrain.trainers.precision import autocast
from posttrain.trainers.rollouts import (
    append_samples,
    prompts_per_process,
    rollout_engine,
    rollout_rows,
    rollout_seed,
    samples_path,
)
from posttrain.trainers.run_log import truncate_metrics


@dataclass
class RolloutBatch:
    """One micro-batch of rollouts, as right-padded rows ``prompt, completion[, tail]``.

    Per-token tensors are ``[B, T-1]``, aligned with the targets ``input_ids[:, 1:]``; ``completion_mask``
    marks the completion tokens trained on; ``laser`` holds LaSeR's tensors when it is on.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    target_mask: torch.Tensor  # completion tokens (even masked truncated ones) + tail: what the head projects
    completion_mask: torch.Tensor
    old_logprobs: torch.Tensor | None  # None: the learner's own, detached from the loss's forward (one update a step)
    ref_logprobs: torch.Tensor | None
    advantages: torch.Tensor  # [B] one per row (GRPO), or [B, T-1] per token (rl.kl_in=reward; PPO: GAE)
    sequence_tokens: float  # prompt + completion (+ tail) tokens of all rows; a sampled pad token counts
    laser: LaserBatch | None = None
    engine_logprobs: torch.Tensor | None = None  # the engine's sampling log-probs, when behaviour-corrected


class RLMethod(Method, name="grpo"):
    """GRPO-family RL (and LaSeR) for :class:`posttrain.trainers.loop.Trainer`."""

    writes_advantages = True  # samples.jsonl has each rollout's advantage

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
        self.config, self.rl, self.rollout, self.tokenizer, self.processes = config, rl, config.rollout, tokenizer, processes
        self.records = records
        self.prompts = encode_prompts(records, tokenizer)
        self.prompt_texts = [prompt_text(record) for record in records]
        self.num_examples = len(records)
        self.examples_per_step = prompts_per_process(config.rollout.prompts_per_step, processes)
        self.updates_per_step = rl.updates_per_step
        self.rewards = build_rewards(rl.rewards)
        check_rewards_for_records(self.rewards, records, config.data.train.path or f"task:{config.data.train.task}")
        self.rewards.prepare(tokenizer, policy=model)  # the likelihood reward scores with the policy
        if rl.judge is not None:  # both A/B orders of a judge task in the same step
            self.sample_block = 2
        self.engine, self.engine_weights = rollout_engine(config, model, tokenizer, processes)
        self.pad_id = pad_token_id(model, tokenizer)
        self.correction = rl.behaviour_correction
        if self.correction == "auto":
            self.correction = "token_truncate" if self.engine_weights.separate else "off"
        self.engine_max_ratio = 0.0
        self.laser = LaserPlugin.from_config(config, self.rewards.labels, tokenizer)
        self.tail = [] if self.laser is None else self.laser.tail_tokens()
        self.reference = None
        if self._uses_reference() and not is_peft_model(model):
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self._samples_checked = False
        self.samples_path = samples_path(config.run_dir, processes)

    def _uses_reference(self) -> bool:
        """Whether the reference model's log-probs are needed (the KL term)."""
        return self.rl.beta > 0

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """One advantage per rollout from the rewards of the whole generation batch: the group advantages
        (``rl.scale=whiten`` whitens later, over the tokens)."""
        scale = "none" if self.rl.scale == "whiten" else self.rl.scale
        return group_advantages(rewards, self.rollout.samples_per_prompt, scale=scale, baseline=self.rl.baseline)

    # -- rollouts ---------------------------------------------------------------------------------
    def _sampling(self, step: int, round_: int = 0) -> SamplingParams:
        ro = self.rollout
        return SamplingParams(temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
                              max_new_tokens=ro.max_new_tokens, n=ro.samples_per_prompt,
                              seed=rollout_seed(self.config.seed, step, self.processes) + (round_ << 32))

    def _sample_round(self, model, prompts: list[int], step: int, round_: int = 0):
        """The generations (``prompt_index`` into ``prompts``) of one round of sampling, and their rewards."""
        with self.engine_weights.awake(model, step):
            generations = self.engine.generate([self.prompts[i] for i in prompts], self._sampling(step, round_))
        records = [self.records[prompts[g.prompt_index]] for g in generations]
        scored = self.rewards.score([self.prompt_texts[prompts[g.prompt_index]] for g in generations],
                                    [g.text for g in generations],
                                    [{**r, "finish_reason": g.finish_reason, "completion_tokens": len(g)}
                                     for r, g in zip(records, generations, strict=True)])
        return generations, scored

    def _sample_groups(self, model, indices: list[int], share: list[int], step: int) -> SampledGroups:
        """This step's groups: ``share``'s, or with ``rl.dynamic_sampling`` the informative groups of as many rounds
        as it takes (:mod:`posttrain.trainers.dynamic_sampling`)."""
        rl = self.rl
        if not rl.dynamic_sampling:
            generations, scored = self._sample_round(model, share, step)
            return SampledGroups(generations, share, scored, rounds=0, dropped=0)

        def draw(slot: int, quota: int, count: int) -> list[int]:
            return refill_prompts(self.num_examples, self.sample_block, self.config.seed, step, indices, slot, quota,
                                  count)

        return fill_groups(lambda prompts, round_: self._sample_round(model, prompts, step, round_), share, indices,
                           self.processes, self.rollout.samples_per_prompt, self.sample_block,
                           rl.max_sampling_rounds, draw)

    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        rl = self.rl
        if not self._samples_checked:  # a resumed run drops the samples a killed run wrote past its checkpoint
            truncate_metrics(self.samples_path, step)
            self._samples_checked = True
        started = time.perf_counter()
        sampled = self._sample_groups(model, indices, share, step)
        generations, share, scored = sampled.generations, sampled.prompts, sampled.scored
        rollout_seconds = time.perf_counter() - started
        self.engine_max_ratio = 0.0
        rewards = scored.total.double()
        finished = torch.tensor([g.finish_reason == "eos" for g in generations])
        # advantages (and LaSeR's class weights) over the whole generation batch (all processes)
        all_rewards, start = self.processes.gather_rows(rewards)
        advantages = self._advantages(all_rewards)
        local = slice(start, start + len(generations))
        advantages = advantages[local].float()
        laser = None if self.laser is None else \
            self.laser.step_extras(scored.components, finished, self.processes, local, step)
        trained = [not (rl.mask_truncated and g.finish_reason == "length") for g in generations]
        local_tokens = sum(len(g) for g, keep in zip(generations, trained, strict=True) if keep)
        totals = self.processes.sum_values({"rows": len(generations), "tokens": local_tokens})

        micro_batches = []
        parts = self._micro_batch_rows(generations, laser is not None and laser.integrate)
        for part in parts:
            index = torch.tensor(part)
            micro_batches.append(self._micro_batch(
                model, [generations[i] for i in part], [trained[i] for i in part], advantages[index], laser, index))
        stats = {
            "reward_sum": float(rewards.sum()), "reward_squares": float((rewards**2).sum()),
            "rollouts": float(len(generations)), "completion_tokens": float(sum(len(g) for g in generations)),
            "truncated": float((~finished).sum()), "reward_errors": float(sum(scored.errors.values())),
            "rollout_seconds": rollout_seconds, "sync_seconds": self.engine_weights.last_sync_seconds,
        }
        if rl.dynamic_sampling:
            stats.update(sampling_rounds=float(sampled.rounds), dropped_groups=float(sampled.dropped))
        if rl.kl_in == "reward" or rl.scale == "whiten":
            stats.update(self._token_advantages(model, micro_batches))
            advantages = self._first_token_advantages(micro_batches, parts, len(generations))
        self._write_samples(step, share, generations, scored, advantages)
        for label, values in scored.components.items():
            stats[f"component/{label}"] = float(torch.as_tensor(values, dtype=torch.float64).sum())
        for key, value in scored.extra.items():  # stateful rewards' metrics, averaged over processes
            stats[f"extra/{key}"] = value
        return StepBatches(micro_batches, StepTotals(rows=totals["rows"], tokens=totals["tokens"]), stats=stats)

    def _token_advantages(self, model, micro_batches: list[RolloutBatch]) -> dict[str, float]:
        """``rl.kl_in=reward``: each micro-batch's row advantages become token advantages with the KL returns
        (:func:`posttrain.ops.kl_penalized_advantages`, the KL from :meth:`_reward_kl`); ``rl.scale=whiten``: the
        advantages whitened over every response token of the step (:meth:`_whiten`)."""
        rl, stats = self.rl, {}
        if rl.kl_in == "reward" and rl.beta > 0:
            kl_sum = 0.0
            for batch in micro_batches:
                kl = self._reward_kl(model, batch)
                batch.advantages = kl_penalized_advantages(batch.advantages, kl, batch.completion_mask, rl.beta)
                kl_sum += float(torch.where(batch.completion_mask.bool(), kl, 0.0).sum())
            stats["reward_kl_sum"] = kl_sum
        if rl.scale == "whiten":
            self._whiten(micro_batches)
        return stats

    def _reward_kl(self, model, batch: RolloutBatch) -> torch.Tensor:
        """``rl.kl_in=reward``: the per-token ``rl.kl_estimator`` estimate of the KL to the reference, of the
        sampling-time log-probs (or of the learner's before the update where those are another distribution's).
        The batch's reference log-probs are dropped: the KL is in the rewards, the loss has no KL term."""
        old = batch.old_logprobs if batch.old_logprobs is not None else self._logprobs(model, batch)
        kl = kl_estimate(old, batch.ref_logprobs, self.rl.kl_estimator)
        batch.ref_logprobs = None
        return kl

    def _whiten(self, micro_batches: list[RolloutBatch]) -> None:
        """The advantages whitened over every response token of the step, all processes
        (:func:`posttrain.ops.whiten_advantages`)."""
        local = sum(token_moments(b.advantages, b.completion_mask).cpu() for b in micro_batches)
        moments = self.processes.sum_values(dict(zip(("count", "total", "squares"), local.tolist(), strict=True)))
        moments = torch.tensor([moments["count"], moments["total"], moments["squares"]], dtype=torch.float64)
        for batch in micro_batches:
            batch.advantages = whiten_advantages(batch.advantages, moments)

    @staticmethod
    def _first_token_advantages(micro_batches: list[RolloutBatch], parts: list[list[int]], rows: int) -> torch.Tensor:
        """Each row's advantage at its first completion token (for token advantages: the whole sequence's return)."""
        values = torch.zeros(rows)
        for batch, part in zip(micro_batches, parts, strict=True):
            advantages = batch.advantages.detach().float().cpu()
            if advantages.dim() == 2:
                first = batch.target_mask.float().argmax(-1).cpu()
                advantages = advantages[torch.arange(len(part)), first]
            values[torch.tensor(part)] = advantages
        return values

    def _micro_batch_rows(self, generations: list[Generation], integrate: bool) -> list[list[int]]:
        """Rows of each forward pass: ``train.batch_size`` rows, each chunk split longest first into passes of
        at most ``train.micro_batch_tokens`` padded tokens (when set). When LaSeR integrates self-rewards into the
        advantages, passes are whole groups instead (every group's scores must come from one forward)."""
        size, group = self.config.train.batch_size, self.rollout.samples_per_prompt
        lengths = [len(g.prompt_ids) + len(g) + len(self.tail) for g in generations]
        if integrate:
            return self.processes.micro_batches(range(len(generations)), lengths, max(1, size // group) * group)
        return self.processes.micro_batches(range(len(generations)), lengths, size,
                                            self.config.train.micro_batch_tokens)

    def _micro_batch(self, model, generations: list[Generation], trained: list[bool], advantages,
                     laser: LaserStep | None, index: torch.Tensor) -> RolloutBatch:
        rows = rollout_rows(generations, self.pad_id, self.tail, trained)
        device = self.processes.device
        batch = RolloutBatch(
            input_ids=rows.input_ids.to(device), position_ids=rows.position_ids.to(device),
            target_mask=rows.target_mask.to(device), completion_mask=rows.completion_mask.to(device),
            old_logprobs=rows.sampled_logprobs.to(device), ref_logprobs=None,
            advantages=advantages.to(device), sequence_tokens=rows.sequence_tokens)
        if laser is not None:
            batch.laser = self.laser.batch_fields(laser, index, rows.tail_index, device)
        ro = self.rollout
        if self.correction != "off":
            batch.engine_logprobs = batch.old_logprobs
        # the ratio's denominator is the learner's own log-prob when the sampling log-probs are of another
        # distribution: a truncated one (top-p/top-k) or another engine's (behaviour-corrected); with one update
        # a step it is the loss forward's own, detached, so no extra forward is needed
        if ro.top_p < 1 or ro.top_k > 0 or self.correction != "off":
            batch.old_logprobs = self._logprobs(model, batch) if self.updates_per_step > 1 else None
        if self._uses_reference():
            if self.reference is None:
                with disabled_adapter(model):
                    batch.ref_logprobs = self._logprobs(model, batch)
            else:
                batch.ref_logprobs = self._logprobs(self.reference, batch)
        return batch

    def _logprobs(self, model, batch: RolloutBatch) -> torch.Tensor:
        with torch.no_grad(), autocast(model, self.config.train.precision):
            return self._forward(model, batch, with_entropy=False).logprobs.detach()

    def _forward(self, model, batch: RolloutBatch, with_entropy: bool, with_hidden: bool = False):
        # full-length rows, right-padded: causal attention never looks at the padding after a row
        loss_mask = torch.nn.functional.pad(batch.target_mask, (1, 0))  # loss_mask[:, t+1] marks target t
        return completion_logprobs(model, batch.input_ids, loss_mask, position_ids=batch.position_ids,
                                   temperature=self.rollout.temperature, with_entropy=with_entropy,
                                   chunk_size=self.config.train.chunk_size, with_hidden=with_hidden)

    # -- loss -------------------------------------------------------------------------------------
    def loss(self, model, batch: RolloutBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy_objective(self._forward(model, batch, with_entropy=True), batch, totals)

    def policy_objective(self, out, batch: RolloutBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's policy loss (and LaSeR's term) from the loss forward ``out``, and its statistics."""
        rl = self.rl
        advantages = batch.advantages
        if batch.laser is not None:
            scores, reserved_logprob = self.laser.scores(out.logprobs, batch.laser)
            advantages = self.laser.advantages(batch.laser, advantages)
        mask = batch.completion_mask
        old = out.logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs
        correction = None
        if batch.engine_logprobs is not None:
            correction = behaviour_correction(old, batch.engine_logprobs, mask, self.correction, rl.behaviour_cap,
                                              rl.behaviour_floor)
        result = policy_loss_sum(out.logprobs, old, advantages, mask, kind=rl.loss,
                                 eps_low=rl.eps_low, eps_high=rl.eps_high, ref_logprobs=batch.ref_logprobs,
                                 beta=rl.beta if rl.kl_in == "loss" else 0.0, kl_estimator=rl.kl_estimator,
                                 entropy=out.entropy,
                                 max_completion_length=self.rollout.max_new_tokens,
                                 behaviour_weights=None if correction is None else correction.weights)
        tokens = float(mask.sum())
        loss = result.loss / totals.of(POLICY_LOSS_TOTALS[rl.loss])
        if rl.entropy_coef:  # the bonus c·H̄: H̄ the token mean of the entropy over the step (ops.policy_loss)
            loss = loss - rl.entropy_coef * result.entropy_sum / totals.of("tokens")
        stats = {
            "policy_loss": float(loss.detach()), "trained_tokens": tokens,
            "clip_low_sum": float(result.clip_low) * tokens, "clip_high_sum": float(result.clip_high) * tokens,
            "clip_region_sum": float(result.clip_region) * tokens,
            "entropy_sum": float((out.entropy.detach() * mask).sum()),
            "tokens": batch.sequence_tokens,
        }
        if result.kl is not None:
            stats["kl_sum"] = float(result.kl) * tokens
        if correction is not None:
            stats["engine_gap_sum"] = float(correction.mean_abs_gap) * tokens
            stats["engine_corrected_sum"] = float(correction.corrected) * tokens
            self.engine_max_ratio = max(self.engine_max_ratio, float(correction.max_ratio))
        if batch.laser is not None:
            term, laser_stats = self.laser.loss_term(batch.laser, scores, reserved_logprob, totals.of("rows"))
            stats.update(laser_stats)
            if term is not None:
                loss = loss + term
        stats["loss"] = float(loss.detach())
        return loss, stats

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
        if "reward_kl_sum" in sums:  # the KL in the rewards: once per step, the trained tokens once per update
            metrics["kl"] = sums["reward_kl_sum"] * passes / tokens
        if self.rl.dynamic_sampling:  # the same round count on every process; dropped groups summed over them
            metrics.update(sampling_rounds=sums["sampling_rounds"] / self.processes.world_size,
                           dropped_groups=sums["dropped_groups"])
        if "engine_gap_sum" in sums:  # the engine/learner mismatch (max: this process's rollouts)
            metrics.update(engine_logprob_gap=sums["engine_gap_sum"] / tokens,
                           engine_corrected=sums["engine_corrected_sum"] / tokens,
                           engine_max_ratio=self.engine_max_ratio)
        if self.engine_weights.separate:
            metrics["sync_seconds"] = sums["sync_seconds"] / self.processes.world_size
        if self.laser is not None:
            metrics.update(self.laser.summarize(sums, passes))
        return metrics

    def save_state(self, directory) -> None:
        """Stateful rewards (the online MetaRM, which each process trains on its own rollouts) into the
        checkpoint being written, one directory per process."""
        self.rewards.save_state(Path(directory) / f"rank{self.processes.rank}")

    def close(self) -> None:
        self.engine_weights.close()

    def frozen_models(self) -> list[torch.nn.Module]:
        return [] if self.reference is None else [self.reference]

    def load_state(self, directory) -> None:
        self.rewards.load_state(Path(directory) / f"rank{self.processes.rank}")

    def _write_samples(self, step: int, share: list[int], generations: list[Generation], scored,
                       advantages: torch.Tensor) -> None:
        columns = self._sample_columns(len(generations), scored, advantages)
        append_samples(self.samples_path, step, share, generations, columns)

    def _sample_columns(self, count: int, scored, advantages: torch.Tensor) -> list[dict]:
        """What ``samples.jsonl`` records of each rollout besides its text: the reward, its components and the
        advantage (a subclass adds its own columns)."""
        return [{"reward": float(scored.total[i]),
                 **({"advantage": float(advantages[i])} if self.writes_advantages else {}),
                 **{f"reward_{k}": float(v[i]) for k, v in scored.components.items()}}
                for i in range(count)]

