"""Benchmark worker: posttrain's TS-OPSD (``method: distill``, live self-teacher) on the benchmark settings."""

from __future__ import annotations

import json
import sys

from posttrain.bench.on_policy import posttrain_config, posttrain_worker


def main(settings: dict) -> dict:
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
    return posttrain_worker(posttrain_config(settings, "distill", settings["prompts"], section, rollout),
                            settings["warmup_steps"])


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
