"""The one training loop every method runs through.

A *method* (SFT, and later preference optimization, RL, distillation) supplies three things:

* ``normalizer(indices)`` — the count its loss is divided by, taken over the whole global batch;
* ``collate(indices)`` — one micro-batch of tensors on the right device;
* ``loss(model, batch, normalizer)`` — the micro-batch's share of the global loss and a dict of
  additive statistics (summed over micro-batches and processes), turned into logged metrics by
  ``summarize(sums)``.

Per optimizer step the loop draws ``batch_size × grad_accum × world_size`` examples, each process
runs its ``grad_accum`` micro-batches forward and backward, gradients are summed across processes,
clipped, and AdamW steps. Evaluation runs at the start, every ``eval_every`` steps and at the end;
checkpoints every ``save_every`` steps and at the end (see :mod:`posttrain.trainers.checkpoint`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from posttrain.config import RunConfig, dump_config
from posttrain.errors import ConfigError
from posttrain.trainers import checkpoint as ckpt
from posttrain.trainers.distributed import Processes
from posttrain.trainers.run_log import RunLog
from posttrain.trainers.sampler import EpochSampler
from posttrain.trainers.schedule import build_scheduler


class Method(Protocol):
    num_examples: int

    def normalizer(self, indices: list[int]) -> float: ...

    def collate(self, indices: list[int]) -> Any: ...

    def loss(self, model: torch.nn.Module, batch: Any, normalizer: float) -> tuple[torch.Tensor, dict[str, float]]: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


Evaluate = Callable[[torch.nn.Module, int], dict[str, float]]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_metrics: dict[str, float]
    eval_metrics: dict[str, float]


def total_steps(config: RunConfig, num_examples: int, world_size: int) -> int:
    if config.train.max_steps:
        return config.train.max_steps
    global_batch = config.train.batch_size * config.train.grad_accum * world_size
    return max(1, math.ceil(config.train.epochs * num_examples / global_batch))


def _resume_point(config: RunConfig) -> Path | None:
    choice = config.train.resume
    if choice == "never":
        return None
    if choice == "auto":
        found = ckpt.list_checkpoints(config.run_dir)
        return found[-1] if found else None
    path = Path(choice)
    if not path.is_dir():
        raise ConfigError(f"train.resume={choice!r} is not a checkpoint directory",
                          fix="use auto, never, or the path of a runs/NAME/checkpoints/step-N directory")
    return path


class Trainer:
    """Runs a method's optimization with logging, evaluation and checkpoints."""

    def __init__(self, config: RunConfig, model, tokenizer, method: Method, processes: Processes,
                 evaluate: Evaluate | None = None):
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.method = method
        self.processes = processes
        self.evaluate = evaluate
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        optim = config.optim
        self.optimizer = torch.optim.AdamW(self.parameters, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                           weight_decay=optim.weight_decay)
        self.total_steps = total_steps(config, method.num_examples, processes.world_size)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, optim.warmup_ratio, optim.schedule)
        self.sampler = EpochSampler(method.num_examples, config.seed)
        self.step = 0

    # -- checkpoints -------------------------------------------------------------------------
    def _resume(self) -> None:
        path = _resume_point(self.config)
        if path is None:
            return
        state = ckpt.read_checkpoint(path, self.model, self.optimizer, self.scheduler, self.processes.rank)
        self.sampler.load_state_dict(state.data)
        self.step = state.step

    def _save(self) -> None:
        run_dir = self.config.run_dir
        ckpt.write_process_state(run_dir, self.step, self.processes.rank)
        self.processes.barrier()
        if self.processes.is_main:
            state = ckpt.TrainerState(self.step, self.sampler.state_dict(), self.config.seed)
            ckpt.write_checkpoint(run_dir, state, self.model, self.tokenizer, self.optimizer, self.scheduler,
                                  self.config.train.keep_checkpoints)
        self.processes.barrier()

    # -- one optimizer step --------------------------------------------------------------------
    def _train_step(self) -> dict[str, float]:
        train = self.config.train
        world, rank = self.processes.world_size, self.processes.rank
        per_process = train.batch_size * train.grad_accum
        indices = self.sampler.next_batch(per_process * world)
        normalizer = self.method.normalizer(indices)
        share = indices[rank * per_process : (rank + 1) * per_process]
        started = time.perf_counter()
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        for start in range(0, len(share), train.batch_size):
            batch = self.method.collate(share[start : start + train.batch_size])
            with self.processes.autocast(self.model):
                loss, stats = self.method.loss(self.model, batch, normalizer)
            loss.backward()
            for key, value in stats.items():
                sums[key] += value
        self.processes.sum_gradients(self.parameters)
        grad_norm = float("nan")
        if self.config.optim.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.config.optim.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        totals = self.processes.sum_values(sums)
        metrics = self.method.summarize(totals)
        metrics.update(lr=lr, grad_norm=grad_norm, seconds_per_step=seconds, epoch=self.sampler.epoch)
        if "tokens" in totals:
            metrics["tokens_per_s"] = totals["tokens"] / seconds
        return metrics

    def _run_eval(self, log: RunLog) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        results = {}
        if self.processes.is_main:
            log.message(f"evaluating at step {self.step} ...")
            results = {f"eval/{k}": v for k, v in self.evaluate(self.model, self.step).items()}
            log.log(self.step, results)
            log.message("  " + "  ".join(f"{k}={v:.4g}" for k, v in results.items()))
        self.processes.barrier()
        return results

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        config, train = self.config, self.config.train
        run_dir = config.run_dir
        self._resume()
        if self.processes.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
        log = RunLog(run_dir, self.total_steps, self.step, enabled=self.processes.is_main)
        eval_metrics: dict[str, float] = {}
        metrics: dict[str, float] = {}
        try:
            if self.step == 0 and train.eval_at_start:
                eval_metrics = self._run_eval(log)
            while self.step < self.total_steps:
                metrics = self._train_step()
                self.step += 1
                if self.step % train.log_every == 0 or self.step == self.total_steps:
                    log.log(self.step, metrics)
                log.advance(self.step, metrics)
                last = self.step == self.total_steps
                if (train.eval_every and self.step % train.eval_every == 0) or last:
                    eval_metrics = self._run_eval(log)
                if (train.save_every and self.step % train.save_every == 0) or (last and train.save_final):
                    self._save()
        finally:
            log.close()
        return TrainResult(run_dir, self.step, metrics, eval_metrics)
