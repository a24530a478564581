"""Benchmark worker: posttrain's TS-OPSD (``method: distill``, live self-teacher) on the benchmark settings."""

from __future__ import annotations

import json
import sys

from posttrain.bench.on_policy import posttrain_config, posttrain_worker


def run_config(settings: dict) -> dict:
    """The run: ``prompts`` completions a step, forward KL against the live self-teacher; then the ``--set``
    overrides."""
    rollout = {
        "prompts_per_step": settings["prompts"],
        "samples_per_prompt": 1,
        "temperature": settings["temperature"],
        "max_new_tokens": settings["max_completion_length"],
    }
    section = {
        "teacher": "self",
        "teacher_temperature": settings["teacher_temperature"],
        "divergence": settings["divergence"],
    }
    return posttrain_config(settings, "distill", settings["prompts"], section, rollout)


def main(settings: dict) -> dict:
    return posttrain_worker(run_config(settings), settings["warmup_steps"])


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
