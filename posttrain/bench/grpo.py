"""``posttrain bench grpo --vs trl``: the same GRPO steps in posttrain and in TRL 1.16's ``GRPOTrainer``.

Both sides train the same model directory in float32 on the CPU with the same settings per step:
``prompts`` conversational prompts (level-1 synthetic arithmetic, drawn in the same order), ``G`` sampled
completions per prompt of at most ``max_completion_length`` tokens at temperature 1 and top-p 1, the
``math`` reward (posttrain's :func:`~posttrain.rewards.builtin.math_reward` on both sides), the DAPO loss
with no KL term (β = 0), a constant learning rate and one optimizer update per generation batch of
``prompts × G`` completions, taken as one micro-batch.

Per side, over the timed steps (the first ``warmup_steps`` are run but not timed)::

    seconds_per_step       = mean duration of a step (generation, rewards, loss, backward, optimizer)
    generated_tokens_per_s = Σ completion tokens generated / Σ step durations

A completion's tokens run through its end-of-sequence token when it has one, as both libraries count
them. ``tokens_per_s`` repeats ``generated_tokens_per_s`` so that the shared
:func:`~posttrain.bench.harness.summarize` applies. The ratios are posttrain ÷ TRL, except
``ratio_step_throughput`` = TRL's s/step ÷ posttrain's s/step (steps per second, posttrain ÷ TRL).

Sampling is random on both sides, so the completions (and hence their lengths) differ between the
libraries; each side's ``mean_completion_length`` is reported with the timings to judge that.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from posttrain.bench.harness import alternate, summarize
from posttrain.errors import ConfigError, PosttrainError

# Sampling settings shared by both sides (TRL 1.16's GRPOConfig defaults; posttrain's rl defaults).
TEMPERATURE = 1.0
TOP_P = 1.0


def benchmark_prompts(n: int, seed: int = 0) -> list[dict]:
    """``n`` conversational level-1 arithmetic prompts, each with its reference answer for the math reward."""
    from posttrain.data import make_task

    records = make_task("arithmetic", n, seed, levels=[1])
    return [
        {"prompt": [{"role": "user", "content": r["question"]}], "reference": r["reference"]} for r in records
    ]


def _check_settings(
    steps: int,
    warmup_steps: int,
    prompts: int,
    num_generations: int,
    max_completion_length: int,
    repeats: int,
) -> None:
    positive = {
        "--steps": steps,
        "--prompts": prompts,
        "--max-completion-length": max_completion_length,
        "--repeats": repeats,
    }
    for option, value in positive.items():
        if value < 1:
            raise ConfigError(
                f"must be at least 1, got {value}", where=option, fix=f"pass {option} 1 or more"
            )
    if warmup_steps < 0:
        raise ConfigError(
            f"must be 0 or more, got {warmup_steps}",
            where="--warmup-steps",
            fix="pass --warmup-steps 0 to time every step",
        )
    if num_generations < 2:
        raise ConfigError(
            f"must be at least 2, got {num_generations}: a group of one "
            "completion has no spread to compute an advantage from",
            where="--num-generations",
            fix="pass --num-generations 2 or more (the reference setting is 8)",
        )


def run_grpo_benchmark(
    vs: str = "trl",
    model: str = "smollm2-135m",
    steps: int = 4,
    prompts: int = 1,
    num_generations: int = 8,
    max_completion_length: int = 64,
    repeats: int = 2,
    warmup_steps: int = 1,
    lr: float = 1e-6,
    gradient_checkpointing: bool | None = None,
) -> dict:
    """Run both sides ``repeats`` times, alternated, and summarize (medians over repeats, ratios).

    ``gradient_checkpointing=None`` runs each side at its own default (posttrain off, TRL on).
    """
    if vs != "trl":
        raise PosttrainError(f"unknown peer {vs!r} for the GRPO benchmark", fix="use --vs trl")
    _check_settings(steps, warmup_steps, prompts, num_generations, max_completion_length, repeats)
    from posttrain.models.loader import resolve_source

    source = resolve_source(model)
    if source.kind != "directory":
        raise PosttrainError(
            f"the GRPO benchmark needs a model directory both libraries can load; {model!r} is a "
            f"{source.kind}",
            fix="pass smollm2-135m or a local HF model directory",
        )
    workdir = Path(tempfile.mkdtemp(prefix="posttrain-bench-grpo-"))
    data_path = workdir / "prompts.jsonl"
    records = benchmark_prompts((steps + warmup_steps) * prompts)
    data_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = {
        "model": source.location,
        "data": str(data_path),
        "steps": steps,
        "warmup_steps": warmup_steps,
        "prompts": prompts,
        "num_generations": num_generations,
        "max_completion_length": max_completion_length,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "lr": lr,
        "loss": "dapo",
        "beta": 0.0,
        "seed": 0,
        "workdir": str(workdir),
        "dtype": "float32",
        "device": "cpu",
        "gradient_checkpointing": gradient_checkpointing,
    }
    runs = alternate(
        {
            "posttrain": ("posttrain.bench.grpo_posttrain", settings),
            "trl": ("posttrain.bench.grpo_trl", settings),
        },
        repeats,
    )
    return summarize_grpo(runs, settings)


def step_figures(durations: list[float], completion_lengths: list[list[int]], warmup_steps: int) -> dict:
    """A worker's figures from every step's duration and the token count of each completion it generated."""
    timed_seconds = durations[warmup_steps:]
    timed_lengths = [n for step in completion_lengths[warmup_steps:] for n in step]
    generated_per_s = sum(timed_lengths) / sum(timed_seconds)
    return {
        "seconds_per_step": statistics.mean(timed_seconds),
        "generated_tokens_per_s": generated_per_s,
        "tokens_per_s": generated_per_s,
        "generated_tokens": sum(timed_lengths),
        "mean_completion_length": statistics.mean(timed_lengths),
        "steps": len(durations),
        "completions_per_step": [len(step) for step in completion_lengths],
    }


def summarize_grpo(runs: dict[str, list[dict]], settings: dict) -> dict:
    """:func:`~posttrain.bench.harness.summarize` plus the generation figures and the step-throughput ratio."""
    summary = summarize(runs, "posttrain", "trl", settings)
    for side in ("posttrain", "trl"):
        results = runs[side]
        summary[side]["generated_tokens_per_s"] = statistics.median(
            r["generated_tokens_per_s"] for r in results
        )
        summary[side]["mean_completion_length"] = statistics.median(
            r["mean_completion_length"] for r in results
        )
    summary["ratio_step_throughput"] = (
        summary["trl"]["seconds_per_step"] / summary["posttrain"]["seconds_per_step"]
    )
    return summary
