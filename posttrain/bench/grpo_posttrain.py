"""Benchmark worker: posttrain's GRPO (``method: grpo``) on the benchmark settings (one JSON line out).

Step durations are the ``seconds_per_step`` of ``metrics.jsonl`` (rollouts through the optimizer step);
completion token counts are the ``tokens`` of each row of ``samples.jsonl``, grouped by step.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict

from posttrain.bench.grpo import step_figures
from posttrain.bench.harness import peak_rss_mb


def main(settings: dict) -> dict:
    from posttrain.config import RunConfig
    from posttrain.trainers.run import train
    from posttrain.trainers.run_log import read_metrics

    run_root = tempfile.mkdtemp(dir=settings["workdir"], prefix="posttrain-")
    prompts, group = settings["prompts"], settings["num_generations"]
    config = RunConfig.model_validate(
        {
            "name": "bench",
            "output_dir": run_root,
            "seed": settings["seed"],
            "method": "grpo",
            "model": {"name": settings["model"], "dtype": settings["dtype"], "device": settings["device"]},
            "data": {"train": {"path": settings["data"]}},
            "optim": {"lr": settings["lr"], "schedule": "constant", "warmup_ratio": 0.0},
            "train": {
                "batch_size": prompts * group,
                "max_steps": settings["steps"] + settings["warmup_steps"],
                "save_final": False,
                "eval_at_start": False,
                "gradient_checkpointing": bool(settings["gradient_checkpointing"]),
            },
            "rl": {
                "prompts_per_step": prompts,
                "group_size": group,
                "temperature": settings["temperature"],
                "top_p": settings["top_p"],
                "max_new_tokens": settings["max_completion_length"],
                "updates_per_step": 1,
                "loss": settings["loss"],
                "beta": settings["beta"],
                "rewards": {"functions": [{"name": "math"}]},
            },
            "eval": {"kind": "none"},
        }
    )
    train(config)
    steps = [m for m in read_metrics(config.run_dir / "metrics.jsonl") if "loss" in m]
    lengths: dict[int, list[int]] = defaultdict(list)
    for row in read_metrics(config.run_dir / "samples.jsonl"):
        lengths[row["step"]].append(row["tokens"])
    figures = step_figures(
        [m["seconds_per_step"] for m in steps],
        [lengths[s] for s in sorted(lengths)],
        settings["warmup_steps"],
    )
    return {**figures, "peak_rss_mb": peak_rss_mb(), "final_loss": steps[-1]["loss"]}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
