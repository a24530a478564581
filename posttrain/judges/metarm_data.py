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
from posttrain.models import load_model, load_tokenizer
from posttrain.rollout import HFEngine, RolloutEngine, SamplingParams


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


def run_metarm_data(judge: str, pairs: str, out_dir: Path, n: int | None = None, k: int = 4, template: str = "grm",
                    backend: str = "lexical", threshold: float | None = None, temperature: float = 1.0,
                    max_new_tokens: int = 256, batch_size: int = 16, seed: int = 0) -> dict:
    """``posttrain judge metarm-data``: write ``metarm.jsonl`` and ``summary.json`` into ``out_dir``."""
    records = preference_pairs(pairs, n, seed, split="train")
    engine = HFEngine(load_model(judge), load_tokenizer(judge), batch_size=batch_size)
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, n=k, seed=seed)
    rows, summary = metarm_records(engine, records, params, template, backend, threshold)
    out = Path(out_dir)
    write_jsonl(rows, out / "metarm.jsonl")
    summary.update(judge=judge, source=pairs, k=k)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary

