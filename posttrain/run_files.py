"""The files every run directory has, read for the report and the model card: ``metrics.jsonl`` as one series per
metric (:func:`read_metrics`) and a resolved config as dotted keys (:func:`flatten_config`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
STEP_KEY = "step"
TIME_KEY = "time"  # the epoch seconds at which a record was logged: the wall clock, not a metric
BOOKKEEPING_KEYS = ("nonfinite",)  # the list of keys a record wrote as null (counted through those nulls)


def is_number(value) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(path: Path) -> tuple[dict[str, list[tuple[float, float]]], list[tuple[float, float]], int, int]:
    """Parse ``metrics.jsonl`` into per-metric series and the wall clock.

    The x value of a record is its ``step``; a record without a numeric ``step`` takes its 1-based
    position among the records. ``time`` goes to the clock, not to the metrics.
    Returns ``(series, clock, skipped_lines, skipped_values)``.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    clock: list[tuple[float, float]] = []
    skipped_lines = skipped_values = 0
    position = 0
    with path.open(encoding="utf-8", errors="replace") as file:
        for line in file:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict):
                skipped_lines += 1
                continue
            position += 1
            step = record.get(STEP_KEY)
            x = float(step) if is_number(step) else float(position)
            for key, value in record.items():
                if key == TIME_KEY and is_number(value):
                    clock.append((x, float(value)))
                elif key in (STEP_KEY, TIME_KEY, *BOOKKEEPING_KEYS):
                    continue
                elif is_number(value):
                    series.setdefault(key, []).append((x, float(value)))
                else:
                    skipped_values += 1
    return series, clock, skipped_lines, skipped_values


def flatten_config(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as ``{"a.b.c": "value"}``, lists written inline."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return flat
