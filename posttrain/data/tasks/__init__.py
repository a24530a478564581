"""Synthetic verifiable tasks, registered by name.

A task is a function ``(n, seed, **options) -> list[dict]`` returning GSM8K-style records
(``question``, ``answer`` ending in ``#### N``, ``reference``). Every task takes a ``split`` option
(``train`` or ``held_out``) whose questions never overlap. ``judge_arithmetic`` gives labelled preference
pairs instead (a correct solution against one with an injected error, with a critique naming it:
:func:`posttrain.data.tasks.judge_pairs.make_preference_pairs`), the judge tasks of generative-reward-model
training.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import ConfigError

from ..readers import read_records, validate_records, write_jsonl
from . import arithmetic, judge_pairs

TASKS: dict[str, Callable[..., list[dict]]] = {"arithmetic": arithmetic.make_records,
                                               "judge_arithmetic": judge_pairs.make_preference_pairs}


def make_task(name: str, n: int, seed: int, **options) -> list[dict]:
    """``n`` records of task ``name`` made with ``seed``; the same arguments give the same records."""
    task = _task(name)
    accepted = set(inspect.signature(task).parameters) - {"n", "seed"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"task {name!r} has no option {', '.join(map(repr, unknown))}",
            fix=f"its options are: {', '.join(sorted(accepted))}",
        )
    return task(n, seed, **options)


TASK_PREFIX = "task:"


def source_records(data: str, kind: str, n: int | None = None, seed: int = 0, split: str = "held_out",
                   **task_options) -> list[dict]:
    """The first ``n`` records of ``kind`` from a file, directory or hub name, or from ``task:NAME`` (``n`` records,
    100 when None, of the task's ``split`` made with ``seed`` and ``task_options``), validated."""
    if data.startswith(TASK_PREFIX):
        task = data[len(TASK_PREFIX):]
        raw = make_task(task, n or 100, seed, split=split, **task_options)
        records = validate_records(raw, kind=kind, source=f"{data}:{split}").records
    else:
        records = read_records(data, kind=kind).records
    return records[:n] if n else records


def make_splits(
    name: str, n_train: int, n_held_out: int, seed: int, **options
) -> tuple[list[dict], list[dict]]:
    """Train and held-out records of task ``name``; no question appears in both."""
    train = make_task(name, n_train, seed, split="train", **options)
    held_out = make_task(name, n_held_out, seed, split="held_out", **options)
    return train, held_out


def make_task_file(name: str, n: int, seed: int, out: str | os.PathLike, **options) -> Path:
    """Write ``make_task(name, n, seed, **options)`` to ``out`` as JSON Lines and return its path.

    ``n`` must be a whole number >= 1: a ConfigError, before anything is written, rather than an empty file.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(
            f"cannot write {n!r} records of task {name!r} to {out}: the number of records must be at least 1",
            where="n",
            fix="ask for one record or more (`posttrain data make TASK --n N` with N >= 1)",
        )
    return write_jsonl(make_task(name, n, seed, **options), out)


def _task(name: str) -> Callable[..., list[dict]]:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}", fix=f"use one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


__all__ = ["TASKS", "TASK_PREFIX", "make_splits", "make_task", "make_task_file", "source_records", "write_jsonl"]
