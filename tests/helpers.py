"""Small shared builders for tests that train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from posttrain.config import RunConfig, load_config


def tiny_overrides(run_root: Path, name: str, **extra) -> list[str]:
    """Overrides that make a quick run of the tiny random model on a small arithmetic set."""
    values = {
        "name": name, "output_dir": str(run_root), "model.name": "tiny-random",
        "data.train": "{task: arithmetic, n: 64, seed: 0, levels: [1]}", "data.max_length": 320,
        "train.batch_size": 4, "train.max_steps": 6, "train.save_every": 0, "train.eval_at_start": False,
        "eval.kind": "none", "sft.loss": "nll", "optim.lr": 1e-3, "optim.warmup_ratio": 0.0,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def tiny_config(run_root: Path, name: str, **extra) -> RunConfig:
    return load_config(None, tiny_overrides(run_root, name, **extra))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def train_steps(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m}


def posttrain_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "posttrain.cli", *args]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(posttrain_command(*args), capture_output=True, text=True, timeout=timeout)


def step_gradients(model, method, work) -> tuple[float, list]:
    """Run a method's loss and backward over one step's micro-batches: the summed loss and every gradient."""
    import torch

    model.zero_grad(set_to_none=True)
    total = 0.0
    for batch in work.micro_batches:
        loss, _ = method.loss(model, batch, work.totals)
        loss.backward()
        total += float(loss.detach())
    return total, [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def assert_same_step_gradients(model, reference: tuple[float, list], methods, works) -> None:
    """Each (method, work) gives the reference step's summed loss and gradients (float64 tolerances), and the
    reference gradient is not trivially zero."""
    import pytest
    import torch

    loss_whole, grads_whole = reference
    for method, work in zip(methods, works, strict=True):
        loss, grads = step_gradients(model, method, work)
        assert loss == pytest.approx(loss_whole, rel=1e-10)
        for a, b in zip(grads, grads_whole, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    assert max(float(g.abs().max()) for g in grads_whole) > 1e-4


class PicklePayload:
    """Unpickling this runs ``touch marker`` — what a crafted checkpoint file would do with a real command."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
