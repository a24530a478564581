"""TS-OPSD over seeds, per seed and arm: what docs/reproductions.md reports from ``ts_opsd/seeds.yaml``.

    .venv/bin/python docs/scripts/ts_opsd_seeds.py runs/ts-opsd-seeds --out docs/results/ts_opsd_seeds/seeds.json

From each stage's ``metrics.jsonl``:
- ``collapse-sK``: the rollout entropy over steps 1-10 and the last 10 steps, and greedy held-out accuracy at the
  start and the end;
- ``reheat-sK``: the steps it ran and the held-out entropy at its last check (``heldout_entropy``);
- ``continue-<arm>-sK``: held-out pass@1 and pass@4 (4 samples at T = 1) at every evaluation (steps 0, 10, 20), and
  the mean training accuracy and rollout entropy over steps 1-10 and 11-20.
Then, per arm, the mean and sample standard deviation over the seeds of pass@1 and pass@4 at the end.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from seed_summary import mean_sd, run_command

from posttrain.run_files import METRICS_FILE, read_metrics

STAGE = re.compile(r"^(?P<arm>.+)-s(?P<seed>\d+)$")


def by_step(series: dict, name: str) -> dict[float, float]:
    return dict(series.get(name, []))


def window(values: dict[float, float], first: float, last: float) -> float | None:
    """Mean of the values at steps first..last (inclusive); None when there are none."""
    chosen = [value for step, value in values.items() if first <= step <= last]
    return round(statistics.mean(chosen), 4) if chosen else None


def collapse_summary(series: dict) -> dict:
    entropy = by_step(series, "entropy")
    accuracy = by_step(series, "eval/accuracy")
    end = max(entropy)
    return {"entropy_first_10": window(entropy, 1, 10), "entropy_last_10": window(entropy, end - 9, end),
            "heldout_accuracy_start": accuracy.get(0.0), "heldout_accuracy_end": accuracy.get(max(accuracy))}


def reheat_summary(series: dict) -> dict:
    checks = by_step(series, "heldout_entropy")
    steps = by_step(series, "loss")
    return {"steps": int(max(steps)), "heldout_entropy_at_stop": round(checks[max(checks)], 4) if checks else None,
            "rollout_entropy_first": round(by_step(series, "entropy")[min(steps)], 4),
            "rollout_entropy_last": round(by_step(series, "entropy")[max(steps)], 4)}


def continue_summary(series: dict) -> dict:
    pass1, pass4 = by_step(series, "eval/pass@1"), by_step(series, "eval/pass@4")
    accuracy, entropy = by_step(series, "accuracy"), by_step(series, "entropy")
    return {"pass@1": {int(step): round(value, 4) for step, value in sorted(pass1.items())},
            "pass@4": {int(step): round(value, 4) for step, value in sorted(pass4.items())},
            "accuracy_1_10": window(accuracy, 1, 10), "accuracy_11_20": window(accuracy, 11, 20),
            "entropy_1_10": window(entropy, 1, 10), "entropy_11_20": window(entropy, 11, 20)}



def summarize(root: Path) -> dict:
    stages: dict[str, dict[int, dict]] = {}
    for run in sorted(root.iterdir()):
        match = STAGE.match(run.name)
        if not match or not (run / METRICS_FILE).is_file():
            continue
        series = read_metrics(run / METRICS_FILE)[0]
        arm, seed = match["arm"], int(match["seed"])
        kind = collapse_summary if arm == "collapse" else reheat_summary if arm == "reheat" else continue_summary
        stages.setdefault(arm, {})[seed] = kind(series)
    ends = {}
    for arm, seeds in stages.items():
        if arm in ("collapse", "reheat"):
            continue
        ends[arm] = {name: mean_sd([seeds[s][name][max(seeds[s][name])] for s in sorted(seeds)])
                     for name in ("pass@1", "pass@4")}
    return {"stages": stages, "end_of_continued_rl": ends}


def main() -> None:
    run_command(__doc__.splitlines()[0], "runs/ts-opsd-seeds", summarize)


if __name__ == "__main__":
    main()
