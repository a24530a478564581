"""What a pipeline's stages measured, side by side: figures and tables over seeds.

A stage folder holds either a tool's summary (:func:`tool_result`: ``judge.json``, ``gap.json``,
``masterkey.json`` or ``summary.json``) or a training run (``metrics.jsonl``). :func:`stage_value` reads one
number from either: a key path of the summary (``overall.pairwise.mean_false_positive_rate``), or the last value
a run logged of a metric (``eval/accuracy`` at its end).

:func:`seed_table` summarizes arms run with several seeds: per row (an arm: a list of stage names or shell-style
patterns such as ``dpo-s*``), each metric's mean and sample standard deviation over the row's stages that have
run, with the values themselves, as ``<name>.md`` and ``<name>.json``:

    mean = Σ v_i / n        sd = sqrt(Σ (v_i − mean)² / (n − 1))   (none when n < 2)
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

from posttrain.report.runs import read_run

TOOL_SUMMARIES = ("judge.json", "gap.json", "masterkey.json", "summary.json")


def tool_result(stage_dir: Path) -> dict | None:
    """The summary a tool stage wrote, or None when there is none."""
    for name in TOOL_SUMMARIES:
        if (stage_dir / name).is_file():
            return json.loads((stage_dir / name).read_text())
    return None


def lookup(result: dict, path: str) -> float | None:
    """The number at the dotted key ``path`` of ``result``, or None."""
    value: object = result
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def stage_value(stage_dir: Path, metric: str) -> float | None:
    """``metric`` of one stage (module docstring); None when the stage has not run or did not report it."""
    result = tool_result(stage_dir)
    if result is not None:
        return lookup(result, metric)
    if not (stage_dir / "metrics.jsonl").is_file():
        return None
    points = read_run(stage_dir, stage_dir.name).series.get(metric, [])
    return points[-1][1] if points else None


def matching_stages(patterns: list[str], stages: list[str]) -> list[str]:
    """The ``stages`` that any of ``patterns`` (names or shell-style patterns) matches, in their order."""
    return [stage for stage in stages if any(fnmatch.fnmatchcase(stage, pattern) for pattern in patterns)]


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def seed_table(root: Path, name: str, rows: dict[str, list[str]], metrics: list[str], stages: list[str]) -> str:
    """Write ``root/<name>.md`` and ``root/<name>.json`` (module docstring) and return the markdown table; a row
    whose stages have not run yet shows ``n = 0``."""
    summary: dict[str, dict] = {}
    for label, patterns in rows.items():
        members = [stage for stage in matching_stages(patterns, stages) if stage_ran(root / stage)]
        entry: dict = {"stages": members, "metrics": {}}
        for metric in metrics:
            values = [v for v in (stage_value(root / stage, metric) for stage in members) if v is not None]
            mean, sd = mean_sd(values) if values else (None, None)
            entry["metrics"][metric] = {"n": len(values), "mean": mean, "sd": sd, "values": values}
        summary[label] = entry
    (root / f"{name}.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    header = "| arm | n | " + " | ".join(metrics) + " |"
    lines = [header, "| --- | ---: | " + " | ".join("---" for _ in metrics) + " |"]
    for label, entry in summary.items():
        cells = [_cell(entry["metrics"][metric]) for metric in metrics]
        lines.append(f"| {label} | {len(entry['stages'])} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (root / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    return table


def stage_ran(stage_dir: Path) -> bool:
    """Whether a stage has written its results: a tool stage's summary, or a training run's metrics."""
    return tool_result(stage_dir) is not None or (stage_dir / "metrics.jsonl").is_file()


def _cell(figures: dict) -> str:
    if not figures["n"]:
        return "—"
    values = " ".join(f"{v:.3f}" for v in figures["values"])
    if figures["sd"] is None:
        return f"{figures['mean']:.3f}"
    return f"{figures['mean']:.3f} ± {figures['sd']:.3f} ({values})"


def draw_figure(root: Path, name: str, stages: list[str], metrics: list[str]) -> Path:
    """``root/<name>.png``, one panel per metric: for training stages one line per stage (its logged values
    against the step), for evaluation stages one bar per stage (:func:`lookup` of its summary)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = [tool_result(root / stage) for stage in stages]
    if all(result is not None for result in results):
        return _draw_bars(root, name, stages, metrics, results)
    runs = [read_run(root / stage, stage) for stage in stages]
    canvas = Figure(figsize=(4.2 * len(metrics), 3.4))
    FigureCanvasAgg(canvas)
    for index, metric in enumerate(metrics):
        axes = canvas.add_subplot(1, len(metrics), index + 1)
        for position, run in enumerate(runs):  # a stage keeps its colour in every panel
            points = run.series.get(metric, [])
            if points:
                axes.plot([s for s, _ in points], [v for _, v in points], marker="o" if len(points) < 8 else None,
                          markersize=3, label=run.name, color=f"C{position % 10}")
        axes.set_title(metric)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
        if axes.lines:  # each panel names its own lines: a metric may be logged by some stages only
            axes.legend(fontsize=7)
    canvas.tight_layout()
    out = root / f"{name}.png"
    canvas.savefig(out, dpi=110)
    return out


def _draw_bars(root: Path, name: str, stages: list[str], metrics: list[str], results: list[dict]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    canvas = Figure(figsize=(max(3.2, 1.1 * len(stages)) * len(metrics) / 1.5, 3.4))
    FigureCanvasAgg(canvas)
    for index, metric in enumerate(metrics):
        axes = canvas.add_subplot(1, len(metrics), index + 1)
        values = [lookup(result, metric) for result in results]
        axes.bar(range(len(values)), [v if v is not None else 0.0 for v in values], color="tab:blue")
        for position, value in enumerate(values):
            axes.text(position, value or 0.0, "-" if value is None else f"{value:.2f}", ha="center", va="bottom",
                      fontsize=7)
        axes.set_xticks(range(len(values)), stages, rotation=30, ha="right", fontsize=7)
        axes.set_title(metric, fontsize=9)
        axes.grid(alpha=0.3, axis="y")
    canvas.tight_layout()
    out = root / f"{name}.png"
    canvas.savefig(out, dpi=110)
    return out
