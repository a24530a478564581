"""Benchmark worker: posttrain's GRPO (``method: grpo``) on the benchmark settings (one JSON line out).

Step durations are the ``seconds_per_step`` of ``metrics.jsonl`` (rollouts through the optimizer step);
completion token counts are the ``tokens`` of each row of ``samples.jsonl``, grouped by step.
"""

from __future__ import annotations

import json
import sys

from posttrain.bench.on_policy import posttrain_config, posttrain_worker


def run_config(settings: dict) -> dict:
    """The run: ``prompts × G`` completions a step, one update, DAPO, no KL; activation checkpointing only when the
    benchmark sets it (otherwise posttrain's default, or what ``train.memory`` turns on); then the ``--set``
    overrides."""
    prompts, group = settings["prompts"], settings["num_generations"]
    rollout = {
        "prompts_per_step": prompts,
        "samples_per_prompt": group,
        "temperature": settings["temperature"],
        "top_p": settings["top_p"],
        "max_new_tokens": settings["max_completion_length"],
    }
    section = {
        "updates_per_step": 1,
        "loss": settings["loss"],
        "beta": settings["beta"],
        "rewards": {"functions": [{"name": "math"}]},
    }
    gradient_checkpointing = settings["gradient_checkpointing"]
    return posttrain_config(settings, "grpo", prompts * group, section, rollout,
                            **({} if gradient_checkpointing is None else {"gradient_checkpointing": gradient_checkpointing}))


def main(settings: dict) -> dict:
    return posttrain_worker(run_config(settings), settings["warmup_steps"])


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
