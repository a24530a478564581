"""``posttrain bench distill --vs trl``: TS-OPSD steps in posttrain against TRL 1.16's ``DistillationTrainer``.

Both sides train the same model directory in float32 on the CPU with the same settings per step: ``prompts``
conversational prompts (level-1 synthetic arithmetic, drawn in the same order), one completion each of at most
``max_completion_length`` tokens sampled from the current student at temperature 1, then the forward KL
``KL(q ‖ p_θ)`` over the completion tokens against a teacher at ``teacher_temperature``, one optimizer update.

* posttrain: ``method: distill`` with ``teacher: self`` — the teacher is the student's own logits from the same
  forward pass, detached and divided by T: one forward per step and no second copy of the weights.
* TRL: ``DistillationTrainer`` (its stable on-policy distillation trainer) with the same model directory as
  ``teacher_model`` (a second, frozen copy: the same weights as the student at step 0), ``beta = 0`` (forward KL),
  ``temperature = T`` for the loss and sampling at temperature 1 through ``generation_kwargs``. TRL divides
  both sides' logits by its loss temperature where posttrain divides only the teacher's; the work per token is
  the same (one extra scalar division), so timings compare.

The figures per side and the ratios are those of :mod:`posttrain.bench.on_policy`.
"""

from __future__ import annotations

from posttrain.bench import distill_posttrain
from posttrain.bench.harness import BenchOptions, alternate
from posttrain.bench.on_policy import check_on_policy_options, prepare_benchmark, summarize_on_policy
from posttrain.bench.posttrain_side import check_posttrain_set, check_run_config
from posttrain.errors import ConfigError


class DistillBenchOptions(BenchOptions):
    """``posttrain bench distill``: ``prompts`` per step, one completion each of at most ``max_completion_length``
    tokens, the self-teacher's ``teacher_temperature``; ``posttrain_set`` (``key.sub=value``) changes posttrain's
    run config only; ``trl_vllm`` makes TRL sample with its colocated vLLM engine instead of HF ``generate``."""

    prompts: int = 8
    max_completion_length: int = 64
    teacher_temperature: float = 2.0
    trl_vllm: bool = False


def run_distill_benchmark(options: DistillBenchOptions) -> dict:
    """Run both sides ``repeats`` times, alternated, and summarize (medians over repeats, ratios).

    ``posttrain_set`` (``key.sub=value``) changes posttrain's run config only, e.g. ``rollout.dtype=bfloat16``.
    """
    check_on_policy_options(options, "distillation")
    if not options.teacher_temperature > 0:
        raise ConfigError(f"must be > 0, got {options.teacher_temperature}", where="--teacher-temperature",
                          fix="pass a temperature > 0 (TS-OPSD reheats with 1.5 or 2.0)")
    overrides = check_posttrain_set(options.posttrain_set)
    model_dir, workdir, data_path = prepare_benchmark(options.model, "distill",
                                                      (options.steps + options.warmup_steps) * options.prompts)
    settings = {
        "model": model_dir, "data": str(data_path), "steps": options.steps, "warmup_steps": options.warmup_steps,
        "prompts": options.prompts, "max_completion_length": options.max_completion_length, "temperature": 1.0,
        "teacher_temperature": options.teacher_temperature, "divergence": "forward_kl", "lr": options.lr, "seed": 0,
        "workdir": str(workdir), "dtype": "float32", "device": options.device,
        "posttrain_set": overrides, "trl_vllm": options.trl_vllm,
    }
    check_run_config(distill_posttrain.run_config(settings))
    runs = alternate({"posttrain": ("posttrain.bench.distill_posttrain", settings),
                      "trl": ("posttrain.bench.distill_trl", settings)}, options.repeats)
    return summarize_on_policy(runs, settings)
