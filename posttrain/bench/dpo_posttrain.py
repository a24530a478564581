"""Benchmark worker: posttrain's DPO (``method: dpo``, sigmoid, reference precomputed) on the benchmark settings.

The reference log-probs of every pair are computed while the DPO method is built, before the trainer loop
starts; the step durations read back from ``metrics.jsonl`` are those of the training steps only.
"""

from __future__ import annotations

import json
import sys
import tempfile

from posttrain.bench.harness import peak_memory
from posttrain.bench.posttrain_side import with_overrides
from posttrain.bench.steps import token_figures
from posttrain.config import RunConfig
from posttrain.trainers.run import train
from posttrain.trainers.run_log import read_metrics


def run_config(settings: dict) -> dict:
    """The run: ``batch_size`` pairs an optimizer step, constant lr; ``micro_batch_tokens`` splits a step's pairs
    into forward passes of at most that many padded tokens (None: posttrain's default; 0: one pass, as TRL; the
    gradient is the same);
    clipping at norm 1 is posttrain's default (turned off by ``--set train.memory=lean``); then the ``--set``
    overrides."""
    budget = {} if settings["micro_batch_tokens"] is None else {"micro_batch_tokens": settings["micro_batch_tokens"]}
    return with_overrides({
        "name": "bench", "output_dir": tempfile.mkdtemp(dir=settings["workdir"], prefix="posttrain-"),
        "seed": settings["seed"], "method": "dpo",
        "model": {"name": settings["model"], "dtype": settings["dtype"], "device": settings["device"]},
        "data": {"train": {"path": settings["data"]}, "max_length": settings["max_length"]},
        "optim": {"lr": settings["lr"], "schedule": settings["schedule"], "warmup_ratio": 0.0},
        "train": {"batch_size": settings["batch_size"], "max_steps": settings["steps"] + settings["warmup_steps"],
                  "save_final": False, "eval_at_start": False, **budget},
        "preference": {"kind": settings["loss"], "beta": settings["beta"], "reference": "precompute"},
        "eval": {"kind": "none"},
    }, settings)


def main(settings: dict) -> dict:
    config = RunConfig.model_validate(run_config(settings))
    train(config)
    steps = [m for m in read_metrics(config.run_dir / "metrics.jsonl") if "loss" in m]
    figures = token_figures([m["seconds_per_step"] for m in steps], [int(m["tokens"]) for m in steps],
                           [m["loss"] for m in steps], settings["warmup_steps"])
    return {**figures, **peak_memory()}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
