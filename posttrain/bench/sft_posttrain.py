"""Benchmark worker: posttrain's SFT loop on the benchmark settings (one JSON line out)."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile

from posttrain.bench.harness import peak_memory
from posttrain.bench.posttrain_side import with_overrides
from posttrain.config import RunConfig
from posttrain.trainers.run import train
from posttrain.trainers.run_log import read_metrics


def run_config(settings: dict) -> dict:
    """The run: ``batch_size`` examples a step, cosine lr without warm-up, activation checkpointing only when the
    benchmark sets it (otherwise posttrain's default, or what ``train.memory`` turns on), then the ``--set``
    overrides."""
    gradient_checkpointing = settings["gradient_checkpointing"]
    return with_overrides({
        "name": "bench", "output_dir": tempfile.mkdtemp(dir=settings["workdir"], prefix="posttrain-"), "seed": 0,
        "model": {"name": settings["model"], "dtype": settings["dtype"], "device": settings["device"]},
        "data": {"train": {"path": settings["data"]}, "max_length": settings["max_length"]},
        "optim": {"lr": settings["lr"], "schedule": "cosine", "warmup_ratio": 0.0},
        "train": {"batch_size": settings["batch_size"], "max_steps": settings["steps"] + settings["warmup_steps"],
                  "save_final": False, "eval_at_start": False,
                  **({} if gradient_checkpointing is None else {"gradient_checkpointing": gradient_checkpointing})},
        "eval": {"kind": "none"},
    }, settings)


def main(settings: dict) -> dict:
    config = RunConfig.model_validate(run_config(settings))
    train(config)
    steps = [m for m in read_metrics(config.run_dir / "metrics.jsonl") if "loss" in m]
    timed = steps[settings["warmup_steps"]:]
    seconds = sum(m["seconds_per_step"] for m in timed)
    return {"tokens_per_s": sum(m["tokens"] for m in timed) / seconds,
            "seconds_per_step": statistics.mean(m["seconds_per_step"] for m in timed),
            **peak_memory(), "final_loss": steps[-1]["loss"], "steps": len(steps)}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
