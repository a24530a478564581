"""A self-contained HTML report of one or more runs, in the order a reader wants it:

1. a summary table — method, model, data, steps, wall time, tokens/s and each evaluation metric's first → last
   value (:mod:`posttrain.report.summary`); for several runs one column per run, plus the config settings
   that differ between them (flattened dotted keys);
2. the method's key plots, then the other metrics grouped by prefix (:mod:`posttrain.report.layout`), runs
   overlaid, wall-clock minutes on a second axis (:mod:`posttrain.report.plots`);
3. the constants (metrics whose value never changed) as table rows, the last value of every metric and the
   full config, folded.

Plots are embedded as base64 PNG, so the page is one file that opens anywhere without a network.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from posttrain.errors import DataError
from posttrain.report.layout import plot_layout
from posttrain.report.plots import plot_metric
from posttrain.report.runs import RunData, read_run, run_names
from posttrain.report.summary import RunSummary, constant_metrics, summarize_run, wall_minutes
from posttrain.run_files import flatten_config

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em 2em; color: #222; max-width: 1250px; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
h3 { font-size: 1em; margin: 1em 0 0.4em; color: #444; }
.runs { margin: 0 0 1em; padding-left: 1.2em; color: #555; font-size: 0.9em; }
.plots { display: flex; flex-wrap: wrap; gap: 0.8em; }
.plots figure { margin: 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
table.summary td:first-child { font-weight: 600; white-space: nowrap; }
tr.setting td { background: #fff6d5; }
tr.setting td:first-child { font-weight: normal; font-family: ui-monospace, monospace; }
tr.differs td { background: #fff6d5; }
.note { color: #8a5a00; margin: 0.3em 0; }
details { margin-top: 0.8em; } summary { cursor: pointer; color: #335; }
"""


def format_value(value: float | None) -> str:
    """Integers as integers, 1000 and above without decimals, other numbers to 4 significant digits, a missing
    value as ``–``."""
    if value is None:
        return "–"
    if abs(value) < 1e15 and (value == int(value) or abs(value) >= 1000):
        return f"{value:.0f}"
    return f"{value:.4g}"


def format_duration(seconds: float | None) -> str:
    """``45 s``, ``3 min 20 s``, ``1 h 05 min``."""
    if seconds is None:
        return "–"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_steps(summary: RunSummary) -> str:
    if summary.last_step is None:
        return "none logged"
    if summary.planned_steps is None:
        return str(summary.last_step)
    done = "" if summary.finished else " (incomplete)"
    return f"{summary.last_step} of {summary.planned_steps}{done}"


def format_change(summary: RunSummary, metric: str) -> str:
    """``first → last (change)`` of an eval metric, its value when it was logged once, ``–`` when never."""
    change = next((change for change in summary.evals if change.metric == metric), None)
    if change is None:
        return "–"
    if change.points == 1:
        return f"{format_value(change.last)} (once)"
    return f"{format_value(change.first)} → {format_value(change.last)} ({change.change:+.3g})"


def table(header: list[str], rows: list[tuple[list[str], str]], css: str = "") -> str:
    """An HTML table; each row is ``(cells, css_class)``."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        (f'<tr class="{row_css}">' if row_css else "<tr>")
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
        for cells, row_css in rows
    )
    css_attr = f' class="{css}"' if css else ""
    return f"<table{css_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def differing_settings(runs: list[RunData]) -> list[tuple[str, list[str]]]:
    """``(dotted key, value per run)`` of every config setting whose value is not the same in all runs (a
    setting a run lacks counts as ``–``)."""
    flat = [flatten_config(run.config) for run in runs]
    keys = dict.fromkeys(key for config in flat for key in config)
    rows = [(key, [config.get(key, "–") for config in flat]) for key in keys]
    return [(key, values) for key, values in rows if len(set(values)) > 1]


def in_every_schema(key: str, runs: list[RunData]) -> bool:
    """Whether every run's config has ``key`` or a setting on its path (``rl.judge: null`` in one run and
    ``rl.judge.template`` in another are one setting set differently); a key some run's config has nothing
    of was added or renamed between posttrain versions."""
    def related(config_key: str) -> bool:
        return config_key == key or config_key.startswith(key + ".") or key.startswith(config_key + ".")

    return all(any(related(config_key) for config_key in flatten_config(run.config)) for run in runs)


def summary_section(runs: list[RunData], summaries: list[RunSummary]) -> str:
    """The header table: one value column per run; for several runs the differing settings below."""
    rows = [
        (["method", *(s.method for s in summaries)], ""),
        (["model", *(s.model for s in summaries)], ""),
        (["data", *(s.data for s in summaries)], ""),
        (["steps", *(format_steps(s) for s in summaries)], ""),
        (["wall time", *(format_duration(s.wall_seconds) for s in summaries)], ""),
        (["tokens/s", *(format_value(s.tokens_per_s) for s in summaries)], ""),
    ]
    evals = dict.fromkeys(change.metric for s in summaries for change in s.evals)
    rows += [([metric, *(format_change(s, metric) for s in summaries)], "") for metric in evals]
    header = ["", *(run.name for run in runs)] if len(runs) > 1 else ["", "value"]
    if len(runs) == 1:
        return table(header, rows, css="summary")
    settings = differing_settings(runs)
    rows += [([key, *values], "setting") for key, values in settings if in_every_schema(key, runs)]
    other_versions = [([key, *values], "") for key, values in settings if not in_every_schema(key, runs)]
    folded = (f"<details><summary>{len(other_versions)} setting(s) not in every run's config (another posttrain "
              f"version)</summary>{table(['setting', *(run.name for run in runs)], other_versions)}</details>"
              if other_versions else "")
    return table(header, rows, css="summary") + folded


def constants_section(runs: list[RunData], constants: list[str]) -> str:
    """One row per constant metric: its value in each run (``–`` where a run did not log it)."""
    if not constants:
        return "<p>No metric stayed constant.</p>"
    rows = [([metric, *(format_value(run.final(metric)) for run in runs)], "") for metric in constants]
    header = ["metric", *(run.name for run in runs)] if len(runs) > 1 else ["metric", "value"]
    return table(header, rows)


def last_values_section(runs: list[RunData]) -> str:
    """The last logged value of every metric in every run, folded."""
    metrics = list(dict.fromkeys(name for run in runs for name in run.series))
    if not metrics:
        return ""
    rows = [([metric, *(format_value(run.final(metric)) for run in runs)], "") for metric in metrics]
    return (f"<details><summary>Last value of every metric ({len(metrics)})</summary>"
            f"{table(['metric', *(run.name for run in runs)], rows)}</details>")


def config_section(runs: list[RunData]) -> str:
    """Every setting of every run (the differing ones highlighted), folded."""
    flat = [flatten_config(run.config) for run in runs]
    keys = list(dict.fromkeys(key for config in flat for key in config))
    if not keys:
        return "<p>No config.yaml in these runs.</p>"
    differing = {key for key, _ in differing_settings(runs)}
    rows = [([key, *(config.get(key, "–") for config in flat)], "differs" if key in differing else "")
            for key in keys]
    return (f"<details><summary>Full config ({len(keys)} settings)</summary>"
            f"{table(['setting', *(run.name for run in runs)], rows)}</details>")


def notes(runs: list[RunData], summaries: list[RunSummary]) -> str:
    """What the reader should know before trusting the plots: unfinished runs and what was left out."""
    lines = []
    for run, summary in zip(runs, summaries, strict=True):
        if summary.last_step is None:
            lines.append(f"{run.name}: no metrics logged yet")
        elif summary.planned_steps is not None and not summary.finished:
            lines.append(f"{run.name}: logged up to step {summary.last_step} of {summary.planned_steps} — the run "
                         "failed, was stopped, or is still running")
        if run.skipped_lines:
            lines.append(f"{run.name}: {run.skipped_lines} line(s) of metrics.jsonl were not JSON objects and were "
                         "skipped")
        if run.skipped_values:
            lines.append(f"{run.name}: {run.skipped_values} non-numeric or non-finite value(s) not plotted")
    return "".join(f'<p class="note">{html.escape(line)}</p>' for line in lines)


def figures(metrics: list[str], runs: list[RunData], minutes: dict[str, list[tuple[float, float]]],
            labels: dict[str, str]) -> str:
    encoded = (base64.b64encode(plot_metric(metric, runs, minutes, labels)).decode("ascii") for metric in metrics)
    return '<div class="plots">' + "".join(
        f'<figure><img alt="{html.escape(metric)}" src="data:image/png;base64,{data}"></figure>'
        for metric, data in zip(metrics, encoded, strict=True)
    ) + "</div>"


def plots_section(runs: list[RunData], summaries: list[RunSummary], constants: list[str]) -> str:
    """The key plots, then one sub-section per prefix group; legend entries carry each run's wall time."""
    key, groups = plot_layout(runs, constants)
    if not key and not groups:
        return "<h2>Metrics</h2><p>No changing numeric metric logged.</p>"
    minutes = {run.name: wall_minutes(run) for run in runs}
    labels = {run.name: run.name if summary.wall_seconds is None else
              f"{run.name} ({format_duration(summary.wall_seconds)})" for run, summary in zip(runs, summaries, strict=True)}
    parts = [f"<h2>Key metrics</h2>{figures(key, runs, minutes, labels)}"] if key else []
    if groups:
        parts.append("<h2>More metrics</h2>")
        parts += [f"<h3>{html.escape(prefix)}</h3>{figures(members, runs, minutes, labels)}"
                  for prefix, members in groups]
    return "".join(parts)


def render_page(runs: list[RunData]) -> str:
    """The whole report page as one HTML string."""
    constants = constant_metrics(runs)
    summaries = [summarize_run(run, constants) for run in runs]
    title = "posttrain report: " + ", ".join(run.name for run in runs)
    run_list = "".join(f"<li>{html.escape(run.name)} — {html.escape(str(run.path))}</li>" for run in runs)
    heading = "Comparison" if len(runs) > 1 else "Summary"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f'<h1>{html.escape(title)}</h1><ul class="runs">{run_list}</ul>{notes(runs, summaries)}'
        f"<h2>{heading}</h2>{summary_section(runs, summaries)}"
        f"{plots_section(runs, summaries, constants)}"
        f"<h2>Constants</h2>{constants_section(runs, constants)}"
        f"<h2>Details</h2>{last_values_section(runs)}{config_section(runs)}"
        "</body></html>\n"
    )


COMPARISON_NAME_CHARS = 80  # longest run-name part of a comparison's default file name


def default_report_path(run_dirs: list[Path]) -> Path:
    """``report.html`` in a single run; for several runs ``compare-<a>+<b>….html`` beside the first run, so a
    comparison never replaces a run's own report."""
    paths = [Path(run_dir) for run_dir in run_dirs]
    if len(paths) == 1:
        return paths[0] / "report.html"
    names = "+".join(path.resolve().name for path in paths)
    if len(names) > COMPARISON_NAME_CHARS:
        names = f"{paths[0].resolve().name}+{len(paths) - 1}-more"
    return paths[0].resolve().parent / f"compare-{names}.html"


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
