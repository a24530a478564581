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
  solution or feedback) while the student sees only the prompt (OPSD, Zhao et al. 2026; SDPO, Hübotter et
  al. 2026).

``objective: reward`` replaces the divergence by G-OPD's policy gradient (Yang et al. 2026, arXiv
2602.12125): ``L = −Σ_t r_t·log p_θ(y_t) / N`` with the detached token reward
``r_t = λ(log q(y_t) − log π_ref(y_t)) − (log p_θ(y_t) − log π_ref(y_t))``, π_ref the starting weights.

``distill.target_entropy`` stops the run once the mean token entropy at T = 1 of the student's completions of
held-out prompts reaches the target (checked every ``entropy_every`` steps, logged as ``heldout_entropy``).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass

import torch

from posttrain.config import RunConfig
from posttrain.data import encode_prompts, prompt_text
from posttrain.errors import ConfigError, DataError
from posttrain.models import disabled_adapter, is_peft_model, load_model, load_tokenizer
from posttrain.models.vocabulary import check_same_output_size, check_same_tokenizer
from posttrain.ops import causal_lm_parts, completion_logprobs, extrapolated_token_rewards, hidden_divergence
from posttrain.rewards import build_rewards, check_rewards_for_records
from posttrain.rollout import Generation, RolloutEngine, SamplingParams, pad_token_id
from posttrain.trainers.distributed import Processes
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

HELD_OUT_SEED = 12345
TEACHER_FIX = "distill from a teacher of the same model family and tokenizer"


@dataclass
class DistillBatch:
    student: RolloutRows
    teacher_rows: RolloutRows | None  # self_context: the same completions after the context-bearing prompts
    generations: list[Generation]


def context_prompt(record: dict, field: str, template: str) -> dict:
    """The record with its prompt replaced by ``template`` filled with the prompt text and ``record[field]``."""
    if record.get(field) in (None, ""):
        raise DataError(f"{record.get('_where', '?')}: the record has no {field!r} field for the self_context teacher",
                        where=f"{record.get('_where', '?')}:{field}",
                        fix=f"give every record a {field!r} (the privileged context) or set distill.context_field")
    text = template.format(prompt=prompt_text(record), context=record[field])
    prompt = record.get("prompt")
    if isinstance(prompt, list) and prompt:
        return {**record, "prompt": [*prompt[:-1], {**prompt[-1], "content": text}]}
    return {**record, "prompt": text}


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
        vocab_size = causal_lm_parts(model)[1].weight.shape[0]
        if cfg.top_k_divergence > vocab_size:
            raise ConfigError(f"distill.top_k_divergence = {cfg.top_k_divergence} exceeds the model's vocabulary of "
                              f"{vocab_size} tokens", where="distill.top_k_divergence",
                              fix="use 0 (the full vocabulary) or a k no larger than the vocabulary")
        self.config, self.cfg, self.tokenizer, self.processes = config, cfg, tokenizer, processes
        self.records = records
        self.prompts = encode_prompts(records, tokenizer)
        self.num_examples = len(records)
        self.examples_per_step = prompts_per_process(config.rollout.prompts_per_step, processes)
        self.rewards = None
        if cfg.rewards is not None:
            self.rewards = build_rewards(cfg.rewards)
            check_rewards_for_records(self.rewards, records, config.data.train.path or f"task:{config.data.train.task}")
        self.engine, self.engine_weights = rollout_engine(config, model, tokenizer, processes)
        self.pad_id = pad_token_id(model, tokenizer)
        self.context_prompts = None
        if cfg.teacher == "self_context":
            self.context_prompts = encode_prompts(
                [context_prompt(r, cfg.context_field, cfg.context_template) for r in records], tokenizer)
        self.teacher = self._frozen_teacher(model, tokenizer)
        self.snapshot = self._snapshot(model)
        self.held_out = self._held_out_prompts(tokenizer) if cfg.target_entropy is not None else None
        self.samples_path = samples_path(config.run_dir, processes)
        self._samples_checked = False

    def _frozen_teacher(self, model, tokenizer):
        """The other model (teacher ``model``), or None."""
        cfg = self.cfg
        if cfg.teacher != "model":
            return None
        check_same_tokenizer(tokenizer, load_tokenizer(cfg.teacher_model), "distill.teacher_model", TEACHER_FIX)
        teacher = load_model(cfg.teacher_model, dtype=next(model.parameters()).dtype, device=str(self.processes.device))
        check_same_output_size(model, teacher, "distill.teacher_model", TEACHER_FIX)
        return teacher.eval().requires_grad_(False)

    def _snapshot(self, model):
        """A frozen copy of the starting weights when a teacher or G-OPD's π_ref needs them (None with LoRA: the
        adapter-disabled model is the starting model)."""
        cfg = self.cfg
        needed = (cfg.teacher == "snapshot" or (cfg.teacher == "self_context" and cfg.context_weights == "initial")
                  or (cfg.objective == "reward" and cfg.gopd_lambda != 1.0))
        if not needed or is_peft_model(model):
            return None
        return copy.deepcopy(model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def _starting_weights(self, model):
        """The model with its starting weights: the snapshot, or the LoRA model with its adapters off."""
        if self.snapshot is not None:
            yield self.snapshot
        else:
            with disabled_adapter(model) as base:
                yield base

    def _held_out_prompts(self, tokenizer) -> list[list[int]]:
        source, held_out = eval_source(self.config.data)
        if source is None:
            raise ConfigError("distill.target_entropy needs held-out prompts", where="data.eval",
                              fix="set data.eval (or train on a task, whose held-out split is used)")
        records = load_source(source, kind="prompt", skip_invalid=self.config.data.skip_invalid,
                              held_out=held_out).records
        return encode_prompts(records[: self.cfg.entropy_prompts], tokenizer)

    # -- rollouts ---------------------------------------------------------------------------------
    def step_batches(self, model, indices: list[int], share: list[int], step: int) -> StepBatches:
        if not self._samples_checked:  # a resumed run drops the samples a killed run wrote past its checkpoint
            truncate_metrics(self.samples_path, step)
            self._samples_checked = True
        ro = self.config.rollout
        params = SamplingParams(temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
                                max_new_tokens=ro.max_new_tokens, n=ro.samples_per_prompt,
                                seed=rollout_seed(self.config.seed, step, self.processes))
        started = time.perf_counter()
        with self.engine_weights.awake(model, step):
            generations = self.engine.generate([self.prompts[i] for i in share], params)
        rollout_seconds = time.perf_counter() - started
        stats = {"rollouts": float(len(generations)), "completion_tokens": float(sum(len(g) for g in generations)),
                 "truncated": float(sum(g.finish_reason == "length" for g in generations)),
                 "rollout_seconds": rollout_seconds, "sync_seconds": self.engine_weights.last_sync_seconds}
        columns = [{} for _ in generations]
        if self.rewards is not None:
            records = [self.records[share[g.prompt_index]] for g in generations]
            scored = self.rewards.score([prompt_text(r) for r in records], [g.text for g in generations],
                                        [{**r, "finish_reason": g.finish_reason, "completion_tokens": len(g)}
                                         for r, g in zip(records, generations, strict=True)])
            stats["reward_sum"] = float(scored.total.sum())
            for label, values in scored.components.items():
                stats[f"component/{label}"] = float(torch.as_tensor(values, dtype=torch.float64).sum())
            columns = [{"reward": float(scored.total[i]),
                        **{f"reward_{k}": float(v[i]) for k, v in scored.components.items()}}
                       for i in range(len(generations))]
        append_samples(self.samples_path, step, share, generations, columns)
        counts = self.processes.sum_values({"rows": stats["rollouts"], "tokens": stats["completion_tokens"]})
        parts = self.processes.micro_batches(generations, [len(g.prompt_ids) + len(g) for g in generations],
                                             self.config.train.batch_size, self.config.train.micro_batch_tokens)
        batches = [self._batch(part, [share[g.prompt_index] for g in part]) for part in parts]
        return StepBatches(batches, StepTotals(rows=counts["rows"], tokens=counts["tokens"]), stats=stats)

    def _batch(self, generations: list[Generation], record_indices: list[int]) -> DistillBatch:
        teacher_rows = None
        if self.context_prompts is not None:
            teacher_rows = rollout_rows(generations, self.pad_id,
                                        prompt_ids=[self.context_prompts[i] for i in record_indices])
        return DistillBatch(rollout_rows(generations, self.pad_id), teacher_rows, generations)

    # -- loss -------------------------------------------------------------------------------------
    def _targets(self, module, rows: RolloutRows) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states at the positions that predict completion tokens ``[N, H]``, and those tokens."""
        device = self.processes.device
        input_ids, mask = rows.input_ids.to(device), rows.target_mask.to(device).bool()
        body = causal_lm_parts(module)[0]
        hidden = body(input_ids=input_ids, position_ids=rows.position_ids.to(device), use_cache=False).last_hidden_state
        return hidden[:, :-1][mask], input_ids[:, 1:][mask]

    def _teacher_hidden(self, model, batch: DistillBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The teacher's final hidden states at the completion positions and its output weight (None: ``self``)."""
        cfg = self.cfg
        if cfg.teacher == "self":
            return None, None
        rows = batch.teacher_rows if batch.teacher_rows is not None else batch.student
        with torch.no_grad():
            if cfg.teacher == "model":
                return self._targets(self.teacher, rows)[0], causal_lm_parts(self.teacher)[1].weight
            if cfg.teacher == "self_context" and cfg.context_weights == "live":
                return self._targets(model, rows)[0], causal_lm_parts(model)[1].weight.detach()
            with self._starting_weights(model) as start:
                return self._targets(start, rows)[0], causal_lm_parts(start)[1].weight.detach()

    def _reference_logprobs(self, model, batch: DistillBatch) -> torch.Tensor | None:
        """log π_ref(y_t) of the starting weights, for G-OPD with λ ≠ 1 (None otherwise: the terms cancel)."""
        if self.cfg.objective != "reward" or self.cfg.gopd_lambda == 1.0:
            return None
        rows, device = batch.student, self.processes.device
        with torch.no_grad(), self._starting_weights(model) as start:
            out = completion_logprobs(start, rows.input_ids.to(device),
                                      torch.nn.functional.pad(rows.target_mask, (1, 0)).to(device),
                                      position_ids=rows.position_ids.to(device))
        return out.logprobs[out.mask.bool()]

    def loss(self, model, batch: DistillBatch, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        teacher_hidden, teacher_weight = self._teacher_hidden(model, batch)
        hidden, labels = self._targets(model, batch.student)
        _, head, softcap = causal_lm_parts(model)
        tokens = hidden_divergence(hidden, head.weight, labels, teacher_hidden, teacher_weight, kind=cfg.divergence,
                                   beta=cfg.beta, teacher_temperature=cfg.teacher_temperature,
                                   top_k=cfg.top_k_divergence, clip=cfg.clip, chunk_size=self.config.train.chunk_size,
                                   logit_softcap=softcap)
        if cfg.objective == "reward":
            rewards = extrapolated_token_rewards(tokens.student_logprob, tokens.teacher_logprob,
                                                 self._reference_logprobs(model, batch), cfg.gopd_lambda)
            loss = -(rewards * tokens.student_logprob).sum() / totals.of("tokens")
            extra = {"token_reward_sum": float(rewards.sum())}
        else:
            loss = tokens.divergence.sum() / totals.of("tokens")
            extra = {}
        stats = {"loss": float(loss.detach()), "divergence_sum": float(tokens.divergence.detach().sum()),
                 "entropy_sum": float(tokens.entropy.sum()), "trained_tokens": float(labels.numel()),
                 "tokens": batch.student.sequence_tokens, **extra}
        return loss, stats

    def close(self) -> None:
        self.engine_weights.close()

    def frozen_models(self) -> list[torch.nn.Module]:
        return [] if self.teacher is None else [self.teacher]

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
        """Every ``entropy_every`` steps: the held-out entropy, and whether it reached ``target_entropy``."""
        cfg = self.cfg
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
