"""Preference labels from a judge: the pairs a policy is trained on with DPO, labelled by a generative judge
instead of by their gold labels (RISE-Judge's downstream claim, Yu et al. 2025, arXiv 2502.11689: a better
judge gives better DPO data; methods.md §3).

Each pair is judged in both orders (:func:`posttrain.judges.scorers.judge_pairs`). A pair the judge prefers the
same way in both orders keeps that preference (swapped to chosen/rejected when it prefers the gold rejected
response); with ``keep: consistent`` (default) every other pair — a position flip or a format failure — is
dropped, with ``keep: first`` the first-order verdict decides whenever it parsed. The summary reports how many
labels agree with the gold ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from posttrain.data import write_jsonl
from posttrain.errors import check_choice
from posttrain.judges.pairs import preference_pairs
from posttrain.judges.scorers import judge_pairs
from posttrain.rollout import RolloutEngine, SamplingParams
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import EngineOptions

KEEP = ("consistent", "first")


def judge_labels(engine: RolloutEngine, pairs: Sequence[dict], template: str = "rise",
                 params: SamplingParams | None = None, keep: str = "consistent") -> tuple[list[dict], dict]:
    """The pairs relabelled by the judge (module docstring) and counts."""
    check_choice(keep, KEEP, "label keep rule", "--keep")
    verdicts: dict[tuple[int, str], str | None] = {}
    for row in judge_pairs(engine, pairs, template, params).rows:
        verdicts.setdefault((row["pair_index"], row["order"]), row["verdict"])
    labelled, agree, flipped, failed = [], 0, 0, 0
    for index, pair in enumerate(pairs):
        first, swapped = verdicts[(index, "first")], verdicts[(index, "swapped")]
        prefers_chosen = {"A": True, "B": False, None: None}
        votes = [prefers_chosen[first], None if swapped is None else swapped == "B"]
        if None in votes:
            failed += 1
        elif votes[0] != votes[1]:
            flipped += 1
        decided = votes[0] if votes[0] == votes[1] or keep == "first" else None
        if decided is None:
            continue
        agree += decided
        record = {key: value for key, value in pair.items() if not key.startswith("_")}
        if not decided:
            record["chosen"], record["rejected"] = pair["rejected"], pair["chosen"]
        labelled.append({**record, "judge_agrees_with_gold": decided})
    summary = {"pairs": len(pairs), "labelled": len(labelled), "agree_with_gold": agree,
               "agreement": agree / len(labelled) if labelled else None, "position_flips": flipped,
               "format_failures": failed, "keep": keep}
    return labelled, summary


class LabelOptions(EngineOptions):
    """``posttrain judge label``: the ``judge`` model, the ``pairs`` (a preference file, or ``task:arithmetic``),
    the pairwise ``template``, the ``keep`` rule (module docstring), ``n`` pairs (None: all); greedy judgments."""

    judge: str
    pairs: str
    out_dir: Path = Path("runs/judge-labels")
    template: str = "rise"
    keep: str = "consistent"
    n: int | None = None
    max_new_tokens: int = 384
    batch_size: int = 16
    seed: int = 0


def run_labeling(options: LabelOptions) -> dict:
    """``posttrain judge label``: write ``pairs.jsonl`` (judge labels), ``gold.jsonl`` (the same source pairs
    with their gold labels) and ``summary.json`` into ``out_dir``."""
    records = preference_pairs(options.pairs, options.n, options.seed, split="train")
    engine = tool_engine(options.judge, options.engine, batch_size=options.batch_size)
    labelled, summary = judge_labels(engine, records, options.template,
                                     SamplingParams(temperature=0.0, max_new_tokens=options.max_new_tokens),
                                     options.keep)
    out_dir = Path(options.out_dir)
    write_jsonl(labelled, out_dir / "pairs.jsonl")
    write_jsonl([{k: v for k, v in r.items() if not k.startswith("_")} for r in records], out_dir / "gold.jsonl")
    summary.update(judge=options.judge, source=options.pairs, template=options.template)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
