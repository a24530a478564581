"""``posttrain bench grpo --vs trl``: the same GRPO steps in posttrain and in TRL 1.16's ``GRPOTrainer``.

Both sides train the same model directory in float32 on the CPU with the same settings per step:
``prompts`` conversational prompts (level-1 synthetic arithmetic, drawn in the same order), ``G`` sampled
completions per prompt of at most ``max_completion_length`` tokens at temperature 1 and top-p 1, the
``math`` reward (posttrain's :func:`~posttrain.rewards.builtin.math_reward` on both sides), the DAPO loss
with no KL term (β = 0), a constant learning rate and one optimizer update per generation batch of
``prompts × G`` completions, taken as one micro-batch.

The figures per side and the ratios are those of :mod:`posttrain.bench.on_policy`. A completion's tokens
run through its end-of-sequence token when it has one, as both libraries count them.

Sampling is random on both sides, so the completions (and hence their lengths) differ between the
libraries; each side's ``mean_completion_length`` is reported with the timings to judge that.
"""

from __future__ import annotations

from posttrain.bench.harness import alternate
from posttrain.bench.on_policy import (
    check_counts,
    check_posttrain_set,
    prepare_benchmark,
    summarize_on_policy,
)
from posttrain.errors import ConfigError, PosttrainError

# Sampling settings shared by both sides (TRL 1.16's GRPOConfig defaults; posttrain's rl defaults).
TEMPERATURE = 1.0
TOP_P = 1.0


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
    posttrain_set: list[str] = (),
) -> dict:
    """Run both sides ``repeats`` times, alternated, and summarize (medians over repeats, ratios).

    ``gradient_checkpointing=None`` runs each side at its own default (posttrain off, TRL on).
    ``posttrain_set`` (``key.sub=value``) changes posttrain's run config only, e.g. ``rl.rollout_dtype=bfloat16``.
    """
    if vs != "trl":
        raise PosttrainError(f"unknown peer {vs!r} for the GRPO benchmark", fix="use --vs trl")
    check_counts(steps=(steps, 1), prompts=(prompts, 1), max_completion_length=(max_completion_length, 1),
                 repeats=(repeats, 1), warmup_steps=(warmup_steps, 0))
    if num_generations < 2:
        raise ConfigError(
            f"must be at least 2, got {num_generations}: a group of one "
            "completion has no spread to compute an advantage from",
            where="--num-generations",
            fix="pass --num-generations 2 or more (the reference setting is 8)",
        )
    overrides = check_posttrain_set(posttrain_set)
    model_dir, workdir, data_path = prepare_benchmark(model, "grpo", (steps + warmup_steps) * prompts)
    settings = {
        "model": model_dir,
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
        "posttrain_set": overrides,
    }
    runs = alternate(
        {
            "posttrain": ("posttrain.bench.grpo_posttrain", settings),
            "trl": ("posttrain.bench.grpo_trl", settings),
        },
        repeats,
    )
    return summarize_on_policy(runs, settings)
