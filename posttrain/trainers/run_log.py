"""What a run writes as it goes: ``metrics.jsonl``, TensorBoard events, W&B history and a progress bar.

Only the main process writes. TensorBoard events are written when ``logging.report_to`` names tensorboard; a
:class:`~posttrain.trainers.tracking.WandbRun` given as ``tracker`` is started here and sent every record. On
resume, lines logged after the checkpoint being resumed are dropped first, so the file reads as if the run had
never stopped. Every line is strict JSON: a value that is infinite or NaN is written as ``null`` and its key
listed under ``"nonfinite"``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from posttrain.errors import disk_space_checked
from posttrain.trainers.tracking import WandbRun


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records of steps ≤ ``last_step`` (drop what a killed run logged past its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if record.get("step", 0) <= last_step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def strict_record(record: dict) -> dict:
    """``record`` with every non-finite float replaced by ``None`` and those keys listed under ``"nonfinite"``."""
    bad = [key for key, value in record.items() if isinstance(value, float) and not math.isfinite(value)]
    if not bad:
        return record
    return {**{key: None if key in bad else value for key, value in record.items()}, "nonfinite": bad}


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class RunLog:
    """Appends metrics to ``metrics.jsonl``, TensorBoard (``tensorboard``) and W&B (``tracker``, started here)
    and drives a rich progress bar."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True,
                 tensorboard: bool = True, tracker: WandbRun | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.console = Console(stderr=True)
        self._writer = None
        self._progress = None
        self._tracker = tracker if enabled else None
        if not enabled:
            return
        # a fresh start (no checkpoint) replaces whatever an earlier attempt logged, step-0 evaluation included
        truncate_metrics(self.path, start_step if start_step else -1)
        if self._tracker is not None:  # first: a W&B run that cannot start leaves nothing else open
            self._tracker.start(resumed=start_step > 0)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if start_step else None)
        self._progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")
        self._progress.start()

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = strict_record({"step": step, "time": round(time.time(), 3), **metrics})
        with disk_space_checked(self.path.parent, self.path.name), self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        if self._writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self._tracker is not None:
            self._tracker.log(step, metrics)

    def advance(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        status = f"loss {metrics.get('loss', float('nan')):.4f}  {metrics.get('tokens_per_s', 0):.0f} tok/s"
        self._progress.update(self._task, completed=step, status=status)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._writer is not None:
            self._writer.close()
