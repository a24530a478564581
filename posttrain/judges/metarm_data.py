"""MetaRM cold-start data (RM-NLHF, Wang et al. 2026, arXiv 2601.07349; methods.md §4.5).

The base GRM judges each critique-bearing pair ``k`` times in each order (sampled); every well-formed judgment
becomes one regression record ``{"text": metarm_text(question, A, B, generated critique), "label": R}`` with
``R = o + w·q`` its rule reward (:func:`posttrain.judges.grm_scores.rule_rewards`: ``q`` from a critique-similarity
backend, counted only when the verdict is right), so ``R ∈ {0, 1, 1 + w}``. Format failures are left out, as
in the paper's cold start (4 base-policy rollouts per prompt there). Train the MetaRM on the file with
``method: reward_model`` and ``reward_model.objective: regression``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from posttrain.data import encode_prompts, write_jsonl
from posttrain.errors import DataError
from posttrain.judges.grm import outcome, parsed
from posttrain.judges.grm_scores import metarm_input, rule_rewards
from posttrain.judges.pairs import preference_pairs
from posttrain.judges.similarity import build_similarity
from posttrain.judges.tasks import judge_task_prompts
from posttrain.rollout import RolloutEngine, SamplingParams
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import SamplingOptions


def metarm_records(engine: RolloutEngine, pairs: Sequence[dict], params: SamplingParams, template: str = "grm",
                   backend: str = "lexical", threshold: float | None = None, weight: float = 0.5,
                   backend_args: dict | None = None) -> tuple[list[dict], dict]:
    """Regression records and counts from ``params.n`` judgments of every pair in each order."""
    prompts = [prompt for prompt in judge_task_prompts(pairs, template) if prompt["critique"]]
    if not prompts:
        raise DataError("MetaRM cold-start data needs pairs with a `critique`", fix="give critique-bearing pairs "
                        "(task:arithmetic pairs carry one)")
    valid, failures = [], 0
    for generation in engine.generate(encode_prompts(prompts, engine.tokenizer), params):
        task = prompts[generation.prompt_index]
        output = parsed(generation.text, template)
        if output.valid:
            valid.append((output, task))
        else:
            failures += 1
    similarity = build_similarity(backend, **(backend_args or {}))
    labels = rule_rewards([o for o, _ in valid], [t for _, t in valid], similarity, threshold, weight)
    records = [{"text": metarm_input(output, task), "label": label, "outcome": outcome(output, task),
                "task_index": task["task_index"], "order": task["order"]}
               for (output, task), label in zip(valid, labels, strict=True)]
    counts = Counter(record["label"] for record in records)
    summary = {"pairs": len(pairs), "judgments": len(prompts) * params.n, "records": len(records),
               "format_failures": failures, "labels": {str(k): v for k, v in sorted(counts.items())},
               "template": template, "backend": backend}
    return records, summary


class MetarmDataOptions(SamplingOptions):
    """``posttrain judge metarm-data``: the base ``judge``, critique-bearing ``pairs``, ``k`` judgments per pair
    and order under the GRM ``template``, the critique similarity ``backend`` and its ``threshold`` (None: the
    backend's), ``n`` pairs (None: all)."""

    judge: str
    pairs: str = "task:arithmetic"
    out_dir: Path = Path("runs/metarm-data")
    n: int | None = None
    k: int = 4
    template: str = "grm"
    backend: str = "lexical"
    threshold: float | None = None


def run_metarm_data(options: MetarmDataOptions) -> dict:
    """``posttrain judge metarm-data``: write ``metarm.jsonl`` and ``summary.json`` into ``out_dir``."""
    records = preference_pairs(options.pairs, options.n, options.seed, split="train")
    engine = tool_engine(options.judge, options.engine, batch_size=options.batch_size)
    rows, summary = metarm_records(engine, records, options.sampling(options.k), options.template, options.backend,
                                   options.threshold)
    out = Path(options.out_dir)
    write_jsonl(rows, out / "metarm.jsonl")
    summary.update(judge=options.judge, source=options.pairs, k=options.k)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary

