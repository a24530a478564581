"""Reading run directories: the logged metrics, their wall-clock times, the resolved config and the run's
planned length and start times (``data_summary.json``, ``history.jsonl``) of each run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from posttrain.errors import DataError, location
from posttrain.run_files import METRICS_FILE, TIME_KEY, is_number, read_metrics

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "data_summary.json"
HISTORY_FILE = "history.jsonl"


@dataclass
class RunData:
    """One run: ``series[metric]`` is a list of ``(step, value)`` in logging order.

    ``clock`` holds ``(step, epoch seconds)`` of every record that has a time; ``starts`` the epoch seconds
    of each start or resume of the run (``history.jsonl``); ``data`` what the run wrote about its training
    data and planned number of steps (``data_summary.json``; empty when absent).
    ``skipped_lines`` counts lines of ``metrics.jsonl`` that were not JSON objects (for example a line
    cut short when a run was killed); ``skipped_values`` counts logged values that were not finite
    numbers (strings, lists, NaN). Both are shown in the report.
    """

    name: str
    path: Path
    config: dict
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    clock: list[tuple[float, float]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    skipped_lines: int = 0
    skipped_values: int = 0

    def final(self, metric: str) -> float | None:
        """The last logged value of ``metric``, or None when the run never logged it."""
        points = self.series.get(metric)
        return points[-1][1] if points else None



def read_config(path: Path) -> dict:
    """The run's resolved config, or an empty dict when the run has no ``config.yaml``."""
    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DataError(
            f"config.yaml is not valid YAML: {error}",
            where=location(str(path)),
            fix="repair or remove the file",
        ) from error
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise DataError(
            "config.yaml does not hold a mapping of settings",
            where=location(str(path)),
            fix="repair or remove the file",
        )
    return config


def read_data_summary(path: Path) -> dict:
    """What the run wrote about its data and planned steps, or an empty dict when the file is absent or unreadable
    (the report shows less then; it is no reason to refuse it)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def read_starts(path: Path) -> list[float]:
    """The epoch seconds of each start and resume recorded in ``history.jsonl`` (unreadable lines and the lines that
    record a run's finish skipped)."""
    if not path.is_file():
        return []
    starts = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and is_number(record.get(TIME_KEY)) and record.get("event") != "finish":
            starts.append(float(record[TIME_KEY]))
    return sorted(starts)


def read_run(run_dir: Path, name: str) -> RunData:
    """Read one run directory; it must contain ``metrics.jsonl``."""
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise DataError(
            f"no {METRICS_FILE} in run directory {run_dir}",
            where=location(str(run_dir)),
            fix="pass the directory a training run wrote (it holds metrics.jsonl and config.yaml)",
        )
    series, clock, skipped_lines, skipped_values = read_metrics(metrics_path)
    return RunData(
        name=name,
        path=run_dir,
        config=read_config(run_dir / CONFIG_FILE),
        series=series,
        clock=clock,
        starts=read_starts(run_dir / HISTORY_FILE),
        data=read_data_summary(run_dir / SUMMARY_FILE),
        skipped_lines=skipped_lines,
        skipped_values=skipped_values,
    )


def run_names(run_dirs: list[Path]) -> list[str]:
    """Directory names, or full paths where two runs share a directory name."""
    names = [path.name or str(path) for path in run_dirs]
    return [str(path) if names.count(name) > 1 else name for path, name in zip(run_dirs, names, strict=True)]
