"""Calibrate the critique-similarity thresholds on the synthetic arithmetic pairs.

For each pair, the reference critique (naming the injected error) is compared with (a) rewordings of the same
critique — the same error and numbers in other words — and (b) a critique of another pair's error. A good
threshold puts (a) above and (b) below. Prints, per backend, the score ranges and the accuracy of each
candidate threshold; and the backends' agreement on all comparisons.

    python benchmarks/calibrate_similarity.py [--pairs 40] [--backends lexical,embedding]
"""

from __future__ import annotations

import argparse
import json
import re

from posttrain.data.tasks.judge_pairs import make_preference_pairs
from posttrain.judges.similarity import backend_agreement, build_similarity

STEP = re.compile(r"Step (?P<k>\d+) is wrong: (?P<calc>.+?) is (?P<right>\d+), not (?P<wrong>\d+); "
                  r"the final answer should be (?P<final>\d+)\.")
FINAL = re.compile(r"the last step gives (?P<right>\d+), so the final answer should be \d+, not (?P<wrong>\d+)\.")


def rewordings(critique: str) -> list[str]:
    """Three rewordings of a synthetic critique: the same error and numbers, other words."""
    if match := STEP.search(critique):
        k, calc, right, wrong, final = match.group("k", "calc", "right", "wrong", "final")
        return [f"The mistake is in step {k}: {calc} gives {right}, but the response wrote {wrong}. "
                f"The answer should be {final}.",
                f"Response B gets {calc} wrong ({wrong} instead of {right}), so its result is off; correct: {final}.",
                f"In step {k} the calculation {calc} = {wrong} is incorrect, it equals {right}."]
    if match := FINAL.search(critique):
        right, wrong = match.group("right", "wrong")
        return [f"All the steps are correct but the final answer {wrong} is wrong; it should be {right}.",
                f"The calculations are fine, yet the response reports {wrong} instead of {right} at the end.",
                f"Its last line states {wrong}, while the steps give {right}."]
    raise ValueError(f"unrecognized critique: {critique}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--backends", default="lexical,numbers,embedding")
    args = parser.parse_args()
    critiques = [pair["critique"] for pair in make_preference_pairs(args.pairs, seed=0)]
    generated, reference, matching = [], [], []
    for index, critique in enumerate(critiques):
        for text in rewordings(critique):
            generated.append(text), reference.append(critique), matching.append(True)
        generated.append(critiques[(index + 1) % len(critiques)]), reference.append(critique), matching.append(False)
    scores, report = {}, {}
    for name in args.backends.split(","):
        backend = build_similarity(name)
        values = backend.scores(generated, reference)
        scores[name] = values
        same = [v for v, m in zip(values, matching, strict=True) if m]
        other = [v for v, m in zip(values, matching, strict=True) if not m]
        candidates = {f"{t:.2f}": sum((v >= t) == m for v, m in zip(values, matching, strict=True)) / len(values)
                      for t in [x / 20 for x in range(4, 20)]}
        report[name] = {"same_error": [min(same), sum(same) / len(same), max(same)],
                        "other_error": [min(other), sum(other) / len(other), max(other)],
                        "default_threshold": backend.default_threshold,
                        "accuracy_at_default": candidates.get(f"{backend.default_threshold:.2f}"),
                        "accuracy_by_threshold": candidates}
    thresholds = {name: report[name]["default_threshold"] for name in scores}
    report["agreement"] = backend_agreement(scores, thresholds)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
