"""What the on-policy benchmarks (GRPO, distillation) share: the prompts, the model and data set-up, posttrain's
worker (its run, and its figures from the run directory) and the summary.

The per-step figures are :func:`posttrain.bench.steps.generation_figures`; ``ratio_step_throughput`` = the peer's
s/step ÷ posttrain's s/step (steps per second, posttrain ÷ peer).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from posttrain.bench.harness import check_device, peak_memory, summarize
from posttrain.bench.posttrain_side import with_overrides
from posttrain.bench.steps import generation_figures, trl_generation
from posttrain.config import RunConfig
from posttrain.data import make_task
from posttrain.errors import ConfigError, PosttrainError
from posttrain.models.loader import resolve_source
from posttrain.trainers.run import train
from posttrain.trainers.run_log import read_metrics


def benchmark_prompts(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversational level-1 arithmetic prompts, each with its reference answer for the math reward."""
    records = make_task("arithmetic", n, seed, levels=[1])
    return [
        {"prompt": [{"role": "user", "content": r["question"]}], "reference": r["reference"]} for r in records
    ]


def check_counts(**options: tuple[int, int]) -> None:
    """``--name=(value, minimum)``: a :class:`ConfigError` naming the first option below its minimum."""
    for name, (value, minimum) in options.items():
        if value < minimum:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"must be at least {minimum}, got {value}", where=option,
                              fix=f"pass {option} {minimum} or more")


def check_on_policy_options(options, what: str) -> None:
    """The checks every on-policy benchmark's options share: the peer is TRL, the counts are positive, and the
    device exists."""
    if options.vs != "trl":
        raise PosttrainError(f"unknown peer {options.vs!r} for the {what} benchmark", fix="use --vs trl")
    check_counts(steps=(options.steps, 1), prompts=(options.prompts, 1),
                 max_completion_length=(options.max_completion_length, 1), repeats=(options.repeats, 1),
                 warmup_steps=(options.warmup_steps, 0))
    check_device(options.device)


def prepare_benchmark(model: str, what: str, records: int) -> tuple[str, Path, Path]:
    """The model directory both libraries load, a fresh work directory and a prompts file of ``records`` prompts."""
    source = resolve_source(model)
    if source.kind != "directory":
        raise PosttrainError(f"the {what} benchmark needs a model directory both libraries can load; {model!r} is "
                             f"a {source.kind}", fix="pass smollm2-135m or a local HF model directory")
    workdir = Path(tempfile.mkdtemp(prefix=f"posttrain-bench-{what}-"))
    data_path = workdir / "prompts.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in benchmark_prompts(records)), encoding="utf-8")
    return source.location, workdir, data_path


def posttrain_config(settings: dict, method: str, batch_size: int, section: dict, rollout: dict,
                     **train: object) -> dict:
    """A run of ``method`` (``section`` is its config section, ``rollout`` its sampling) over the benchmark's model, data and steps, with
    a constant lr, ``batch_size`` rows per forward pass, no evaluation and no final checkpoint; then the
    ``posttrain_set`` overrides of the settings (posttrain's options the peer has no counterpart for)."""
    config = {
        "name": "bench",
        "output_dir": tempfile.mkdtemp(dir=settings["workdir"], prefix="posttrain-"),
        "seed": settings["seed"],
        "method": method,
        "model": {"name": settings["model"], "dtype": settings["dtype"], "device": settings["device"]},
        "data": {"train": {"path": settings["data"]}},
        "optim": {"lr": settings["lr"], "schedule": "constant", "warmup_ratio": 0.0},
        "train": {"batch_size": batch_size, "max_steps": settings["steps"] + settings["warmup_steps"],
                  "save_final": False, "eval_at_start": False, **train},
        {"grpo": "rl"}.get(method, method): section,
        "rollout": rollout,
        "eval": {"kind": "none"},
    }
    return with_overrides(config, settings)


def posttrain_worker(config: dict, warmup_steps: int) -> dict:
    """Train ``config`` (a RunConfig as a dict); step durations from ``metrics.jsonl``, completion token counts
    from ``samples.jsonl``."""
    run_config = RunConfig.model_validate(config)
    train(run_config)
    steps = [m for m in read_metrics(run_config.run_dir / "metrics.jsonl") if "loss" in m]
    lengths: dict[int, list[int]] = defaultdict(list)
    for row in read_metrics(run_config.run_dir / "samples.jsonl"):
        lengths[row["step"]].append(row["tokens"])
    figures = generation_figures([m["seconds_per_step"] for m in steps], [lengths[s] for s in sorted(lengths)],
                                 warmup_steps)
    return {**figures, **peak_memory(), "final_loss": steps[-1]["loss"]}


def summarize_on_policy(runs: dict[str, list[dict]], settings: dict) -> dict:
    """:func:`~posttrain.bench.harness.summarize` plus the generation figures and the step-throughput ratio."""
    summary = summarize(runs, "posttrain", "trl", settings)
    for side in ("posttrain", "trl"):
        results = runs[side]
        for key in ("generated_tokens_per_s", "mean_completion_length"):
            summary[side][key] = statistics.median(r[key] for r in results)
    summary["trl_generation"] = trl_generation(settings)
    summary["ratio_step_throughput"] = summary["trl"]["seconds_per_step"] / summary["posttrain"]["seconds_per_step"]
    return summary
