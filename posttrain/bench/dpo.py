"""``posttrain bench dpo --vs trl``: the same DPO steps in posttrain and in TRL's ``DPOTrainer``.

Both sides train the same model directory in float32 on the CPU on the same synthetic preference pairs (a
correct arithmetic solution against the same solution with one injected error,
:func:`posttrain.judges.make_preference_pairs`), ``(steps + warmup_steps) × batch_size`` of them, so one epoch
covers every pair once on each side (the order within it is each library's own shuffle). Same per-device batch,
maximum length, optimizer steps, learning rate (constant), sigmoid DPO with the same β, and reference
log-probs precomputed before training on both sides (posttrain: cached before the first step; TRL:
``precompute_ref_log_probs=True``, done in the trainer's constructor). Only training steps are timed: posttrain's
per-step clock starts after the precompute, TRL's timer starts at its first ``on_step_begin``. Throughput counts
real (non-padding) tokens of the chosen and rejected rows per second over the timed steps (the first
``warmup_steps`` are run but not timed).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from posttrain.bench.harness import alternate, summarize
from posttrain.errors import PosttrainError


def benchmark_pairs(n: int, seed: int = 0) -> list[dict]:
    """Conversational preference pairs (levels 2–3: multi-step solutions)."""
    from posttrain.judges.pairs import make_preference_pairs

    return [{key: pair[key] for key in ("prompt", "chosen", "rejected")}
            for pair in make_preference_pairs(n, seed, levels=(2, 3))]


def run_dpo_benchmark(vs: str = "trl", model: str = "smollm2-135m", steps: int = 4, batch_size: int = 4,
                      max_length: int = 256, repeats: int = 2, warmup_steps: int = 1, lr: float = 1e-6,
                      beta: float = 0.1) -> dict:
    if vs != "trl":
        raise PosttrainError(f"unknown peer {vs!r} for the DPO benchmark", fix="use --vs trl")
    from posttrain.models.loader import resolve_source

    source = resolve_source(model)
    if source.kind != "directory":
        raise PosttrainError(f"the DPO benchmark needs a model directory both libraries can load; {model!r} is a "
                             f"{source.kind}", fix="pass smollm2-135m or a local HF model directory")
    workdir = Path(tempfile.mkdtemp(prefix="posttrain-bench-dpo-"))
    data_path = workdir / "pairs.jsonl"
    pairs = benchmark_pairs((steps + warmup_steps) * batch_size)
    data_path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs), encoding="utf-8")
    settings = {"model": source.location, "data": str(data_path), "steps": steps, "warmup_steps": warmup_steps,
                "batch_size": batch_size, "max_length": max_length, "lr": lr, "beta": beta, "workdir": str(workdir),
                "dtype": "float32", "device": "cpu"}
    runs = alternate({"posttrain": ("posttrain.bench.dpo_posttrain", settings),
                      "trl": ("posttrain.bench.dpo_trl", settings)}, repeats)
    return summarize(runs, "posttrain", "trl", settings)
