"""Shared benchmark plumbing: run each side in a fresh process, alternate sides, summarize.

Each side is a worker module run as ``python -m MODULE JSON_SETTINGS`` that prints one JSON object
on its last stdout line with ``tokens_per_s``, ``seconds_per_step`` and ``peak_rss_mb`` (on CUDA also
``peak_cuda_mb``, the most GPU memory torch held allocated). Sides run
one after another (never concurrently), in the order A, B, B, A, A, B, ... so that slow drift of
the machine affects both equally. The summary takes the median of each figure over repeats, and records
the host (:func:`host_info`: CPU model, core count and the instruction sets that decide whether a precision
pays — a bf16 matmul is fast with AMX and slower than fp32 without it), since figures of different hosts do
not compare.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Literal

from posttrain.errors import PosttrainError
from posttrain.rollout.options import ToolOptions


class BenchOptions(ToolOptions):
    """What every ``posttrain bench`` run takes: the peer library ``vs``, the ``model``, ``steps`` timed after
    ``warmup_steps``, ``repeats`` alternated runs per side, the constant learning rate ``lr``, the ``device``:
    ``cpu`` (float32 on both sides) or ``cuda`` (float32 weights with bf16 autocast on both sides: posttrain's
    ``train.precision=auto``, TRL's ``bf16=True``), and ``posttrain_set`` (``key.sub=value`` overrides of
    posttrain's run config only, e.g. ``train.memory=lean``)."""

    vs: str = "trl"
    device: Literal["cpu", "cuda"] = "cpu"
    model: str = "smollm2-135m"
    steps: int = 4
    repeats: int = 2
    warmup_steps: int = 1
    lr: float = 1e-6
    posttrain_set: list[str] | None = None


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_memory() -> dict[str, float]:
    """A worker's memory figures: ``peak_rss_mb``, and ``peak_cuda_mb`` (torch's peak allocated GPU memory, MiB)
    when it used CUDA."""
    import torch

    figures = {"peak_rss_mb": peak_rss_mb()}
    if torch.cuda.is_initialized():
        figures["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def check_device(device: str) -> None:
    """A :class:`PosttrainError` when the benchmark asks for CUDA on a machine without it."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PosttrainError("--device cuda was asked for, but torch sees no CUDA device here",
                                 fix="run the benchmark on a GPU machine, or with --device cpu")


def run_worker(module: str, settings: dict, timeout: float = 3600) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(settings)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise PosttrainError(f"benchmark worker {module} failed (exit {proc.returncode}):\n{tail}",
                             fix="run the worker command by hand to see the full error")
    return json.loads(lines[-1])


def alternate(sides: dict[str, tuple[str, dict]], repeats: int) -> dict[str, list[dict]]:
    """Run every side ``repeats`` times, alternating which goes first."""
    names = list(sides)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            module, settings = sides[name]
            runs[name].append(run_worker(module, settings))
    return runs


# CPU flags that change which precision and kernels are fast
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def host_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The benchmark host: CPU model, cores this process may use, and which of :data:`PRECISION_FLAGS` it has."""
    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)),
            "flags": [flag for flag in PRECISION_FLAGS if flag in flags]}


def summarize(runs: dict[str, list[dict]], ours: str, peer: str, settings: dict) -> dict:
    def side(name: str) -> dict:
        results = runs[name]
        return {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in results),
            "seconds_per_step": statistics.median(r["seconds_per_step"] for r in results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            **({"peak_cuda_mb": max(r["peak_cuda_mb"] for r in results)}
               if all("peak_cuda_mb" in r for r in results) else {}),
            "final_loss": results[-1].get("final_loss"),
            "runs": results,
        }

    summary = {ours: side(ours), peer: side(peer), "settings": settings, "host": host_info()}
    summary["ratio_tokens_per_s"] = summary[ours]["tokens_per_s"] / summary[peer]["tokens_per_s"]
    summary["ratio_peak_rss"] = summary[ours]["peak_rss_mb"] / summary[peer]["peak_rss_mb"]
    if "peak_cuda_mb" in summary[ours] and "peak_cuda_mb" in summary[peer]:
        summary["ratio_peak_cuda"] = summary[ours]["peak_cuda_mb"] / summary[peer]["peak_cuda_mb"]
    return summary


def print_and_save(result: dict, out: Path | None) -> None:
    """Print a benchmark result as indented JSON and, with ``out``, write the same text there."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        Path(out).write_text(text + "\n", encoding="utf-8")
