"""``posttrain bench sft --vs trl``: the same SFT steps in posttrain and in TRL's ``SFTTrainer``.

Both sides train the same model directory, in float32 on the CPU (bf16 on CUDA is not used here),
on the same conversational prompt/completion examples, with the same per-device batch size,
maximum length, number of optimizer steps, learning rate and schedule, loss on completion tokens.
Throughput counts real (non-padding) tokens fed to the model per second over the timed steps
(the first ``warmup_steps`` are run but not timed).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from posttrain.bench import sft_posttrain
from posttrain.bench.harness import BenchOptions, alternate, check_device, summarize
from posttrain.bench.posttrain_side import check_posttrain_set, check_run_config
from posttrain.data import make_task
from posttrain.errors import PosttrainError
from posttrain.models.loader import resolve_source


def benchmark_records(n: int, seed: int = 0) -> list[dict]:
    """GSM8K-sized conversational examples from the synthetic arithmetic task (hardest level)."""
    records = make_task("arithmetic", n, seed, levels=[3])
    return [{"prompt": [{"role": "user", "content": r["question"]}],
             "completion": [{"role": "assistant", "content": r["answer"]}]} for r in records]


class SftBenchOptions(BenchOptions):
    """``posttrain bench sft``: ``batch_size`` examples of at most ``max_length`` tokens per step;
    ``gradient_checkpointing`` None runs each side at its own default."""

    steps: int = 6
    batch_size: int = 8
    max_length: int = 256
    lr: float = 1e-5
    gradient_checkpointing: bool | None = None


def run_sft_benchmark(options: SftBenchOptions) -> dict:
    """``gradient_checkpointing=None`` runs each side at its own default (posttrain off, TRL on)."""
    if options.vs != "trl":
        raise PosttrainError(f"unknown peer {options.vs!r} for the SFT benchmark", fix="use --vs trl")
    overrides = check_posttrain_set(options.posttrain_set)

    check_device(options.device)
    source = resolve_source(options.model)
    if source.kind != "directory":
        raise PosttrainError(f"the SFT benchmark needs a model directory both libraries can load; {options.model!r} is a {source.kind}",
                             fix="pass smollm2-135m or a local HF model directory")
    model_dir = source.location
    workdir = Path(tempfile.mkdtemp(prefix="posttrain-bench-sft-"))
    data_path = workdir / "train.jsonl"
    records = benchmark_records((options.steps + options.warmup_steps) * options.batch_size)
    data_path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    settings = {"model": model_dir, "data": str(data_path), "steps": options.steps,
                "warmup_steps": options.warmup_steps, "batch_size": options.batch_size,
                "max_length": options.max_length, "lr": options.lr, "workdir": str(workdir),
                "dtype": "float32", "device": options.device, "gradient_checkpointing": options.gradient_checkpointing,
                "posttrain_set": overrides}
    check_run_config(sft_posttrain.run_config(settings))
    runs = alternate({"posttrain": ("posttrain.bench.sft_posttrain", settings),
                      "trl": ("posttrain.bench.sft_trl", settings)}, options.repeats)
    return summarize(runs, "posttrain", "trl", settings)
