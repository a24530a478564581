"""Self-rewarding iterative DPO vs CREAM vs SCIR, per arm, seed and iteration: what docs/reproductions.md reports from
``self_rewarding/testbed.yaml``.

    .venv/bin/python docs/scripts/self_rewarding_summary.py runs/self-rewarding-testbed \
        --out docs/results/self_rewarding_testbed/summary.json

For each ``judge<i>-<arm>-s<seed>`` stage, from its ``summary.json``: the DPO pairs it kept, the share of right answers
among the sampled responses, among the chosen and among the rejected ones, CREAM's consistency and the pairs SCIR's
agreement filter dropped; from its ``dpo.jsonl``: the decisive pairs (one response right, one wrong), the share of
them whose chosen response is the right one, and the pairs with both right or both wrong. For each ``dpo<i>-<arm>-s<seed>`` stage, from its ``metrics.jsonl``: greedy held-out
accuracy at its end (and, for iteration 1, at its start: the judge SFT the loop starts from). Then, per arm and
iteration, the mean and sample standard deviation over the seeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from seed_summary import mean_sd, run_command

from posttrain.run_files import METRICS_FILE, read_metrics
from posttrain.trainers.resume import finished

STAGE = re.compile(r"^(?P<kind>judge|dpo)(?P<iteration>\d+)-(?P<arm>[a-z]+)-s(?P<seed>\d+)$")
JUDGE_FIELDS = ("pairs", "ties_dropped", "response_accuracy", "chosen_accuracy", "rejected_accuracy",
                "mean_consistency", "agreement_dropped")


def judge_stage(folder: Path) -> dict:
    """The summary's fields, and from the pairs: how many are decisive (one response right, the other wrong) and the
    share of those whose chosen response is the right one (0.5 = the judge's preference is no better than a coin)."""
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    pairs = [json.loads(line) for line in (folder / "dpo.jsonl").read_text(encoding="utf-8").splitlines() if line]
    decisive = [pair for pair in pairs if pair["chosen_correct"] != pair["rejected_correct"]]
    return {**{field: summary.get(field) for field in JUDGE_FIELDS}, "decisive_pairs": len(decisive),
            "decisive_chosen_right": round(sum(p["chosen_correct"] for p in decisive) / len(decisive), 4)
            if decisive else None,
            "both_right": sum(p["chosen_correct"] and p["rejected_correct"] for p in pairs),
            "both_wrong": sum(not p["chosen_correct"] and not p["rejected_correct"] for p in pairs)}


def dpo_stage(folder: Path) -> dict:
    series = read_metrics(folder / METRICS_FILE)[0]
    accuracy = dict(series.get("eval/accuracy", []))
    steps = dict(series.get("loss", []))
    result = {"accuracy_end": accuracy[max(accuracy)], "steps": int(max(steps)) if steps else 0}
    if 0.0 in accuracy and len(accuracy) > 1:
        result["accuracy_start"] = accuracy[0.0]
    return result



def summarize(root: Path) -> dict:
    stages: dict[str, dict[str, dict[str, dict]]] = {}  # arm -> seed -> "judge1" / "dpo1" ... -> figures
    for folder in sorted(root.iterdir()):
        match = STAGE.match(folder.name)
        if not match:
            continue
        done = (folder / "summary.json").is_file() if match["kind"] == "judge" else finished(folder)
        if not done:  # still running
            continue
        figures = judge_stage(folder) if match["kind"] == "judge" else dpo_stage(folder)
        stages.setdefault(match["arm"], {}).setdefault(match["seed"], {})[match["kind"] + match["iteration"]] = figures
    arms = {}
    for arm, seeds in stages.items():
        over_seeds: dict[str, dict] = {}
        for stage in sorted({name for figures in seeds.values() for name in figures}):
            ran = [seeds[seed][stage] for seed in sorted(seeds) if stage in seeds[seed]]
            for field in ran[0]:
                values = [figures[field] for figures in ran if figures.get(field) is not None]
                if values:
                    over_seeds[f"{stage}/{field}"] = mean_sd(values)
        arms[arm] = over_seeds
    return {"stages": stages, "over_seeds": arms}


def main() -> None:
    run_command(__doc__.splitlines()[0], "runs/self-rewarding-testbed", summarize)


if __name__ == "__main__":
    main()
