"""``posttrain train``: build the model, data, method and evaluation of a recipe and run the loop."""

from __future__ import annotations

import contextlib
import json
import random

import numpy as np
import torch
import transformers

from posttrain.config import RunConfig
from posttrain.data import encode_prompt, prompt_text
from posttrain.errors import disk_space_checked
from posttrain.evals import evaluate_math
from posttrain.evals.run import require_references
from posttrain.models import load_model, load_tokenizer
from posttrain.models.reward import load_reward_model
from posttrain.report import write_report
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.trainers import distill, kto, ppo, preference, resume, rl, sft, srpo  # noqa: F401  (each registers its methods)
from posttrain.trainers.distributed import Processes
from posttrain.trainers.inputs import eval_source, load_source
from posttrain.trainers.loop import Evaluate, Method, Trainer, TrainResult, method_class
from posttrain.trainers.memory import FSDP_CPU_THRESHOLD, release_freed_tensors
from posttrain.trainers.precision import Precision
from posttrain.trainers.run_lock import RunLock
from posttrain.trainers.tracking import WandbRun, wandb_run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_dtype(config: RunConfig) -> str:
    """Weights are kept in float32 unless the recipe asks otherwise (master weights); ``train.precision`` adds
    autocast on top (:mod:`posttrain.trainers.precision`)."""
    return "float32" if config.model.dtype == "auto" else config.model.dtype


def math_evaluator(config: RunConfig, tokenizer, processes: Processes) -> Evaluate | None:
    """The periodic evaluation hook: greedy (or sampled) math accuracy on held-out prompts."""
    if config.eval.kind == "none":
        return None
    source, held_out = eval_source(config.data)
    if source is None:
        return None
    records = load_source(source, kind="prompt", skip_invalid=config.data.skip_invalid, held_out=held_out).records
    if config.eval.n:
        records = records[: config.eval.n]
    require_references(records)
    prompts = [encode_prompt(record, tokenizer) for record in records]
    references = [str(record["reference"]) for record in records]
    texts = [prompt_text(record) for record in records]
    ev = config.eval
    params = SamplingParams(temperature=ev.temperature, top_p=ev.top_p, max_new_tokens=ev.max_new_tokens,
                            n=ev.k, seed=config.seed)
    run_dir = config.run_dir

    def evaluate(model, step: int) -> dict[str, float]:
        # in lockstep (FSDP) every process runs the same generation; the main one writes it
        engine = HFEngine(model, tokenizer, batch_size=ev.batch_size, synced=processes.lockstep)
        out_dir = run_dir / "eval" / f"step-{step}" if processes.is_main else None
        return evaluate_math(engine, prompts, references, k=ev.k, params=params, prompts_text=texts,
                             out_dir=out_dir).to_dict()

    return evaluate


def build_method(config: RunConfig, model, tokenizer, processes: Processes) -> tuple[Method, dict]:
    """The recipe's method (found in the registry by ``config.method``) over its training data, and a summary
    of that data (written to the run)."""
    return method_class(config.method).from_config(config, model, tokenizer, processes)


def train(config: RunConfig) -> TrainResult:
    """Run a recipe. The main process holds the run directory's lock throughout (a second process on the same
    run is refused), and a full disk anywhere in the run's writes is reported as such."""
    transformers.utils.logging.disable_progress_bar()
    processes = Processes(config.model.device, config.dist.strategy)
    sharded_on_cpu = processes.lockstep and processes.device.type == "cpu"
    release_freed_tensors(default=FSDP_CPU_THRESHOLD if sharded_on_cpu else 0)
    lock = RunLock(config.run_dir) if processes.is_main else contextlib.nullcontext()
    with lock, disk_space_checked(config.run_dir, "the run's outputs"):
        with wandb_run(config, processes.is_main) as tracker:
            return _train_locked(config, processes, tracker)


def _train_locked(config: RunConfig, processes: Processes, tracker: WandbRun | None) -> TrainResult:
    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model.name)
    load = load_reward_model if config.method == "reward_model" else load_model
    extra = {"pad_token_id": tokenizer.pad_token_id} if config.method == "reward_model" else {}
    model = load(config.model.name, dtype=training_dtype(config), device=str(processes.device),
                 lora=config.model.lora, **extra)
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision = Precision(config.train.precision, model)  # refuses what cannot be correct before any work
    method, summary = build_method(config, model, tokenizer, processes)
    try:
        return _fit(config, model, tokenizer, method, summary, processes, precision, tracker)
    finally:
        method.close()


def _fit(config: RunConfig, model, tokenizer, method: Method, summary: dict, processes: Processes,
         precision: Precision, tracker: WandbRun | None) -> TrainResult:
    evaluate = math_evaluator(config, tokenizer, processes)
    data_files = resume.data_fingerprints([config.data.train.path] if config.data.train.path else [])
    trainer = Trainer(config, model, tokenizer, method, processes, evaluate, data_files=data_files,
                      precision=precision, tracker=tracker)
    if processes.is_main:
        summary["steps"] = trainer.total_steps
        config.run_dir.mkdir(parents=True, exist_ok=True)
        (config.run_dir / "data_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        print(f"{summary['examples']} examples from {summary['source']} (skipped {summary['skipped']}, truncated "
              f"{summary['truncated']}, dropped {summary['dropped']}); {trainer.total_steps} steps", flush=True)
    try:
        result = trainer.fit()
    except Exception:
        if processes.is_main:  # a failed run gets its report too (how far it got); the run's error is what is raised
            with contextlib.suppress(Exception):
                write_report([config.run_dir], config.run_dir / "report.html")
        raise
    if processes.is_main:
        write_report([config.run_dir], config.run_dir / "report.html")
    processes.barrier()
    if tracker is not None:
        tracker.finish()  # uploads config.yaml, metrics.jsonl and report.html
    return result
