"""Per RL run of a pipeline: held-out accuracy and how the rollouts changed over training. Used in
docs/reproductions.md (GRPO vs SDPO vs SRPO vs SD-Zero vs the likelihood reward).

    .venv/bin/python docs/scripts/rl_windows.py runs/sdpo-compare --out docs/results/sdpo_compare/windows.json

For every run directory under the pipeline's (one with a ``metrics.jsonl``), from its training records: the mean
completion length over the first and the last five steps, the share of rollouts cut at the token limit over the
last five, the batch accuracy over all steps, the number of steps whose rollouts had a sibling to distill
(``feedback_sibling`` > 0: SDPO's and SRPO's successful-sibling feedback), the mean seconds per step; and the last
``eval/accuracy`` (the held-out evaluation at the end). For runs rewarded by the likelihood reward, also from its
``samples.jsonl``: the mean ``reward_likelihood`` of right and wrong rollouts (by the weight-0 math reward), and of
the wrong ones that ended and that were cut at the token limit.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from posttrain.run_files import METRICS_FILE, read_metrics

WINDOW = 5  # steps averaged at each end of the run


def _window_mean(by_step: dict[float, float], first: bool) -> float | None:
    """Mean over the first (or last) WINDOW steps of a metric's values by step."""
    steps = sorted(by_step)
    chosen = steps[:WINDOW] if first else steps[-WINDOW:]
    return statistics.mean(by_step[step] for step in chosen) if chosen else None


def likelihood_by_kind(samples: Path) -> dict | None:
    """Mean likelihood reward of right / wrong / wrong-and-ended / wrong-and-truncated rollouts, None without such
    rollouts."""
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [row for row in rows if "reward_likelihood" in row]
    if not rows:
        return None
    wrong = [row for row in rows if row.get("reward_math", 0) <= 0]
    groups = {"right": [row for row in rows if row.get("reward_math", 0) > 0], "wrong": wrong,
              "wrong_ended": [row for row in wrong if row.get("finish_reason") == "eos"],
              "wrong_truncated": [row for row in wrong if row.get("finish_reason") != "eos"]}
    return {name: {"rollouts": len(group),
                   "mean": statistics.mean(row["reward_likelihood"] for row in group) if group else None}
            for name, group in groups.items()}


def run_summary(run: Path) -> dict:
    series, _, _, _ = read_metrics(run / METRICS_FILE)
    by_step = {name: dict(points) for name, points in series.items()}  # a step logged twice (resumed): last value
    return {
        "steps": len(by_step.get("seconds_per_step", {})),
        "eval_accuracy": series["eval/accuracy"][-1][1] if "eval/accuracy" in series else None,
        "length_first": _window_mean(by_step.get("completion_length", {}), first=True),
        "length_last": _window_mean(by_step.get("completion_length", {}), first=False),
        "truncated_last": _window_mean(by_step.get("truncated_fraction", {}), first=False),
        "batch_accuracy": statistics.mean(by_step["accuracy"].values()) if "accuracy" in by_step else None,
        "steps_with_sibling": sum(value > 0 for value in by_step.get("feedback_sibling", {}).values()),
        "seconds_per_step": statistics.mean(by_step["seconds_per_step"].values())
        if "seconds_per_step" in by_step else None,
        "likelihood_reward": likelihood_by_kind(run / "samples.jsonl") if (run / "samples.jsonl").is_file() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="a pipeline's output directory")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    summaries = {run.name: run_summary(run) for run in sorted(args.pipeline.iterdir())
                 if (run / METRICS_FILE).is_file()}
    for name, summary in summaries.items():
        print(name, " ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                             for key, value in summary.items()))
    if args.out:
        args.out.write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
