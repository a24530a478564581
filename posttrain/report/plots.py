"""One PNG per metric against the step, runs overlaid, with the wall clock in minutes.

Drawn with matplotlib's Agg canvas (no display, no global pyplot state). With one run the top axis reads
the wall-clock minutes at each step (:func:`posttrain.report.summary.wall_minutes`, interpolated linearly
between logged steps); with several runs each legend entry gives that run's wall time instead (the caller's
``labels``), since one step axis cannot carry several clocks.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from posttrain.report.runs import RunData

MARKER_MAX_POINTS = 30  # sparse series (periodic evals) get a marker on every point
FIGURE_INCHES = (5.6, 3.3)
DPI = 100
MINUTE_TICKS = 7  # at most about this many labels on the minutes axis


def extrapolating_interp(x, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear ``f(x)`` through ``(xp, fp)`` (``xp`` increasing), continued past both ends with the
    slope of the end segments (so an axis margin does not pile ticks onto the first or last point)."""
    x = np.asarray(x, dtype=float)
    y = np.interp(x, xp, fp)
    left = (fp[1] - fp[0]) / (xp[1] - xp[0])
    right = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    y = np.where(x < xp[0], fp[0] + (x - xp[0]) * left, y)
    return np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * right, y)


def spaced_ticks(candidates, positions, span: float, count: int) -> list[float]:
    """The ``candidates`` (minute values, increasing) whose ``positions`` on the step axis are at least
    ``span / count`` apart, from the left: where a stretch of steps took long (an evaluation, a slow step)
    evenly spaced minutes would bunch up and their labels overlap."""
    kept, last = [], -np.inf
    for tick, position in zip(candidates, positions, strict=True):
        if position - last >= span / count:
            kept.append(float(tick))
            last = position
    return kept


def minute_ticks(clock: np.ndarray, to_steps, span: float) -> list[float]:
    """Round minute values for the top axis: the finest evenly spaced set (at most ``MINUTE_TICKS`` + 1 values)
    whose labels stay at least half an average label spacing apart on the step axis, else the finest set thinned
    by :func:`spaced_ticks`."""
    def inside(nbins: int) -> np.ndarray:
        values = MaxNLocator(nbins=nbins, steps=[1, 2, 5, 10]).tick_values(clock[0], clock[-1])
        return values[(values >= clock[0]) & (values <= clock[-1])]

    for nbins in range(3 * MINUTE_TICKS, 1, -1):
        values = inside(nbins)
        if 2 <= len(values) <= MINUTE_TICKS + 1 and np.diff(to_steps(values)).min() >= span / (2 * MINUTE_TICKS):
            return [float(value) for value in values]
    values = inside(3 * MINUTE_TICKS)
    return spaced_ticks(values, to_steps(values), span, MINUTE_TICKS)


def minutes_axis(axes, minutes: list[tuple[float, float]]) -> None:
    """A top x axis in wall-clock minutes, from ``(step, minutes)`` points (at least two steps apart)."""
    steps = np.array([step for step, _ in minutes], dtype=float)
    clock = np.array([value for _, value in minutes], dtype=float)
    clock = clock + np.arange(len(clock)) * 1e-6  # strictly increasing, so the inverse is a function too

    def to_minutes(x):
        return extrapolating_interp(x, steps, clock)

    def to_steps(x):
        return extrapolating_interp(x, clock, steps)

    top = axes.secondary_xaxis("top", functions=(to_minutes, to_steps))
    top.set_xticks(minute_ticks(clock, to_steps, steps[-1] - steps[0]))
    top.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    top.set_xlabel("wall-clock minutes", fontsize="small")
    top.tick_params(labelsize="small")


def plot_metric(metric: str, runs: list[RunData], minutes: dict[str, list[tuple[float, float]]],
                labels: dict[str, str] | None = None) -> bytes:
    """PNG bytes of ``metric`` against step, one line per run that logged it; several runs get a legend.

    ``minutes[run.name]`` is that run's ``(step, wall-clock minutes)``; ``labels[run.name]`` its legend entry
    (default: its name)."""
    figure = Figure(figsize=FIGURE_INCHES, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for position, run in enumerate(runs):  # a run keeps its colour in every plot
        points = run.series.get(metric)
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        label = (labels or {}).get(run.name, run.name)
        marker = "o" if len(points) <= MARKER_MAX_POINTS else None
        axes.plot(steps, values, label=label, marker=marker, markersize=3, linewidth=1.4, color=f"C{position % 10}")
    axes.set_title(metric, fontsize="medium")
    axes.set_xlabel("step", fontsize="small")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    axes.tick_params(labelsize="small")
    axes.ticklabel_format(axis="y", useOffset=False)  # an offset label ("+5.548") would sit on the top axis
    axes.grid(alpha=0.3)
    if len(runs) > 1:
        axes.legend(fontsize="x-small")
    else:
        clock = minutes.get(runs[0].name, [])
        if len(clock) >= 2 and clock[-1][1] > clock[0][1]:
            minutes_axis(axes, clock)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
