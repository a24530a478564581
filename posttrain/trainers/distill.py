"""On-policy distillation, and TS-OPSD policy reheating as its special case.

One step: ``prompts_per_step`` prompts → completions sampled from the **current student** (the rollout
engine, ``rollout.temperature``, default 1) → per completion token, a divergence between the student
``p_θ(·|x, y_<t)`` and a teacher distribution ``q_t`` on those same tokens
(:func:`posttrain.ops.hidden_divergence`), averaged over all completion tokens of the global batch.

Teachers (``distill.teacher``), always detached and divided by ``T = distill.teacher_temperature``:

* ``self`` — the student's own logits **from the same forward pass**: ``q_t = sg softmax(z_θ/T)``. One forward
  per step; the target moves with the student (TS-OPSD's literal "self-teacher"; methods.md §1.2);
* ``snapshot`` — the starting weights, frozen: ``q_t = softmax(z_θ0/T)`` (TS-OPSD's frozen-teacher reading; with
  LoRA the adapter-disabled model, no copy). At T = 1 the loss starts at exactly 0 (the negative control);
* ``model`` — another causal LM with the student's tokenizer (GKD, on-policy distillation);
* ``self_context`` — the model (live, or its starting weights) shown the record's privileged context (a worked
  solution or feedback) while the student sees only the prompt (OPSD, Zhao et al. 2026);
* ``self_feedback`` — SDPO (Hübotter et al. 2026, arXiv 2601.20802): the model (live, or its starting weights)
  shown **this rollout's** question, attempt and feedback (a correct sibling as a demonstration, the verdict of
  ``distill.rewards``, a record's error text), built per rollout by :mod:`posttrain.trainers.feedback`; a
  rollout with no feedback is skipped (``feedback.no_feedback``) — its tokens still count in ``N``;
* ``self_revision`` — SD-Zero (He et al. 2026, arXiv 2604.12002): per rollout the model, as Reviser, is shown
  the question, its first answer and that answer's verdict and samples **one revision** ``r`` (the rollout
  engine, the rollouts' sampling settings); the distilled tokens are the revision's: the student
  ``p_θ(·|x, r_<t)`` is pulled toward the Reviser ``p(·|x, y, verdict, r_<t)`` — the distribution ``r`` was
  sampled from — so the generator learns to answer as the Reviser would after seeing its mistake. ``N`` is the
  revisions' token count. (The abstract does not say which tokens are distilled; this is posttrain's reading.)

Teachers shown a context and the student share one model; ``distill.context_weights=initial`` uses the starting
weights instead (EMA teachers, SDPO's code default, are not implemented). ``distill.entropy_weighting`` scales
each token's divergence by :func:`posttrain.ops.entropy_weights` of the teacher's entropy (SRPO's weighting).

``objective: reward`` replaces the divergence by G-OPD's policy gradient (Yang et al. 2026, arXiv
2602.12125): ``L = −Σ_t r_t·log p_θ(y_t) / N`` with the detached token reward
``r_t = λ(log q(y_t) − log π_ref(y_t)) − (log p_θ(y_t) − log π_ref(y_t))``, π_ref the starting weights.

``distill.target_entropy`` stops the run once the mean token entropy at T = 1 of the student's completions of
held-out prompts reaches the target (checked every ``entropy_every`` steps, logged as ``heldout_entropy``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from posttrain.config import RunConfig
from posttrain.data import encode_prompts, prompt_text
from posttrain.errors import ConfigError, DataError
from posttrain.ops import completion_logprobs, extrapolated_token_rewards
from posttrain.rewards import build_rewards, check_rewards_for_records
from posttrain.rollout import Generation, RolloutEngine, SamplingParams, pad_token_id
from posttrain.trainers.distributed import Processes
from posttrain.trainers.feedback import feedback_metrics, is_correct, reviser_record, with_user_message
from posttrain.trainers.inputs import eval_source, load_source, training_records
from posttrain.trainers.loop import Method, StepBatches, StepTotals
from posttrain.trainers.precision import autocast
from posttrain.trainers.rollouts import (
    RolloutRows,
    append_samples,
    prompts_per_process,
    rollout_engine,
    rollout_rows,
    rollout_seed,
    samples_path,
)
from posttrain.trainers.run_log import truncate_metrics
from posttrain.trainers.teacher import DistillTeacher, row_token_flags

HELD_OUT_SEED = 12345
REVISION_SEED_OFFSET = 1 << 32  # the revisions' sampling seed: distinct from the rollouts' of the same step


@dataclass
class DistillBatch:
    student: RolloutRows
    teacher_rows: RolloutRows | None  # a teacher shown a context: the same completions after its prompts
    generations: list[Generation]  # the completions trained on (self_revision: the revisions)
    distilled: list[bool] | None = None  # self_feedback: the rows distilled (None: all)


def context_prompt(record: dict, field: str, template: str) -> dict:
    """The record with its prompt replaced by ``template`` filled with the prompt text and ``record[field]``."""
    if record.get(field) in (None, ""):
        raise DataError(f"{record.get('_where', '?')}: the record has no {field!r} field for the self_context teacher",
                        where=f"{record.get('_where', '?')}:{field}",
                        fix=f"give every record a {field!r} (the privileged context) or set distill.context_field")
    return with_user_message(record, template.format(prompt=prompt_text(record), context=record[field]))


@dataclass
class StepRows:
    """What a step trains on: the completions, each one's student prompt and teacher prompt (None: the teacher
    reads the student's rows), and the rows distilled (None: all)."""

    generations: list[Generation]
    student_prompts: list[list[int]]
    teacher_prompts: list[list[int]] | None
    distilled: list[bool] | None = None


class DistillMethod(Method, name="distill"):
    """On-policy distillation for :class:`posttrain.trainers.loop.Trainer`."""

    @classmethod
    def from_config(cls, config: RunConfig, model, tokenizer, processes: Processes) -> tuple[DistillMethod, dict]:
        records, summary = training_records(config.data, "prompt")
        if not records.records:
            raise DataError(f"no prompts in {records.source}", fix="check the data path")
        return cls(config, records.records, model, tokenizer, processes), summary

    def __init__(self, config: RunConfig, records: list[dict], model, tokenizer, processes: Processes):
        cfg = config.distill
        self.config, self.cfg, self.tokenizer, self.processes = config, cfg, tokenizer, processes
        self.teacher = DistillTeacher(config, model, tokenizer, processes)
        self.records = records
        self.prompts = encode_prompts(records, tokenizer)
        self.num_examples = len(records)
        self.examples_per_step = prompts_per_process(config.rollout.prompts_per_step, processes)
        source = config.data.train.path or f"task:{config.data.train.task}"
        self.rewards = None
        if cfg.rewards is not None:
            self.rewards = build_rewards(cfg.rewards)
            check_rewards_for_records(self.rewards, records, source)
        if cfg.teacher == "self_feedback":
            self.teacher.check_feedback_records(records, source)
        self.engine, self.engine_weights = rollout_engine(config, model, tokenizer, processes)
        self.pad_id = pad_token_id(model, tokenizer)
        self.context_prompts = None
        if cfg.teacher == "self_context":
            self.context_prompts = encode_prompts(
                [context_prompt(r, cfg.context_field, cfg.context_template) for r in records], tokenizer)
        self.held_out = self._held_out_prompts(tokenizer) if cfg.target_entropy is not None else None
        self.samples_path = samples_path(config.run_dir, processes)
        self._samples_checked = False

    def _held_out_prompts(self, tokenizer) -> list[list[int]]:
        source, held_out = eval_source(self.config.data)
        if source is None:
            raise ConfigError("distill.target_entropy needs held-out prompts", where="data.eval",
                              fix="set data.eval (or train on a task, whose held-out split is used)")
        records = load_source(source, kind="prompt", skip_invalid=self.config.data.skip_invalid,
                              held_out=held_out).records
        return encode_prompts(records[: self.cfg.entropy_prompts], tokenizer)

    # -- rollouts ---------------------------------------------------------------------------------
    def _sampling(self, step: int, n: int, offset: int = 0) -> SamplingParams:
        ro = self.config.rollout
        return SamplingParams(temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
                              max_new_tokens=ro.max_new_tokens, n=n,
                              seed=rollout_seed(self.config.seed, step, self.processes) + offset)

    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        if not self._samples_checked:  # a resumed run drops the samples a killed run wrote past its checkpoint
            truncate_metrics(self.samples_path, step)
            self._samples_checked = True
        started = time.perf_counter()
        with self.engine_weights.awake(model, step):
            generations = self.engine.generate([self.prompts[i] for i in share],
                                               self._sampling(step, self.config.rollout.samples_per_prompt))
        rollout_seconds = time.perf_counter() - started
        stats = {"rollouts": float(len(generations)), "completion_tokens": float(sum(len(g) for g in generations)),
                 "truncated": float(sum(g.finish_reason == "length" for g in generations)),
                 "rollout_seconds": rollout_seconds, "sync_seconds": self.engine_weights.last_sync_seconds}
        records = [self.records[share[g.prompt_index]] for g in generations]
        columns, rewards = [{} for _ in generations], None
        if self.rewards is not None:
            scored = self.rewards.score([prompt_text(r) for r in records], [g.text for g in generations],
                                        [{**r, "finish_reason": g.finish_reason, "completion_tokens": len(g)}
                                         for r, g in zip(records, generations, strict=True)])
            rewards = scored.total.tolist()
            stats["reward_sum"] = float(scored.total.sum())
            for label, values in scored.components.items():
                stats[f"component/{label}"] = float(torch.as_tensor(values, dtype=torch.float64).sum())
            columns = [{"reward": float(scored.total[i]),
                        **{f"reward_{k}": float(v[i]) for k, v in scored.components.items()}}
                       for i in range(len(generations))]
        step_rows = self._step_rows(model, step, share, records, generations, rewards, stats, columns)
        append_samples(self.samples_path, step, share, generations, columns)
        trained = step_rows.generations
        counts = self.processes.sum_values({"rows": len(trained), "tokens": float(sum(len(g) for g in trained))})
        parts = self.processes.micro_batches(list(range(len(trained))),
                                             [len(p) + len(g) for p, g in zip(step_rows.student_prompts, trained,
                                                                               strict=True)],
                                             self.config.train.batch_size, self.config.train.micro_batch_tokens)
        batches = [self._batch(step_rows, part) for part in parts]
        return StepBatches(batches, StepTotals(rows=counts["rows"], tokens=counts["tokens"]), stats=stats)

    def _step_rows(self, model, step: int, share: list[int], records: list[dict], generations: list[Generation],
                   rewards: list[float] | None, stats: dict, columns: list[dict]) -> StepRows:
        """The rows the teacher ``distill.teacher`` trains on (adds its statistics and sample columns)."""
        cfg = self.cfg
        prompts = [g.prompt_ids for g in generations]
        if cfg.teacher == "self_context":
            return StepRows(generations, prompts, [self.context_prompts[share[g.prompt_index]] for g in generations])
        if cfg.teacher == "self_feedback":
            contexts = self.teacher.feedback_contexts(records, [g.prompt_index for g in generations], generations,
                                                      rewards)
            stats.update(contexts.stats)
            for column, kinds, distilled in zip(columns, contexts.kinds, contexts.distilled, strict=True):
                column.update(feedback=list(kinds), distilled=distilled)
            return StepRows(generations, prompts, contexts.prompt_ids, contexts.distilled)
        if cfg.teacher == "self_revision":
            revisions = self._revisions(model, step, records, generations, rewards)
            stats.update(revisions=float(len(revisions)), revision_tokens=float(sum(len(r) for r in revisions)))
            for column, revision in zip(columns, revisions, strict=True):
                column["revision"] = revision.text
            return StepRows(revisions, prompts, [r.prompt_ids for r in revisions])
        return StepRows(generations, prompts, None)

    def _revisions(self, model, step: int, records: list[dict], generations: list[Generation],
                   rewards: list[float]) -> list[Generation]:
        """SD-Zero's revisions: one sample per rollout from the Reviser prompt (:func:`reviser_record`), in the
        rollouts' order."""
        feedback = self.cfg.feedback
        prompts = encode_prompts([reviser_record(r, g.text, is_correct(reward, feedback.success_threshold), feedback)
                                  for r, g, reward in zip(records, generations, rewards, strict=True)], self.tokenizer)
        with self.engine_weights.awake(model, step):
            revisions = self.engine.generate(prompts, self._sampling(step, 1, REVISION_SEED_OFFSET))
        return sorted(revisions, key=lambda r: r.prompt_index)

    def _batch(self, rows: StepRows, part: list[int]) -> DistillBatch:
        generations = [rows.generations[i] for i in part]
        student = rollout_rows(generations, self.pad_id, prompt_ids=[rows.student_prompts[i] for i in part])
        teacher_rows = None
        if rows.teacher_prompts is not None:
            teacher_rows = rollout_rows(generations, self.pad_id, prompt_ids=[rows.teacher_prompts[i] for i in part])
        distilled = None if rows.distilled is None else [rows.distilled[i] for i in part]
        return DistillBatch(student, teacher_rows, generations, distilled)

    # -- loss -------------------------------------------------------------------------------------
    def _reference_logprobs(self, model, batch: DistillBatch) -> torch.Tensor | None:
        """log π_ref(y_t) of the starting weights, for G-OPD with λ ≠ 1 (None otherwise: the terms cancel)."""
        if self.cfg.objective != "reward" or self.cfg.gopd_lambda == 1.0:
            return None
        rows, device = batch.student, self.processes.device
        with torch.no_grad(), self.teacher.starting_weights(model) as start:
            out = completion_logprobs(start, rows.input_ids.to(device),
                                      torch.nn.functional.pad(rows.target_mask, (1, 0)).to(device),
                                      position_ids=rows.position_ids.to(device))
        return out.logprobs[out.mask.bool()]

    def loss(self, model, batch: DistillBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        """``Σ_t w_t·d_t / N``: N the completion tokens of the step (rows left out by ``no_feedback: skip`` count
        in N, as SDPO's code averages over all rows), ``w_t`` 1, or 0 on a skipped row, times the entropy weight."""
        cfg = self.cfg
        hidden, labels = self.teacher.targets(model, batch.student)
        tokens = self.teacher.divergence(model, hidden, labels,
                                         batch.teacher_rows if batch.teacher_rows is not None else batch.student)
        weights = None
        if batch.distilled is not None or cfg.entropy_weighting != "none":
            rows = batch.distilled if batch.distilled is not None else [True] * len(batch.generations)
            weights = self.teacher.token_weights(tokens, row_token_flags(batch.student.target_mask, rows).to(hidden.device))
        if cfg.objective == "reward":
            rewards = extrapolated_token_rewards(tokens.student_logprob, tokens.teacher_logprob,
                                                 self._reference_logprobs(model, batch), cfg.gopd_lambda)
            if weights is not None:
                rewards = rewards * weights
            loss = -(rewards * tokens.student_logprob).sum() / totals.of("tokens")
            extra = {"token_reward_sum": float(rewards.sum())}
        else:
            divergence = tokens.divergence if weights is None else tokens.divergence * weights
            loss = divergence.sum() / totals.of("tokens")
            extra = {}
        if weights is not None:
            extra["distill_weight_sum"] = float(weights.sum())
        stats = {"loss": float(loss.detach()), "divergence_sum": float(tokens.divergence.detach().sum()),
                 "entropy_sum": float(tokens.entropy.sum()), "trained_tokens": float(labels.numel()),
                 "tokens": batch.student.sequence_tokens, **extra}
        return loss, stats

    def close(self) -> None:
        self.engine_weights.close()

    def frozen_models(self) -> list[torch.nn.Module]:
        return self.teacher.frozen_models()

    def save_state(self, directory) -> None:
        """The moving-average teacher (``context_weights: ema``) goes into every checkpoint."""
        self.teacher.save_average(directory)

    def load_state(self, directory) -> None:
        self.teacher.load_average(directory)

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        rollouts, tokens = max(sums["rollouts"], 1.0), max(sums.get("trained_tokens", 0.0), 1.0)
        metrics = {"loss": sums["loss"], "divergence": sums["divergence_sum"] / tokens,
                   "entropy": sums["entropy_sum"] / tokens, "completion_length": sums["completion_tokens"] / rollouts,
                   "truncated_fraction": sums["truncated"] / rollouts, "tokens": sums["tokens"],
                   "rollout_seconds": sums["rollout_seconds"] / self.processes.world_size}
        if self.engine_weights.separate:
            metrics["sync_seconds"] = sums["sync_seconds"] / self.processes.world_size
        if "token_reward_sum" in sums:
            metrics["token_reward"] = sums["token_reward_sum"] / tokens
        if "distill_weight_sum" in sums:  # the mean token weight (0 on skipped rows) of the distillation
            metrics["distill_weight"] = sums["distill_weight_sum"] / tokens
        if "revision_tokens" in sums:
            metrics["revision_length"] = sums["revision_tokens"] / max(sums["revisions"], 1.0)
        metrics.update(feedback_metrics(sums, rollouts))
        if "reward_sum" in sums:
            metrics["reward"] = sums["reward_sum"] / rollouts
            for key, value in sums.items():
                if key.startswith("component/"):
                    metrics["reward_" + key.removeprefix("component/")] = value / rollouts
            if "reward_math" in metrics:
                metrics["accuracy"] = metrics["reward_math"]
        return metrics

    # -- the target-entropy stop -------------------------------------------------------------------
    def after_step(self, model, step: int) -> tuple[dict[str, float], bool]:
        """The moving-average teacher's update (``context_weights: ema``); every ``entropy_every`` steps the
        held-out entropy, and whether it reached ``target_entropy``."""
        cfg = self.cfg
        self.teacher.update_average(model)
        if self.held_out is None or step % cfg.entropy_every:
            return {}, False
        with self.engine_weights.awake(model, step):
            entropy = heldout_entropy(model, self.engine, self.held_out, self.config.rollout.max_new_tokens,
                                      self.processes, self.pad_id, self.config.train.precision)
        return {"heldout_entropy": entropy}, entropy >= cfg.target_entropy


def heldout_entropy(model, engine: RolloutEngine, prompts: list[list[int]], max_new_tokens: int,
                    processes: Processes, pad_id: int, precision: str = "auto") -> float:
    """Mean token entropy at T = 1 of one sampled (T = 1, fixed seed) completion per held-out prompt."""
    was_training = model.training
    generations = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, n=1,
                                                          seed=HELD_OUT_SEED))
    rows = rollout_rows(generations, pad_id)
    device = processes.device
    model.eval()
    with torch.no_grad(), autocast(model, precision):
        out = completion_logprobs(model, rows.input_ids.to(device),
                                  torch.nn.functional.pad(rows.target_mask, (1, 0)).to(device),
                                  position_ids=rows.position_ids.to(device), with_entropy=True)
    model.train(was_training)
    return float((out.entropy * out.mask).sum() / out.mask.sum().clamp(min=1))
