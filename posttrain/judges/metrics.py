"""Figures of judgment rows: accuracy per order, both-order consistency, position flips, format failures,
broken down by subset, RewardBench category and length.

Any scorer (:mod:`posttrain.judges.scorers`) gives one row per judgment (``pair_index``, ``sample_index``,
``order``, ``subset``, ``length``, ``verdict``, ``correct``). A *trial* is one sample index of one pair: its
judgment in each order. Figures of a set of rows (:func:`group_metrics`), all fractions:

* ``accuracy_first`` / ``accuracy_swapped``: right judgments among those of one order (None if absent);
* ``accuracy``: right judgments among all (for a judge, the mean of the two orders);
* ``consistent_accuracy``: trials right in every order (RISE's both-order admission rule);
* ``position_flip_rate``: trials whose two verdicts both parsed and name the same position, so the
  preferred content changed with the order (None for a one-order scorer);
* ``format_failure_rate``: judgments without a verdict.

With one sample these equal :func:`posttrain.judges.pairs.aggregate` of the pairs' both-order scores.
They are reported overall, per ``subset``, per RewardBench category (:data:`CATEGORY_OF_SUBSET`; a subset
outside RewardBench is ``other``, a pair without one ``unspecified``) and by length: ``chosen_longer``,
``chosen_shorter`` or ``same_length``, comparing the responses' characters. ``rewardbench`` holds the
leaderboard's section scores: per section the mean of its subsets' ``accuracy`` weighted by
:data:`REWARDBENCH_WEIGHTS` (``rewardbench/constants.py``: subset sizes, with ``math-prm`` weighted as
much as the six code subsets together), and ``score``, the mean of the four sections.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from posttrain.errors import DataError
from posttrain.judges.pairs import RIGHT_VERDICT

# RewardBench subset: (category, leaderboard weight), from allenai/reward-bench rewardbench/constants.py
# (SUBSET_MAPPING, EXAMPLE_COUNTS: subset sizes, math-prm's 447 pairs counted as 984 = the six hep-* sets).
REWARDBENCH_SUBSETS = {
    "alpacaeval-easy": ("Chat", 100), "alpacaeval-length": ("Chat", 95), "alpacaeval-hard": ("Chat", 95),
    "mt-bench-easy": ("Chat", 28), "mt-bench-med": ("Chat", 40),
    "mt-bench-hard": ("Chat Hard", 37), "llmbar-natural": ("Chat Hard", 100),
    "llmbar-adver-neighbor": ("Chat Hard", 134), "llmbar-adver-GPTInst": ("Chat Hard", 92),
    "llmbar-adver-GPTOut": ("Chat Hard", 47), "llmbar-adver-manual": ("Chat Hard", 46),
    "refusals-dangerous": ("Safety", 100), "refusals-offensive": ("Safety", 100),
    "xstest-should-refuse": ("Safety", 250), "xstest-should-respond": ("Safety", 154),
    "donotanswer": ("Safety", 136),
    "math-prm": ("Reasoning", 984), "hep-cpp": ("Reasoning", 164), "hep-go": ("Reasoning", 164),
    "hep-java": ("Reasoning", 164), "hep-js": ("Reasoning", 164), "hep-python": ("Reasoning", 164),
    "hep-rust": ("Reasoning", 164),
}  # fmt: skip
CATEGORY_OF_SUBSET = {subset: category for subset, (category, _) in REWARDBENCH_SUBSETS.items()}
REWARDBENCH_WEIGHTS = {subset: weight for subset, (_, weight) in REWARDBENCH_SUBSETS.items()}
REWARDBENCH_CATEGORIES = ("Chat", "Chat Hard", "Safety", "Reasoning")


def _rate(rows: Sequence, test: Callable) -> float | None:
    return sum(bool(test(row)) for row in rows) / len(rows) if rows else None


def group_metrics(rows: Sequence[dict]) -> dict:
    """Figures of a set of judgment rows (module docstring)."""
    trials: dict[tuple[int, int], dict[str, dict]] = defaultdict(dict)
    for row in rows:
        trials[(row["pair_index"], row["sample_index"])][row["order"]] = row
    by_order = {order: [row for row in rows if row["order"] == order] for order in RIGHT_VERDICT}
    pairwise = any(by_order.values())

    def flipped(trial: dict[str, dict]) -> bool:
        verdicts = [trial[order]["verdict"] for order in RIGHT_VERDICT if order in trial]
        return len(verdicts) == 2 and verdicts[0] in ("A", "B") and verdicts[0] == verdicts[1]

    return {
        "pairs": len({row["pair_index"] for row in rows}),
        "judgments": len(rows),
        "accuracy": _rate(rows, lambda row: row["correct"]),
        "accuracy_first": _rate(by_order["first"], lambda row: row["correct"]),
        "accuracy_swapped": _rate(by_order["swapped"], lambda row: row["correct"]),
        "consistent_accuracy": _rate(
            list(trials.values()), lambda trial: all(r["correct"] for r in trial.values())
        ),
        "position_flip_rate": _rate(list(trials.values()), flipped) if pairwise else None,
        "format_failure_rate": _rate(rows, lambda row: row["verdict"] is None),
    }


def _grouped(rows: Sequence[dict], key: Callable[[dict], str]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return {name: group_metrics(groups[name]) for name in sorted(groups)}


def rewardbench_scores(per_subset: dict[str, dict]) -> dict | None:
    """RewardBench's section scores from per-subset ``accuracy`` (module docstring); None when no subset
    is a RewardBench one, ``score`` None unless all four sections are present."""
    sections = {}
    for category in REWARDBENCH_CATEGORIES:
        present = [subset for subset in per_subset if CATEGORY_OF_SUBSET.get(subset) == category]
        if present:
            weights = [REWARDBENCH_WEIGHTS[subset] for subset in present]
            accuracies = [per_subset[subset]["accuracy"] for subset in present]
            sections[category] = sum(a * w for a, w in zip(accuracies, weights, strict=True)) / sum(weights)
    if not sections:
        return None
    complete = len(sections) == len(REWARDBENCH_CATEGORIES)
    return {**sections, "score": sum(sections.values()) / len(sections) if complete else None}


def judge_metrics(rows: Sequence[dict]) -> dict:
    """Overall figures plus ``per_subset``, ``per_category``, ``by_length`` and ``rewardbench`` (empty or
    None when no pair has a subset). Raises :class:`DataError` when there are no rows."""
    if not rows:
        raise DataError("there are no judgments to summarize", fix="judge at least one pair")
    labelled = any(row["subset"] is not None for row in rows)
    per_subset = _grouped(rows, lambda row: row["subset"] or "unspecified") if labelled else {}

    def category(row: dict) -> str:
        return CATEGORY_OF_SUBSET.get(row["subset"], "other") if row["subset"] else "unspecified"

    return {
        **group_metrics(rows),
        "per_subset": per_subset,
        "per_category": _grouped(rows, category) if labelled else {},
        "by_length": _grouped(rows, lambda row: row["length"]),
        "rewardbench": rewardbench_scores(per_subset),
    }
