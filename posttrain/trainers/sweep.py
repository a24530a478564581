"""``posttrain sweep``: run a recipe over a grid of overrides, one run after another, and tabulate.

Each grid axis is ``key=v1,v2,...``; every combination becomes one run named
``<recipe name>-<key>-<value>-...``. The summary groups runs that differ only in ``seed`` and
reports the mean and (sample) standard deviation of each final evaluation metric.

Paths follow :mod:`posttrain.recipe_paths`: those in the recipe are relative to its folder, those in the grid
values and overrides (command-line arguments) to the working directory.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.trainers.run import train
from posttrain.trainers.run_log import read_metrics


def parse_axis(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    if not sep or not values:
        raise ConfigError(f"grid axis {text!r} is not of the form key=v1,v2", fix="e.g. --grid sft.loss=nll,profit")
    return key.strip(), [v.strip() for v in values.split(",") if v.strip()]


def grid_runs(recipe: Path, axes: list[str], overrides: list[str]) -> list[tuple[str, list[str]]]:
    """``(run name, overrides)`` of every combination of the axes."""
    parsed = [parse_axis(axis) for axis in axes]
    base = load_config(recipe, overrides)
    runs = []
    for values in itertools.product(*(vals for _, vals in parsed)):
        pairs = [(key, value) for (key, _), value in zip(parsed, values, strict=True)]
        suffix = "-".join(f"{key.split('.')[-1]}{value}" for key, value in pairs)
        name = f"{base.name}-{suffix}" if suffix else base.name
        runs.append((name, [*overrides, *(f"{key}={value}" for key, value in pairs), f"name={name}"]))
    return runs


def final_eval(run_dir: Path) -> dict[str, float]:
    """The last evaluation record of a run (keys without the ``eval/`` prefix)."""
    evals = [m for m in read_metrics(run_dir / "metrics.jsonl") if any(k.startswith("eval/") for k in m)]
    if not evals:
        return {}
    return {k[len("eval/"):]: v for k, v in evals[-1].items() if k.startswith("eval/")}


def summarize_runs(run_dirs: list[Path]) -> list[dict]:
    """Mean ± std of final eval metrics over runs whose configs differ only in the seed."""
    import yaml

    groups: dict[str, list[dict]] = {}
    labels: dict[str, dict] = {}
    for run_dir in run_dirs:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config.pop("seed", None)
        config.pop("name", None)
        key = json.dumps(config, sort_keys=True)
        groups.setdefault(key, []).append(final_eval(run_dir))
        labels.setdefault(key, {"runs": []})["runs"].append(run_dir.name)
    rows = []
    for key, results in groups.items():
        row = {"runs": labels[key]["runs"], "n": len(results)}
        for metric in sorted({m for r in results for m in r}):
            values = [r[metric] for r in results if metric in r]
            row[f"{metric}_mean"] = statistics.mean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def run_sweep(recipe: Path, axes: list[str], overrides: list[str], skip_done: bool = True) -> list[Path]:
    run_dirs = []
    for name, run_overrides in grid_runs(recipe, axes, overrides):
        config = load_config(recipe, run_overrides)
        done = final_eval(config.run_dir) and (config.run_dir / "report.html").exists()
        if not (skip_done and done):
            print(f"=== {name}", flush=True)
            train(config)
        run_dirs.append(config.run_dir)
    return run_dirs
