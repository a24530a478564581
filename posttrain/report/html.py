"""A self-contained HTML report of one or more runs: one plot per metric, runs overlaid.

Plots are drawn with matplotlib's Agg canvas (no display, no global pyplot state) and embedded as
base64 PNG, so the page is a single file that opens anywhere. Below the plots, two tables: each run's
config (settings that differ between runs first, the full config folded away) and each run's final
value of every metric.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from posttrain.errors import DataError
from posttrain.report.runs import RunData, flatten_config, read_run, run_names

MARKER_MAX_POINTS = 30  # sparse series (periodic evals) get a marker on every point

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
tr.differs td { background: #fff6d5; }
.note { color: #8a5a00; }
"""


def metric_names(runs: list[RunData]) -> list[str]:
    """Every metric logged by any run, in order of first appearance."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.series))
    return list(names)


def plot_metric(metric: str, runs: list[RunData]) -> bytes:
    """PNG bytes of ``metric`` against step, one line per run that logged it, with a legend."""
    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for run in runs:
        points = run.series.get(metric)
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        marker = "o" if len(points) <= MARKER_MAX_POINTS else None
        axes.plot(steps, values, label=run.name, marker=marker, markersize=3, linewidth=1.4)
    axes.set_title(metric)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _format_value(value: float | None) -> str:
    if value is None:
        return "–"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def _table(header: list[str], rows: list[tuple[list[str], str]]) -> str:
    """An HTML table; each row is ``(cells, css_class)``."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        f'<tr class="{css}">' + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
        for cells, css in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def config_section(runs: list[RunData]) -> str:
    """Settings that differ between runs (all settings for a single run), then the full configs folded."""
    flat = [flatten_config(run.config) for run in runs]
    keys = list(dict.fromkeys(key for config in flat for key in config))
    rows = []
    for key in keys:
        values = [config.get(key, "–") for config in flat]
        rows.append(([key, *values], "differs" if len(set(values)) > 1 else ""))
    header = ["setting", *(run.name for run in runs)]
    if not keys:
        return "<p>No config.yaml in these runs.</p>"
    if len(runs) == 1:
        return _table(header, rows)
    differing = [row for row in rows if row[1] == "differs"]
    summary = _table(header, differing) if differing else "<p>The runs have the same config.</p>"
    return f"{summary}<details><summary>Full config ({len(keys)} settings)</summary>{_table(header, rows)}</details>"


def final_metrics_section(runs: list[RunData], metrics: list[str]) -> str:
    """The last logged value of every metric in every run."""
    rows = [([metric, *(_format_value(run.final(metric)) for run in runs)], "") for metric in metrics]
    return (
        _table(["metric (last value)", *(run.name for run in runs)], rows)
        if rows
        else "<p>No metrics logged.</p>"
    )


def skipped_notes(runs: list[RunData]) -> str:
    """Say what was left out of the plots, per run."""
    notes = []
    for run in runs:
        if run.skipped_lines:
            notes.append(
                f"{run.name}: {run.skipped_lines} line(s) of metrics.jsonl were not JSON objects and were skipped"
            )
        if run.skipped_values:
            notes.append(f"{run.name}: {run.skipped_values} non-numeric or non-finite value(s) not plotted")
    return "".join(f'<p class="note">{html.escape(note)}</p>' for note in notes)


def render_page(runs: list[RunData]) -> str:
    """The whole report page as one HTML string."""
    metrics = metric_names(runs)
    figures = []
    for metric in metrics:
        encoded = base64.b64encode(plot_metric(metric, runs)).decode("ascii")
        figures.append(
            f'<figure><img alt="{html.escape(metric)}" src="data:image/png;base64,{encoded}"></figure>'
        )
    title = "posttrain report: " + ", ".join(run.name for run in runs)
    run_list = "".join(f"<li>{html.escape(run.name)} — {html.escape(str(run.path))}</li>" for run in runs)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{run_list}</ul>{skipped_notes(runs)}"
        f'<h2>Metrics</h2><div class="plots">{"".join(figures) or "<p>No numeric metrics logged.</p>"}</div>'
        f"<h2>Final metrics</h2>{final_metrics_section(runs, metrics)}"
        f"<h2>Config</h2>{config_section(runs)}"
        "</body></html>\n"
    )


def write_report(run_dirs: list[Path], out_path: Path) -> Path:
    """Read the runs in ``run_dirs`` and write their report to ``out_path`` (atomically); return it."""
    if not run_dirs:
        raise DataError("no run directories given", fix="pass at least one run directory")
    paths = [Path(run_dir) for run_dir in run_dirs]
    runs = [read_run(path, name) for path, name in zip(paths, run_names(paths), strict=True)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    partial.write_text(render_page(runs), encoding="utf-8")
    os.replace(partial, out_path)
    return out_path
