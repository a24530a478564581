"""The one training loop every method runs through.

A *method* (SFT, preference optimization, RL, distillation) supplies:

* ``step_batches(model, indices, share, step)`` — the work of one step on this process: its
  micro-batches (for RL: after sampling and scoring rollouts), the step's global :class:`StepTotals`
  (rows, tokens, pairs over all micro-batches of all processes, computed once), and step statistics;
* ``loss(model, batch, totals)`` — one micro-batch's share of the global loss, **a sum over the
  micro-batch divided by the total its objective names** (the normalization rule: docs/design.md), and
  a dict of additive statistics (summed over micro-batches, passes and processes), turned into logged
  metrics by ``summarize(sums)``;
* ``updates_per_step`` — optimizer updates per step over the same micro-batches (RL's μ; 1 otherwise);
* hooks with no-op defaults in :class:`Method`: ``after_step(model, step)`` — extra metrics after a step, and
  whether to end the run there (distillation's target-entropy stop; a run that ended so stays ended on
  resume); ``sample_block`` — examples drawn together (blocks of consecutive indices); ``save_state(dir)`` /
  ``load_state(dir)`` — state of its own (an online-trained reward model) that goes into every checkpoint.

Methods register by name (``class SFTMethod(Method, name="sft")``); ``method_class(config.method)`` finds one,
and its ``from_config(config, model, tokenizer, processes)`` reads the recipe once and checks everything it
needs before step 1.

Per step the loop draws ``examples_per_step × world_size`` example indices, each process runs its
micro-batches forward and backward, gradients are combined across processes, clipped, and AdamW steps;
that is repeated ``updates_per_step`` times (with ``optim.update_in_backward``, AdamW runs inside the last
micro-batch's backward instead: :class:`~posttrain.trainers.optimizer.AdamWInBackward`). An update whose loss
(on any process) or gradient norm is not finite is skipped — the weights and optimizer state stay as they were, the schedule moves on — and
counted (``skipped_updates``); ``train.max_nonfinite_steps`` skips in a row stop the run with an error,
its last checkpoint untouched. Forward and backward run under the run's precision policy
(``train.precision``: autocast, and for fp16 a loss scale whose overflow skips are not divergence; see
:mod:`posttrain.trainers.precision`). Evaluation runs at the start, every ``eval_every`` steps and at the end;
checkpoints every ``save_every`` steps and at the end (see :mod:`posttrain.trainers.checkpoint`); where
a run resumes from and what may change on resume: :mod:`posttrain.trainers.resume`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from posttrain.config import RunConfig, dump_config
from posttrain.errors import ConfigError, RunStateError
from posttrain.trainers import checkpoint as ckpt
from posttrain.trainers import resume
from posttrain.trainers.distributed import Processes
from posttrain.trainers.optimizer import AdamWInBackward, build_optimizer
from posttrain.trainers.parallel import ParallelModel
from posttrain.trainers.precision import Precision
from posttrain.trainers.run_log import RunLog
from posttrain.trainers.sampler import EpochSampler
from posttrain.trainers.schedule import build_scheduler
from posttrain.trainers.tracking import WandbRun


@dataclass(frozen=True)
class StepTotals:
    """Global counts of one optimizer step, over all micro-batches of all processes: what a loss divides by.

    ``rows``: sequences (SFT examples, rollouts, regression texts); ``tokens``: the response tokens the
    objective averages over (for DPO's RPO term: the chosen completions' tokens); ``pairs``: preference pairs.
    """

    rows: float = 0.0
    tokens: float = 0.0
    pairs: float = 0.0

    def of(self, name: str) -> float:
        """The total called ``name`` (``rows``, ``tokens`` or ``pairs``), at least 1 (an empty step divides by 1)."""
        return max(float(getattr(self, name)), 1.0)


@dataclass
class StepBatches:
    """One process's work for one step: micro-batches, the step's global totals, step statistics."""

    micro_batches: list[Any]
    totals: StepTotals
    stats: dict[str, float] = field(default_factory=dict)


METHODS: dict[str, type[Method]] = {}


class Method:
    """A training method (see the module docstring). Subclasses set ``num_examples`` and ``examples_per_step``,
    implement ``from_config``, ``step_batches``, ``loss`` and ``summarize``, and override the hooks they use."""

    num_examples: int
    examples_per_step: int
    updates_per_step: int = 1
    sample_block: int = 1
    name: ClassVar[str | None] = None

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            METHODS[name] = cls

    @classmethod
    def from_config(cls, config: RunConfig, model, tokenizer, processes: Processes) -> tuple[Method, dict]:
        """The method over the recipe's training data, and a summary of that data (written to the run)."""
        raise NotImplementedError

    def step_batches(self, model: torch.nn.Module, indices: list[int], share: list[int], step: int) -> StepBatches:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any, totals: StepTotals) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def after_step(self, model: torch.nn.Module, step: int) -> tuple[dict[str, float], bool]:
        """Extra metrics after step ``step`` and whether the run ends there; by default none and no."""
        return {}, False

    def save_state(self, directory: Path) -> None:
        """Write the method's own state into the checkpoint being written (every process); by default none."""

    def load_state(self, directory: Path) -> None:
        """Read what :meth:`save_state` wrote; by default nothing."""

    def close(self) -> None:
        """Release what the method holds beyond the model (a rollout engine) when the run ends; by default nothing."""

    def frozen_models(self) -> list[torch.nn.Module]:
        """Frozen copies the method runs (a reference, a teacher), sharded like the policy under FSDP; by default none."""
        return []


def method_class(name: str) -> type[Method]:
    """The registered method called ``name`` (``RunConfig.method`` validates the name; a method's variants are
    registered too, e.g. "kto", which ``method: dpo`` builds for ``preference.kind: kto``)."""
    return METHODS[name]


Evaluate = Callable[[torch.nn.Module, int], dict[str, float]]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_metrics: dict[str, float]
    eval_metrics: dict[str, float]


def total_steps(config: RunConfig, num_examples: int, examples_per_step: int, world_size: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    return max(1, math.ceil(config.train.epochs * num_examples / (examples_per_step * world_size)))


class Trainer:
    """Runs a method's optimization with logging, evaluation and checkpoints."""

    def __init__(self, config: RunConfig, model, tokenizer, method: Method, processes: Processes,
                 evaluate: Evaluate | None = None, data_files: dict[str, dict] | None = None,
                 precision: Precision | None = None, tracker: WandbRun | None = None):
        self.config = config
        self.tracker = tracker  # W&B, started by the run log (posttrain.trainers.tracking)
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.processes = processes
        self.evaluate = evaluate
        # DDP wraps the model; FSDP shards it in place, so the optimizer is built over the shards after this
        self.parallel = ParallelModel(model, processes.strategy, processes.device, config.dist)
        for frozen in method.frozen_models():
            self.parallel.shard_frozen(frozen)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.precision = precision or Precision(config.train.precision, model)  # autocast and fp16 loss scaling
        if self.precision.scaler is not None and config.optim.update_in_backward:
            raise ConfigError("train.precision=fp16 unscales the gradients before any update, and "
                              "optim.update_in_backward (train.memory=lean) updates each parameter as its gradient "
                              "arrives", where="train.precision",
                              fix="use train.precision=bf16 with train.memory=lean, or optim.update_in_backward=false")
        if self.precision.scaler is not None and self.parallel.sharded:
            raise ConfigError("train.precision=fp16 scales the loss by one factor that every process must lower on an "
                              "overflow, and under FSDP each process sees only its shards' gradients",
                              where="train.precision", fix="use train.precision=bf16 (no loss scale) with fsdp, or ddp")
        optim = config.optim
        self.optimizer = build_optimizer(self.parameters, optim, seed=config.seed, world_size=processes.world_size)
        self.total_steps = total_steps(config, method.num_examples, method.examples_per_step, processes.world_size)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps * method.updates_per_step,
                                         optim.warmup_ratio, optim.schedule)
        block = method.sample_block
        if method.examples_per_step % block:
            raise ConfigError(f"this method draws its examples in blocks of {block}, but a step takes "
                              f"{method.examples_per_step} per process", fix=f"use a multiple of {block}")
        self.sampler = EpochSampler(method.num_examples, config.seed, block=block)
        self.data_files = data_files or {}  # fingerprints of the training data (posttrain.trainers.resume)
        self.step = 0
        self.stopped = False
        self.skipped_in_row = 0

    # -- checkpoints -------------------------------------------------------------------------
    def _resume(self) -> tuple[Path | None, dict]:
        """Restore the newest usable checkpoint; its path and the settings that changed since it was written."""
        candidates = resume.resume_candidates(self.config.train.resume, self.config.run_dir)
        found = resume.restore_newest(candidates, self._restore, self._warn)
        if found is None:
            return None, {}
        path, state = found
        changes = resume.check_config(state.config, self.config.model_dump(mode="json"), path,
                                      global_batch_checked=state.examples_per_step is not None)
        resume.check_data(state.data_files, path)
        self.sampler.load_state_dict(state.data)
        if not state.weights_only:
            self.method.load_state(path)
        self.step = state.step
        self.stopped = state.stopped
        return path, changes

    def _restore(self, path: Path) -> ckpt.TrainerState:
        def fits(state: ckpt.TrainerState) -> None:
            resume.check_processes(state, path, self.processes.world_size, self._global_examples(),
                                   self.parallel.sharded)
            resume.check_weights_only(state, path, self.total_steps)

        return ckpt.read_checkpoint(path, self.model, self.optimizer, self.scheduler, self.processes.rank, check=fits,
                                    precision=self.precision)

    def _global_examples(self) -> int:
        return self.method.examples_per_step * self.processes.world_size

    def _warn(self, text: str) -> None:
        if self.processes.is_main:
            print(text, flush=True)

    def _save(self, weights_only: bool = False) -> None:
        """A checkpoint of this step (``weights_only``: the model without the state that continues training)."""
        run_dir = self.config.run_dir
        if not weights_only:
            ckpt.write_process_state(run_dir, self.step, self.processes.rank)
            self.processes.barrier()
            self.method.save_state(ckpt.temporary_dir(run_dir, self.step))  # every process: its own state
        if self.parallel.sharded:
            ckpt.write_shards(run_dir, self.step, self.model, None if weights_only else self.optimizer)
        self.processes.barrier()
        if self.processes.is_main:
            state = ckpt.TrainerState(self.step, self.sampler.state_dict(), self.config.seed, self.stopped,
                                      config=self.config.model_dump(mode="json"), data_files=self.data_files,
                                      world_size=self.processes.world_size, examples_per_step=self._global_examples(),
                                      weights_only=weights_only)
            ckpt.write_checkpoint(run_dir, state, self.model, self.tokenizer, self.optimizer, self.scheduler,
                                  self.config.train.keep_checkpoints, precision=self.precision,
                                  shards_written=self.parallel.sharded)
        self.processes.barrier()

    # -- one step ------------------------------------------------------------------------------
    def _train_step(self) -> dict[str, float]:
        world, rank = self.processes.world_size, self.processes.rank
        per_process = self.method.examples_per_step
        indices = self.sampler.next_batch(per_process * world)
        share = indices[rank * per_process : (rank + 1) * per_process]
        started = time.perf_counter()
        with self.parallel.gathered():
            work = self.method.step_batches(self.model, indices, share, self.step)
        self.model.train()
        sums: dict[str, float] = defaultdict(float, work.stats)
        skipped = overflows = 0
        passes = work.micro_batches
        # in lockstep (FSDP) a process with fewer passes repeats its last one with weight 0
        count = self.processes.max_count(len(passes)) if self.parallel.lockstep else len(passes)
        for _ in range(self.method.updates_per_step):
            finite_loss = True
            for index in range(count):
                batch, weight = (passes[index], 1.0) if index < len(passes) else (passes[-1], 0.0)
                with self.parallel.synced(last=index == count - 1):
                    with self.precision.autocast():
                        loss, stats = self.parallel.run(self.method.loss, batch, work.totals)
                    finite_loss = finite_loss and bool(torch.isfinite(loss.detach()).all())
                    if index == count - 1 and isinstance(self.optimizer, AdamWInBackward):
                        self.optimizer.arm(finite_loss)  # the update runs in this backward (none on a non-finite loss)
                    # the one world-size factor: the engines average gradients over processes, and the
                    # gradient of the global loss is their sum
                    self.precision.backward(loss * (self.processes.world_size * weight))
                for key, value in stats.items():
                    sums[key] += value * weight
            grad_norm, lr, applied, overflow = self._optimizer_step(finite_loss)
            skipped += not applied
            overflows += overflow
        seconds = time.perf_counter() - started
        totals = self.processes.sum_values(sums)
        metrics = self.method.summarize(totals)
        metrics.update(lr=lr, grad_norm=grad_norm, seconds_per_step=seconds, epoch=self.sampler.epoch,
                       skipped_updates=skipped, **self.precision.metrics())
        if self.precision.scaler is not None:
            metrics["overflow_updates"] = overflows  # fp16 loss-scale overflows among the skipped updates
        if "tokens" in totals:
            metrics["tokens_per_s"] = totals["tokens"] / seconds
        return metrics

    def _optimizer_step(self, finite_loss: bool) -> tuple[float, float, bool, bool]:
        """Unscale (fp16), clip, step the optimizer and the schedule, once the engine has averaged the gradients over
        processes: the norm before clipping, the lr, whether the update was applied (not when any process's loss or
        the norm is non-finite), and whether a skip was an fp16 loss-scale overflow (not counted as divergence).
        An :class:`AdamWInBackward` optimizer has applied the update in the last backward (one process, no
        clipping): only its norm and outcome are collected."""
        if isinstance(self.optimizer, AdamWInBackward):
            grad_norm, applied = self.optimizer.finish()
            return grad_norm, self._schedule_step(applied), applied, False
        self.precision.unscale(self.optimizer)  # gradients are averaged: every process sees the same overflow
        grads = [p.grad for p in self.parameters if p.grad is not None]
        total_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        grad_norm = ParallelModel.full_value(total_norm)  # over all shards under FSDP
        nonfinite_losses = self.processes.sum_values({"bad": float(not finite_loss)})["bad"]
        applied = math.isfinite(grad_norm) and nonfinite_losses == 0
        if applied and self.config.optim.max_grad_norm:
            torch.nn.utils.clip_grads_with_norm_(self.parameters, self.config.optim.max_grad_norm, total_norm)
        if applied:
            self.optimizer.step()
        overflow = self.precision.update(loss_finite=nonfinite_losses == 0)
        return grad_norm, self._schedule_step(applied, counted=not overflow), applied, overflow

    def _schedule_step(self, applied: bool, counted: bool = True) -> float:
        """Move the schedule on, clear the gradients and count skipped updates (not an fp16 overflow: ``counted``
        False); the lr the update used."""
        lr = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # torch warns when the schedule moves before any update was applied
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if counted:
            self.skipped_in_row = 0 if applied else self.skipped_in_row + 1
        return lr

    def _check_diverged(self, log: RunLog, skipped: int, overflows: int = 0) -> None:
        if overflows:
            log.message(f"step {self.step}: skipped {overflows} update(s) whose fp16 gradients overflowed; the loss "
                        f"scale is now {self.precision.metrics()['loss_scale']:g}")
        if skipped > overflows:
            log.message(f"step {self.step}: skipped {skipped - overflows} update(s) with a non-finite loss or "
                        f"gradient norm ({self.skipped_in_row} in a row); the weights were left unchanged")
        limit = self.config.train.max_nonfinite_steps
        if self.skipped_in_row >= limit:
            saved = ckpt.list_checkpoints(self.config.run_dir)
            raise RunStateError(
                f"training diverged: {self.skipped_in_row} optimizer updates in a row (up to step {self.step}) had "
                f"a non-finite loss or gradient norm (train.max_nonfinite_steps = {limit}); none of them reached "
                f"the weights. Last checkpoint: {saved[-1] if saved else 'none'}",
                fix="lower optim.lr, keep optim.max_grad_norm on, check the data and the checkpoint the run "
                    "started from; metrics.jsonl shows where the loss left the finite range")

    def _run_eval(self, log: RunLog) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        results = {}
        if self.processes.is_main or self.parallel.lockstep:  # in lockstep every process runs the passes
            log.message(f"evaluating at step {self.step} ...")
            with self.parallel.gathered():
                results = {f"eval/{k}": v for k, v in self.evaluate(self.model, self.step).items()}
            log.log(self.step, results)
            log.message("  " + "  ".join(f"{k}={v:.4g}" for k, v in results.items()))
        self.processes.barrier()
        return results

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        config, train = self.config, self.config.train
        run_dir = config.run_dir
        checkpoint, changes = self._resume()
        if self.processes.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
            resume.append_history(run_dir, self.step, checkpoint, changes)
        log = RunLog(run_dir, self.total_steps, self.step, enabled=self.processes.is_main,
                     tensorboard="tensorboard" in config.logging.report_to, tracker=self.tracker)
        eval_metrics: dict[str, float] = {}
        metrics: dict[str, float] = {}
        try:
            if self.step == 0 and train.eval_at_start:
                eval_metrics = self._run_eval(log)
            while self.step < self.total_steps and not self.stopped:
                metrics = self._train_step()
                self.step += 1
                extra, self.stopped = self.method.after_step(self.model, self.step)
                metrics.update(extra)
                last = self.step == self.total_steps or self.stopped
                if self.step % train.log_every == 0 or last:
                    log.log(self.step, metrics)
                log.advance(self.step, metrics)
                self._check_diverged(log, metrics["skipped_updates"], metrics.get("overflow_updates", 0))
                if self.stopped:
                    log.message(f"stopping at step {self.step}: the method's stop condition was met")
                if (train.eval_every and self.step % train.eval_every == 0) or last:
                    eval_metrics = self._run_eval(log)
                if (train.save_every and self.step % train.save_every == 0) or (last and train.save_final):
                    self._save(weights_only=last and train.final_checkpoint == "weights")
        finally:
            log.close()
        if self.processes.is_main:
            resume.append_finish(run_dir, self.step)
        return TrainResult(run_dir, self.step, metrics, eval_metrics)
