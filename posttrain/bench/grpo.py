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

from posttrain.bench import grpo_posttrain
from posttrain.bench.harness import BenchOptions, alternate
from posttrain.bench.on_policy import check_on_policy_options, prepare_benchmark, summarize_on_policy
from posttrain.bench.posttrain_side import check_posttrain_set, check_run_config
from posttrain.errors import ConfigError

# Sampling settings shared by both sides (TRL 1.16's GRPOConfig defaults; posttrain's rl defaults).
TEMPERATURE = 1.0
TOP_P = 1.0


class GrpoBenchOptions(BenchOptions):
    """``posttrain bench grpo``: ``prompts`` per step, ``num_generations`` completions each of at most
    ``max_completion_length`` tokens; ``gradient_checkpointing`` None runs each side at its own default;
    ``posttrain_set`` (``key.sub=value``) changes posttrain's run config only; ``trl_vllm`` makes TRL sample with
    its colocated vLLM engine instead of HF ``generate``."""

    prompts: int = 1
    num_generations: int = 8
    max_completion_length: int = 64
    gradient_checkpointing: bool | None = None
    trl_vllm: bool = False


def run_grpo_benchmark(options: GrpoBenchOptions) -> dict:
    """Run both sides ``repeats`` times, alternated, and summarize (medians over repeats, ratios).

    ``gradient_checkpointing=None`` runs each side at its own default (posttrain off, TRL on).
    ``posttrain_set`` (``key.sub=value``) changes posttrain's run config only, e.g. ``rollout.dtype=bfloat16``.
    """
    check_on_policy_options(options, "GRPO")
    if options.num_generations < 2:
        raise ConfigError(
            f"must be at least 2, got {options.num_generations}: a group of one "
            "completion has no spread to compute an advantage from",
            where="--num-generations",
            fix="pass --num-generations 2 or more (the reference setting is 8)",
        )
    overrides = check_posttrain_set(options.posttrain_set)
    model_dir, workdir, data_path = prepare_benchmark(options.model, "grpo",
                                                      (options.steps + options.warmup_steps) * options.prompts)
    settings = {
        "model": model_dir,
        "data": str(data_path),
        "steps": options.steps,
        "warmup_steps": options.warmup_steps,
        "prompts": options.prompts,
        "num_generations": options.num_generations,
        "max_completion_length": options.max_completion_length,
        "temperature": TEMPERATURE,
        "top_p": TOP_P,
        "lr": options.lr,
        "loss": "dapo",
        "beta": 0.0,
        "seed": 0,
        "workdir": str(workdir),
        "dtype": "float32",
        "device": options.device,
        "gradient_checkpointing": options.gradient_checkpointing,
        "posttrain_set": overrides,
        "trl_vllm": options.trl_vllm,
    }
    check_run_config(grpo_posttrain.run_config(settings))
    runs = alternate(
        {
            "posttrain": ("posttrain.bench.grpo_posttrain", settings),
            "trl": ("posttrain.bench.grpo_trl", settings),
        },
        options.repeats,
    )
    return summarize_on_policy(runs, settings)
