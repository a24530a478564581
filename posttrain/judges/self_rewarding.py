"""Self-rewarding DPO data: the model samples N responses per prompt, judges them itself, and its best response
against its worst becomes a preference pair (Yuan et al. 2024, "Self-Rewarding Language Models", arXiv
2401.10020). A pipeline repeats sample → judge → DPO for K iterations (``recipes/self_rewarding``); this module
writes one iteration's pairs, the training happens in the pipeline's ``dpo`` stages.

Per prompt, with the judge's scores (:mod:`posttrain.judges.self_judging`, ``judge: pointwise | pairwise |
expected`` — the last the pointwise judge's expected score, G-Eval style):
chosen = the highest-scored response, rejected = the lowest (the first of equals); a prompt whose scored
responses all score the same is a **tie** and gives no pair (Yuan et al. discard those), as does one with fewer
than two scored responses (format failures) or whose best and worst responses are the same text.

``consistency`` (CREAM, Wang et al., ICLR 2025, arXiv 2410.12735; :mod:`posttrain.judges.ranking`):
``previous`` ranks the same responses again with the previous iteration's model as the judge (``previous``:
its weights); ``orders`` compares the pairwise judge's wins with each response shown first against its wins
shown second (pairwise only). Kendall's τ between the two rankings gives each prompt's consistency rate
C = (τ + 1)/2 (``consistency_scope``: the mean over the data set, as CREAM's ``consistency_avg``, or per prompt,
its ``consistency_dyn``). ``consistency_use: weight`` writes ε = 1 − C as the pair's ``label_smoothing`` (the
DPO stage reads it with ``preference.label_smoothing_field: label_smoothing``: C on the judged order's loss,
1 − C on the reversed pair's); ``filter`` keeps only pairs of prompts with τ ≥ ``min_tau`` (an undefined τ is
dropped) and trains them as plain DPO. CREAM's previous-iteration judge is a DPO implicit reward; this loop's
judge is the LLM-as-a-judge prompt, so the previous model judges with the same prompt.

``agreement`` (SCIR, Zhou et al. 2025: a pair trains only when the model's internal rewards agree on it): each
listed signal — ``judge`` (agrees by construction), ``self_certainty``, ``laser``, ``implicit`` (the DPO implicit
reward against ``previous``) — must score the chosen response strictly above the rejected one, else the pair is
dropped and counted per disagreeing signal. SCIR also trains the internal rewards to agree (an inconsistency
penalty); this stage only filters the pairs.

Outputs in ``out_dir``: ``dpo.jsonl`` (``prompt``, ``chosen``, ``rejected`` as the prompt's format — messages or
text — plus ``label_smoothing`` and per-pair metadata: indices, scores, τ, C, signal values, and with reference
answers whether chosen and rejected are correct), ``samples.jsonl`` (every response with its scores) and
``summary.json`` (counts: pairs, ties, format failures, dropped by consistency and agreement; score spread;
accuracies of the responses, the chosen and the rejected ones when the prompts carry reference answers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from posttrain.data import encode_prompts, prompt_text, source_records
from posttrain.errors import DataError
from posttrain.grading import grade
from posttrain.judges.ranking import consistency_rates, kendall_tau
from posttrain.judges.self_judging import (
    INTERNAL_SIGNALS,
    Judged,
    expected_pointwise,
    internal_signals,
    judge_responses,
)
from posttrain.models import load_model, load_tokenizer
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import SamplingOptions, list_option

AGREEMENT_SIGNALS = ("judge", *INTERNAL_SIGNALS)


class SelfJudgeOptions(SamplingOptions):
    """``self_judge`` pipeline stage: ``model`` samples ``samples`` responses to each of the first ``n`` prompts of
    ``data`` (a prompt file, or ``task:NAME``: its ``split``) and judges them (module docstring for the rest)."""

    model: str
    data: str = "task:arithmetic"
    split: Literal["train", "held_out"] = "train"
    task_options: dict[str, Any] = {}
    n: int | None = 32
    samples: int = 4
    judge: Literal["pointwise", "pairwise", "expected"] = "pointwise"
    template: str | None = None
    judge_max_new_tokens: int = 256
    judge_prefill: str = ""
    consistency: Literal["none", "previous", "orders"] = "none"
    previous: str | None = None
    consistency_scope: Literal["dataset", "prompt"] = "dataset"
    consistency_use: Literal["weight", "filter"] = "weight"
    min_tau: float = 0.0
    agreement: list[str] = []
    reserved_token: str | None = None
    out_dir: Path = Path("runs/self-judge")

    _lists = list_option("agreement")

    @field_validator("samples")
    @classmethod
    def _at_least_two(cls, samples: int) -> int:
        if samples < 2:
            raise ValueError(f"a best-vs-worst pair needs at least 2 samples per prompt, got {samples}")
        return samples

    @field_validator("agreement")
    @classmethod
    def _signals(cls, agreement: list[str]) -> list[str]:
        unknown = [name for name in agreement if name not in AGREEMENT_SIGNALS]
        if unknown:
            raise ValueError(f"unknown agreement signal(s) {', '.join(unknown)}; use any of "
                             f"{', '.join(AGREEMENT_SIGNALS)}")
        return agreement

    @model_validator(mode="after")
    def _consistency(self) -> SelfJudgeOptions:
        needs_previous = self.consistency == "previous" or "implicit" in self.agreement
        if needs_previous and self.previous is None:
            raise ValueError("consistency: previous and the implicit agreement signal need the previous iteration's "
                             "model as `previous` (final:<stage> or a model name)")
        if not needs_previous and self.previous is not None:
            raise ValueError("`previous` is only read with consistency: previous or the implicit agreement signal")
        if self.consistency == "orders" and self.judge != "pairwise":
            raise ValueError("consistency: orders compares the two orders of the pairwise judge; set judge: pairwise")
        if self.judge_prefill and self.judge == "pairwise":
            raise ValueError("judge_prefill starts a pointwise judgment; the pairwise judge takes none")
        if self.judge == "expected" and not self.judge_prefill:
            raise ValueError("judge: expected reads the score token after judge_prefill; give one that ends where the "
                             "score begins, e.g. 'Score: [['")
        if not -1 <= self.min_tau <= 1:
            raise ValueError(f"min_tau is a Kendall tau in [-1, 1], got {self.min_tau}")
        return self


def prompt_set(data: str, n: int | None, seed: int, split: str, task_options: dict[str, Any] | None = None
               ) -> list[dict]:
    """Prompt records from a file or ``task:NAME`` (its ``split``, made with ``task_options``), the first ``n``."""
    records = source_records(data, "prompt", n, seed, split, **(task_options or {}))
    if not records:
        raise DataError("there are no prompts to sample from", where=data, fix="give at least one prompt")
    return records


def run_self_judge(options: SelfJudgeOptions) -> dict:
    """Sample, judge, pair, write (module docstring); returns the summary."""
    tokenizer = load_tokenizer(options.model)
    lm = load_model(options.model).eval()
    engine = tool_engine(options.model, options.engine, batch_size=options.batch_size, tokenizer=tokenizer, lm=lm)
    records = prompt_set(options.data, options.n, options.seed, options.split, options.task_options)
    generations = engine.generate(encode_prompts(records, tokenizer), options.sampling(options.samples))
    by_prompt = [[] for _ in records]
    for generation in sorted(generations, key=lambda g: (g.prompt_index, g.sample_index)):
        by_prompt[generation.prompt_index].append(generation)
    questions = [prompt_text(record) for record in records]
    texts = [[g.text for g in group] for group in by_prompt]
    judged = _judge(options, engine, lm, tokenizer, questions, texts)
    second = previous_lm = None
    if options.previous is not None:
        previous_lm = load_model(options.previous).eval()
    if options.consistency == "previous":
        previous = tool_engine(options.previous, options.engine, batch_size=options.batch_size, lm=previous_lm)
        second = _judge(options, previous, previous_lm, previous.tokenizer, questions, texts).scores
    elif options.consistency == "orders":
        second = [list(swapped) for _, swapped in judged.orders]
    first = [list(first) for first, _ in judged.orders] if options.consistency == "orders" else judged.scores
    taus = [None] * len(records) if second is None else [_tau(a, b) for a, b in zip(first, second, strict=True)]
    flat = [g for group in by_prompt for g in group]
    signals = internal_signals(lm, tokenizer, [g.prompt_ids for g in flat], [g.token_ids for g in flat],
                               options.agreement, options.reserved_token, options.batch_size, previous_lm)
    signals = {name: _regroup(values, texts) for name, values in signals.items()}
    pairs, summary = self_rewarding_pairs(records, texts, judged, taus, signals, options)
    _write(Path(options.out_dir), texts, judged, signals, pairs, summary)
    return summary


def _judge(options: SelfJudgeOptions, engine, lm, tokenizer, questions, texts) -> Judged:
    """The scores of ``options.judge``: generated judgments from ``engine``, or the expected score from ``lm``."""
    if options.judge == "expected":
        return expected_pointwise(lm, tokenizer, options.template, questions, texts, options.judge_prefill,
                                  options.batch_size)
    return judge_responses(engine, options.judge, options.template, questions, texts, options.judge_max_new_tokens,
                           options.judge_prefill)


def self_rewarding_pairs(records: list[dict], texts: list[list[str]], judged: Judged, taus: list[float | None],
                         signals: dict[str, list[list[float]]], options: SelfJudgeOptions) -> tuple[list[dict], dict]:
    """The best-vs-worst pairs and the summary's counts (module docstring)."""
    rates = consistency_rates(taus, options.consistency_scope) if options.consistency != "none" else [1.0] * len(texts)
    weighted = options.consistency != "none" and options.consistency_use == "weight"
    counts = dict.fromkeys(("ties", "unscored", "identical", "below_min_tau", "disagreeing"), 0)
    disagreed = dict.fromkeys(options.agreement, 0)
    pairs, spreads = [], []
    for index, (record, scores) in enumerate(zip(records, judged.scores, strict=True)):
        chosen_rejected = best_and_worst(scores)
        if chosen_rejected is None:
            counts["unscored" if sum(s is not None for s in scores) < 2 else "ties"] += 1
            continue
        chosen, rejected = chosen_rejected
        if texts[index][chosen] == texts[index][rejected]:
            counts["identical"] += 1
            continue
        if options.consistency != "none" and options.consistency_use == "filter" and (
                taus[index] is None or taus[index] < options.min_tau):
            counts["below_min_tau"] += 1
            continue
        failing = [name for name in options.agreement
                   if name != "judge" and not signals[name][index][chosen] > signals[name][index][rejected]]
        for name in failing:
            disagreed[name] += 1
        if failing:
            counts["disagreeing"] += 1
            continue
        spreads.append(scores[chosen] - scores[rejected])
        pairs.append(_pair_row(record, index, texts[index], scores, chosen, rejected, taus[index], rates[index],
                               weighted, signals))
    summary = _summary(records, texts, judged, taus, rates, pairs, spreads, counts, disagreed, options)
    return pairs, summary


def best_and_worst(scores: list[float | None]) -> tuple[int, int] | None:
    """(index of the highest score, index of the lowest), the first of equals; None when fewer than two responses
    have a score or all scores are equal (a tie)."""
    scored = [i for i, score in enumerate(scores) if score is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda i: (scores[i], -i))
    worst = min(scored, key=lambda i: (scores[i], i))
    return None if scores[best] == scores[worst] else (best, worst)


def _tau(first: list[float | None], second: list[float | None]) -> float | None:
    """Kendall's τ over the responses both judges scored."""
    both = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a is not None and b is not None]
    return kendall_tau([first[i] for i in both], [second[i] for i in both])


def _regroup(values: list[float], texts: list[list[str]]) -> list[list[float]]:
    groups, start = [], 0
    for group in texts:
        groups.append(values[start:start + len(group)])
        start += len(group)
    return groups


def _as_prompt_format(record: dict, text: str):
    """A response in the record's format: an assistant message when the prompt is messages, else the text."""
    return [{"role": "assistant", "content": text}] if isinstance(record["prompt"], list) else text


def _pair_row(record, index, texts, scores, chosen, rejected, tau, rate, weighted, signals) -> dict:
    row = {"prompt": record["prompt"], "chosen": _as_prompt_format(record, texts[chosen]),
           "rejected": _as_prompt_format(record, texts[rejected]),
           "label_smoothing": 1.0 - rate if weighted else 0.0, "prompt_index": index, "chosen_index": chosen,
           "rejected_index": rejected, "chosen_score": scores[chosen], "rejected_score": scores[rejected],
           "scores": scores, "tau": tau, "consistency": rate}
    for name, values in signals.items():
        row[f"chosen_{name}"], row[f"rejected_{name}"] = values[index][chosen], values[index][rejected]
    if record.get("reference") not in (None, ""):
        row["chosen_correct"] = grade(texts[chosen], record["reference"])[1]
        row["rejected_correct"] = grade(texts[rejected], record["reference"])[1]
    return row


def _summary(records, texts, judged, taus, rates, pairs, spreads, counts, disagreed, options) -> dict:
    defined = [tau for tau in taus if tau is not None]
    summary = {
        "model": options.model, "data": options.data, "prompts": len(records), "samples_per_prompt": options.samples,
        "responses": sum(len(group) for group in texts), "judge": options.judge, "judgments": judged.judgments,
        "format_failures": judged.format_failures,
        "format_failure_rate": judged.format_failures / judged.judgments if judged.judgments else 0.0,
        "pairs": len(pairs), "ties_dropped": counts["ties"], "unscored_dropped": counts["unscored"],
        "identical_dropped": counts["identical"],
        "mean_score_spread": sum(spreads) / len(spreads) if spreads else None,
        "consistency": options.consistency, "consistency_scope": options.consistency_scope,
        "consistency_use": options.consistency_use,
        "mean_tau": sum(defined) / len(defined) if defined else None, "undefined_tau": len(taus) - len(defined),
        "mean_consistency": sum(rates) / len(rates) if rates else None,
        "below_min_tau_dropped": counts["below_min_tau"],
        "agreement": list(options.agreement), "agreement_dropped": counts["disagreeing"],
        "disagreed_by_signal": {name: count for name, count in disagreed.items() if name != "judge"},
    }
    if all(record.get("reference") not in (None, "") for record in records):
        correct = [grade(text, record["reference"])[1] for record, group in zip(records, texts, strict=True)
                   for text in group]
        summary["response_accuracy"] = sum(correct) / len(correct)
        for side in ("chosen", "rejected"):
            summary[f"{side}_accuracy"] = sum(row[f"{side}_correct"] for row in pairs) / len(pairs) if pairs else None
    return summary


def _write(out_dir: Path, texts, judged: Judged, signals, pairs: list[dict], summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = []
    for index, group in enumerate(texts):
        for sample, text in enumerate(group):
            row = {"prompt_index": index, "sample_index": sample, "completion": text,
                   "judge_score": judged.scores[index][sample]}
            if judged.outputs:
                row["judgment"] = judged.outputs[index][sample]
            row.update({name: values[index][sample] for name, values in signals.items()})
            samples.append(row)
    for name, rows in (("dpo.jsonl", pairs), ("samples.jsonl", samples)):
        (out_dir / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                    encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
