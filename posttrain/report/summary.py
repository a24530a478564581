"""What a report says about a run before any plot: what ran, how far, how long, how fast, and how the
evaluation moved.

- **Wall time** is the active time of the run: from the start of the session that logged the first record
  (``history.jsonl``, written when the training loop starts, after the model and data are loaded; the first
  record's time when there is none) to the last record, less the idle gap before each resume (the time
  between the last record before a resume and that resume's start).
- **Tokens/s** is the time-weighted mean of the logged ``tokens_per_s``, Σ tokens_per_s·seconds_per_step /
  Σ seconds_per_step over the logged steps (that is Σ tokens / Σ seconds when every step is logged); the
  plain mean when ``seconds_per_step`` was not logged.
- A **constant** is a metric whose every logged value is the same (``eval/num_prompts``, ``epoch``): it is
  shown as a table row, not a plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.report.runs import RunData

EVAL_PREFIX = "eval/"
HEADLINE_EVAL = ("eval/accuracy", "eval/pass@")  # in the header even when they did not change


@dataclass
class EvalChange:
    """An evaluation metric's first and last logged value."""

    metric: str
    first: float
    last: float
    points: int

    @property
    def change(self) -> float:
        return self.last - self.first


@dataclass
class RunSummary:
    """The header of one run. ``planned_steps`` is None when the run did not record it."""

    method: str
    model: str
    data: str
    last_step: int | None
    planned_steps: int | None
    wall_seconds: float | None
    tokens_per_s: float | None
    evals: list[EvalChange] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.planned_steps is not None and self.last_step is not None and self.last_step >= self.planned_steps


def is_constant(points: list[tuple[float, float]]) -> bool:
    """True when every value of the series is the same (a single value included)."""
    return bool(points) and all(value == points[0][1] for _, value in points)


def constant_metrics(runs: list[RunData]) -> list[str]:
    """Metrics that are constant in every run that logged them, in order of first appearance."""
    names = dict.fromkeys(name for run in runs for name in run.series)
    return [name for name in names if all(is_constant(run.series[name]) for run in runs if name in run.series)]


def _lookup(config: dict, dotted: str):
    value = config
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


# the setting that tells a method's variants apart, shown next to the method's name
VARIANT_KEYS = {"sft": "sft.loss", "grpo": "rl.loss", "srpo": "rl.loss", "distill": "distill.divergence",
                "dpo": "preference.kind", "reward_model": "reward_model.objective"}


def method_label(config: dict) -> str:
    """``sft (profit)``, ``grpo (dapo, LaSeR)``, …, or ``–`` without a config."""
    method = config.get("method")
    if method is None:
        return "–" if not config else "sft"  # a config without `method` ran the default
    parts = [str(_lookup(config, VARIANT_KEYS[method]))] if method in VARIANT_KEYS else []
    if method == "distill":
        parts.insert(0, f"teacher {_lookup(config, 'distill.teacher')}")
    if method == "grpo" and _lookup(config, "rl.laser.enabled"):
        parts.append("LaSeR")
    if method == "grpo" and _lookup(config, "rl.judge"):
        parts.append("judge")
    parts = [part for part in parts if part != "None"]
    return f"{method} ({', '.join(parts)})" if parts else str(method)


def data_label(run: RunData) -> str:
    """The training data as the run read it (``data_summary.json``), else as its config names it."""
    source, examples = run.data.get("source"), run.data.get("examples")
    if source is not None:
        return f"{source}, {examples} examples" if examples is not None else str(source)
    train = _lookup(run.config, "data.train") or {}
    if train.get("path"):
        return str(train["path"])
    if train.get("task"):
        return f"task:{train['task']} (n={train.get('n')})"
    return "–"


def last_step(run: RunData) -> int | None:
    steps = [step for points in run.series.values() for step, _ in points]
    return int(max(steps)) if steps else None


def planned_steps(run: RunData) -> int | None:
    """The run's planned number of steps: what it wrote at its start, else ``train.max_steps``."""
    steps = run.data.get("steps") or _lookup(run.config, "train.max_steps")
    return int(steps) if isinstance(steps, int | float) and not isinstance(steps, bool) else None


def elapsed_seconds(run: RunData) -> list[tuple[float, float]]:
    """``(step, active seconds since the run started)`` for every record with a time, in logging order."""
    if not run.clock:
        return []
    first = run.clock[0][1]
    origin = max((start for start in run.starts if start <= first), default=first)
    gaps = []  # (resume time, idle seconds before it)
    for start in run.starts:
        if start > first:
            before = [time for _, time in run.clock if time < start]
            gaps.append((start, start - max(before)))
    return [(step, time - origin - sum(idle for resumed, idle in gaps if resumed <= time))
            for step, time in run.clock]


def wall_minutes(run: RunData) -> list[tuple[float, float]]:
    """``(step, minutes)`` with one point per step (its first record) and minutes never decreasing."""
    minutes: dict[float, float] = {}
    for step, seconds in elapsed_seconds(run):
        minutes.setdefault(step, seconds / 60)
    points, latest = [], 0.0
    for step in sorted(minutes):
        latest = max(latest, minutes[step])
        points.append((step, latest))
    return points


def wall_seconds(run: RunData) -> float | None:
    elapsed = elapsed_seconds(run)
    return max(seconds for _, seconds in elapsed) if elapsed else None


def tokens_per_second(run: RunData) -> float | None:
    """The time-weighted mean throughput (see the module docstring)."""
    rates = run.series.get("tokens_per_s")
    if not rates:
        return None
    seconds = dict(run.series.get("seconds_per_step", []))
    if all(step in seconds for step, _ in rates):
        total = sum(seconds[step] for step, _ in rates)
        if total > 0:
            return sum(rate * seconds[step] for step, rate in rates) / total
    return sum(rate for _, rate in rates) / len(rates)


def eval_changes(run: RunData, constants: list[str]) -> list[EvalChange]:
    """Each evaluation metric that changed (and the headline ones even when they did not): first → last."""
    changes = []
    for metric, points in run.series.items():
        if not metric.startswith(EVAL_PREFIX):
            continue
        if metric in constants and not metric.startswith(HEADLINE_EVAL):
            continue
        changes.append(EvalChange(metric, points[0][1], points[-1][1], len(points)))
    return changes


def summarize_run(run: RunData, constants: list[str]) -> RunSummary:
    """The header of ``run``; ``constants`` are the report's constant metrics (left out of the eval rows)."""
    model = _lookup(run.config, "model.name")
    return RunSummary(
        method=method_label(run.config),
        model="–" if model is None else str(model),
        data=data_label(run),
        last_step=last_step(run),
        planned_steps=planned_steps(run),
        wall_seconds=wall_seconds(run),
        tokens_per_s=tokens_per_second(run),
        evals=eval_changes(run, constants),
    )
