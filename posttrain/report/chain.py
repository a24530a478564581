"""What a chain of runs achieved: the held-out evaluation before the first run and after each run.

A pipeline (:mod:`posttrain.trainers.pipeline`) trains stage after stage, each from the previous one's weights.
Its result is a before/after table: the first row is the first stage's evaluation at step 0 (the starting
model), then one row per stage with that stage's last evaluation. Only the quality metrics are shown:
``eval/accuracy``, ``eval/pass@k`` for every k logged, and ``eval/mean_length``; the counts (``eval/num_prompts``
…) are constants of the setting, named in the title instead.
"""

from __future__ import annotations

import re

from posttrain.report.runs import RunData

QUALITY = re.compile(r"eval/(accuracy|pass@\d+|mean_length)$")


def quality_metrics(runs: list[RunData]) -> list[str]:
    """The quality metrics any run logged, accuracy first, then pass@k by k, then the mean length."""
    names = {name for run in runs for name in run.series if QUALITY.match(name)}

    def order(name: str) -> tuple[int, int]:
        if name == "eval/accuracy":
            return (0, 0)
        if name.startswith("eval/pass@"):
            return (1, int(name.removeprefix("eval/pass@")))
        return (2, 0)

    return sorted(names, key=order)


def first_value(run: RunData, metric: str) -> float | None:
    points = run.series.get(metric)
    return points[0][1] if points and points[0][0] == 0 else None


def chain_rows(runs: list[RunData]) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    """``(metrics, rows)``: the starting model's evaluation (the first run's step-0 values, when it evaluated at
    start) and each run's final evaluation, as ``(label, values)`` rows in the order of ``runs``; when the runs
    evaluated differently (prompts, samples, temperature), each label names its run's setting."""
    metrics = quality_metrics(runs)
    rows: list[tuple[str, list[float | None]]] = []
    if runs:
        start = [first_value(runs[0], metric) for metric in metrics]
        if any(value is not None for value in start):
            rows.append(("start", start))
    settings = {evaluation_setting(run) for run in runs} - {""}
    for run in runs:  # runs evaluated differently say how, after their name
        setting = evaluation_setting(run)
        label = f"after {run.name} ({setting})" if len(settings) > 1 and setting else f"after {run.name}"
        rows.append((label, [run.final(metric) for metric in metrics]))
    return metrics, rows


def evaluation_setting(run: RunData) -> str:
    """``"40 held-out prompts, 4 samples each at T = 1"`` from a run's config (empty when it has none)."""
    evaluation = run.config.get("eval") or {}
    prompts = run.final("eval/num_prompts")
    if not evaluation or prompts is None:
        return ""
    k, temperature = evaluation.get("k", 1), evaluation.get("temperature", 0.0)
    sampling = "greedy" if not temperature else f"{k} sample{'s' if k > 1 else ''} each at T = {temperature:g}"
    return f"{int(prompts)} held-out prompts, {sampling}"


def chain_table(runs: list[RunData]) -> str:
    """The before/after table as fixed-width text, for the terminal (empty when no run evaluated)."""
    metrics, rows = chain_rows(runs)
    if not metrics:
        return ""
    labels = [label for label, _ in rows]
    label_width = max(len(label) for label in labels)
    widths = [max(len(metric.removeprefix("eval/")), 6) for metric in metrics]
    names = [metric.removeprefix("eval/").rjust(width) for metric, width in zip(metrics, widths, strict=True)]
    lines = ["  ".join([" " * label_width, *names])]
    for label, values in rows:
        cells = ["—" if value is None else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}" for value in values]
        lines.append("  ".join([label.ljust(label_width), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))]))
    settings = {evaluation_setting(run) for run in runs} - {""}
    setting = settings.pop() if len(settings) == 1 else ""
    return "\n".join([f"held-out evaluation ({setting})" if setting else "held-out evaluation", *lines])
