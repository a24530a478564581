"""Best-of-N of the RL policies side by side, and how well r_s and self-certainty rank single samples.
Used in docs/reproductions.md.

    .venv/bin/python docs/scripts/bon_summary.py docs/results/bon/laser-s1 docs/results/bon/laser-s2 \
        docs/results/bon/grpo-s1 docs/results/bon/grpo-s2 --out docs/results/bon/bon.png

Each directory holds what ``posttrain eval bon --out DIR`` wrote (``bon.json``, ``samples.jsonl``). Prints, per
policy, the sample accuracy, the AUROC of r_s and of self-certainty against correctness over all samples, the
mean r_s of correct and incorrect samples and the share with r_s > 0.5; writes one panel per policy.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from posttrain.evals.bon import plot_bon_curves
from posttrain.evals.selfreward import auroc


def sample_figures(rows: list[dict]) -> dict:
    correct = [bool(row["correct"]) for row in rows]
    laser = [row["laser_score"] for row in rows]
    right = [score for score, ok in zip(laser, correct, strict=True) if ok]
    wrong = [score for score, ok in zip(laser, correct, strict=True) if not ok]
    return {
        "samples": len(rows),
        "accuracy": statistics.fmean(correct),
        "auroc_laser": auroc(laser, correct),
        "auroc_self_certainty": auroc([row["self_certainty"] for row in rows], correct),
        "laser_mean_correct": statistics.fmean(right) if right else None,
        "laser_mean_incorrect": statistics.fmean(wrong) if wrong else None,
        "laser_accepts": sum(score > 0.5 for score in laser) / len(laser),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figure = Figure(figsize=(5 * len(args.runs), 4), dpi=100)
    FigureCanvasAgg(figure)
    for index, run in enumerate(args.runs):
        result = json.loads((run / "bon.json").read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (run / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
        print(json.dumps({"run": run.name, **sample_figures(rows)}))
        plot_bon_curves(figure.add_subplot(1, len(args.runs), index + 1), result, run.name)
    if args.out:
        figure.tight_layout()
        figure.savefig(args.out)


if __name__ == "__main__":
    main()
