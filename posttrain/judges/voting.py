"""Judge-side test-time scaling: one verdict from several sampled judgments (J1, Whitehouse et al. 2025, arXiv
2505.10320, and Chan et al. 2025, arXiv 2505.11875; methods.md §7.6–7.7).

From ``K`` sampled judgments of the same prompt:

* pairwise: the **majority verdict** (:func:`majority_verdict`) — the verdict most of the parsed judgments
  give; judgments without a verdict do not vote; a tie, or no parsed judgment, gives None (no verdict, counted
  wrong like a format failure, never defaulted);
* pointwise: the **mean score** of the parsed judgments (:func:`mean_score`; None when none parsed).

:func:`voted_rows` turns the per-sample judgment rows of a scorer (:mod:`posttrain.judges.scorers`,
:mod:`posttrain.judges.pointwise`) into one row per pair and order (``sample_index`` 0, ``votes`` = K), so
:func:`posttrain.judges.metrics.group_metrics` gives accuracy, both-order consistency and position flips of the
voted judge.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from posttrain.judges.consistency import ordered_right
from posttrain.judges.pairs import RIGHT_VERDICT


def majority_verdict(verdicts: Sequence[str | None]) -> str | None:
    """The verdict most parsed judgments give; None on a tie or when none parsed (module docstring)."""
    counts = Counter(verdict for verdict in verdicts if verdict is not None).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def mean_score(scores: Sequence[float | None]) -> float | None:
    """The mean of the parsed scores; None when none parsed."""
    parsed = [score for score in scores if score is not None]
    return sum(parsed) / len(parsed) if parsed else None


def pointwise_verdict(score_chosen: float | None, score_rejected: float | None) -> str | None:
    """``chosen``, ``rejected`` or ``tie`` by the two scores; None when one is missing."""
    if score_chosen is None or score_rejected is None:
        return None
    if score_chosen == score_rejected:
        return "tie"
    return "chosen" if score_chosen > score_rejected else "rejected"


def voted_rows(rows: Sequence[dict]) -> list[dict]:
    """One row per (pair, order) with the voted verdict and whether it is right (module docstring). Pairwise rows
    carry ``verdict``; pointwise ones (order ``single``) ``chosen_score`` and ``rejected_score``."""
    groups: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["pair_index"], row["order"])].append(row)
    voted = []
    for (_, order), group in groups.items():
        common = {key: group[0][key] for key in ("pair_index", "order", "subset", "length")}
        if order in RIGHT_VERDICT:
            verdict = majority_verdict([row["verdict"] for row in group])
            voted.append({**common, "sample_index": 0, "votes": len(group), "verdict": verdict,
                          "correct": verdict == RIGHT_VERDICT[order]})
        else:
            chosen = mean_score([row["chosen_score"] for row in group])
            rejected = mean_score([row["rejected_score"] for row in group])
            voted.append({**common, "sample_index": 0, "votes": len(group), "chosen_score": chosen,
                          "rejected_score": rejected, "verdict": pointwise_verdict(chosen, rejected),
                          "correct": ordered_right(chosen, rejected)})
    return voted
