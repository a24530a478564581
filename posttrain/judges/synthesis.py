"""RISE-style judge data synthesis (Yu et al. 2025, arXiv 2502.11689; methods.md §3.1).

For labelled preference pairs, a judge model (a stronger one, or the model itself for self-evolution) writes
``k`` sampled judgments of every pair in each order (chosen shown as A, then as B;
:func:`posttrain.judges.scorers.judge_pairs`). Then, per pair:

* **SFT set** (stage 1, "judge style adaptation"): a pair is admitted when the judge is right at least once in
  *both* orders (the swap-consistency check); its first correct judgment of each order becomes an SFT record
  ``{prompt: [user turn], completion: [assistant turn]}``;
* **DPO set** (stage 2, "judgment accuracy"): a pair that is not admitted — the judge still gets it wrong in at
  least one order — gives, for each order that has both a correct judgment and one with the wrong verdict, a
  preference record ``{prompt, chosen: first correct judgment, rejected: first wrong one}``. Judgments without a
  verdict (format failures) are in neither set.

The paper gives no sample counts; one SFT record per order and one DPO pair per order keep the sets balanced
across pairs (choices documented here and in ``summary.json``). The hard pairs of a judge with a position prior
come mostly from one order, so their chosen judgments mostly end in the same letter, and DPO on them teaches that
letter (measured: docs/reproductions.md, "RISE on the testbed"); ``balance_orders`` keeps as many DPO pairs of each
order (the first ones, in pair order) as the rarer order has.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from posttrain.data.master_keys import add_masterkey_negatives
from posttrain.errors import DataError
from posttrain.judges.formats import JudgeTemplate, resolve_template
from posttrain.judges.grm import GRM_TEMPLATES, SOLVE_FIRST_LEAD
from posttrain.judges.pairs import pair_texts, preference_pairs
from posttrain.judges.scorers import judge_pairs
from posttrain.models import load_tokenizer
from posttrain.rollout import Generation, RolloutEngine, SamplingParams
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import SamplingOptions


def synthesize_judgments(engine: RolloutEngine, pairs: Sequence[dict], template: str | JudgeTemplate = "rise",
                         params: SamplingParams | None = None,
                         balance_orders: bool = False) -> tuple[list[dict], list[dict], dict]:
    """SFT records, DPO records and counts from ``params.n`` judgments per pair and order (module docstring)."""
    params = params or SamplingParams(temperature=1.0, max_new_tokens=384, n=4, seed=0)
    result = judge_pairs(engine, pairs, template, params)
    by_order: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for row in sorted(result.rows, key=lambda r: (r["pair_index"], r["order"], r["sample_index"])):
        by_order[(row["pair_index"], row["order"])].append(row)
    orders = sorted({row["order"] for row in result.rows})
    sft, dpo = [], []
    for index in range(len(pairs)):
        groups = [by_order[(index, order)] for order in orders]
        if all(any(row["correct"] for row in group) for group in groups):
            for group in groups:
                first = next(row for row in group if row["correct"])
                sft.append({"prompt": _messages(first), "completion": _reply(first["output"]), "pair_index": index,
                            "order": first["order"]})
            continue
        for group in groups:
            right = [row for row in group if row["correct"]]
            wrong = [row for row in group if not row["correct"] and row["verdict"] is not None]
            if right and wrong:
                dpo.append({"prompt": _messages(right[0]), "chosen": _reply(right[0]["output"]),
                            "rejected": _reply(wrong[0]["output"]), "pair_index": index, "order": right[0]["order"]})
    unbalanced = len(dpo)
    if balance_orders:
        dpo = balanced_by_order(dpo)
    judgments = len(result.rows)
    summary = {
        "pairs": len(pairs), "samples_per_order": params.n, "judgments": judgments,
        "correct_rate": sum(row["correct"] for row in result.rows) / max(judgments, 1),
        "format_failures": sum(row["verdict"] is None for row in result.rows),
        "admitted_pairs": len({row["pair_index"] for row in sft}), "sft_records": len(sft),
        "dpo_records": len(dpo), "dpo_records_before_balancing": unbalanced, "judge_metrics": result.metrics,
    }
    return sft, dpo, summary


def balanced_by_order(records: list[dict]) -> list[dict]:
    """The first ``m`` records of each ``order``, ``m`` the count of the rarer order (none when one is missing)."""
    counts = {order: sum(r["order"] == order for r in records) for order in ("first", "swapped")}
    keep, taken = min(counts.values()), dict.fromkeys(counts, 0)
    balanced = []
    for record in records:
        if taken[record["order"]] < keep:
            taken[record["order"]] += 1
            balanced.append(record)
    return balanced


class CritiqueJudge:
    """A reference judge for stage 1 when no stronger model is at hand: for pairs that carry a ``critique`` of
    the rejected answer (the synthetic arithmetic pairs do), it writes that critique out as a judgment with the
    right verdict, in the output format of ``style``: ``rise``/``j1`` (an analysis ending in the verdict),
    ``grm`` (``<critics>`` + ``<choice>``), ``s2j`` (the chosen solution as its own ``<solve>`` section first) or
    ``solve_first`` (the chosen solution written out, then each answer's last line and which one matches it; under
    the ``grm``/``s2j``/``j1`` templates inside their tags). A prompt is recognised by the judge prompt ``template`` (default: the template named ``style``) renders for
    each pair and order (so a short rejected answer, a master key such as ``:``, cannot be mistaken for text of the
    template).
    Honours the :class:`~posttrain.rollout.RolloutEngine` protocol; every sample is the same."""

    def __init__(self, pairs: Sequence[dict], tokenizer, style: str = "rise",
                 template: str | JudgeTemplate | None = None):
        self.tokenizer = tokenizer
        self.style = style
        self.pairs = []
        template = resolve_template(template or style, "pairwise")
        self.tags = template.name if template.name in (*GRM_TEMPLATES, "j1") else None  # solve_first in their tags
        for index, pair in enumerate(pairs):
            if not str(pair.get("critique") or "").strip():
                raise DataError("the critique judge needs a `critique` of the rejected answer in every pair",
                                where=pair.get("_where") or f"pair {index}",
                                fix="use pairs with critiques (e.g. task:arithmetic), or a judge model")
            question, chosen, rejected = pair_texts(pair, index)
            for content, right in ((template.render(question, chosen, rejected)[0]["content"], "A"),
                                   (template.render(question, rejected, chosen)[0]["content"], "B")):
                self.pairs.append((content, right, chosen, rejected, pair["critique"]))

    def generate(self, prompt_ids, params):
        generations = []
        for index, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            right, chosen, rejected, critique = next((r, c, j, k) for content, r, c, j, k in self.pairs
                                                     if content in text)
            wrong = "B" if right == "A" else "A"
            judgment = critique_judgment(self.style, right, wrong, critique, chosen, rejected, self.tags)
            generations += [Generation(index, sample, list(ids), [], [], judgment, "eos") for sample in range(params.n)]
        return generations


def critique_judgment(style: str, right: str, wrong: str, critique: str, solution: str, rejected: str = "",
                      tags: str | None = None) -> str:
    """A judgment that states ``critique`` of answer ``wrong`` and picks ``right``, in the format of ``style``:
    ``solve_first`` writes the right ``solution`` out, then the last line of each answer (A first) and which one
    matches — every verdict is then a comparison of two lines just written, with no letter decided before the
    evidence — as plain text ending in ``[[X]]``, or with ``tags`` ``grm``/``s2j``/``j1`` inside those templates'
    tags (the solution in ``<solve>`` for s2j, at the start of ``<critics>`` for grm, all the reasoning in
    ``<think>`` for j1); the other styles as
    :class:`CritiqueJudge` says."""
    if style == "solve_first":
        return _solve_first_judgment(right, wrong, critique, solution, rejected, tags)
    if style in ("grm", "s2j"):
        critics = f"<critics>Response {wrong} has an error. {critique}\nResponse {right} is correct.</critics>\n"
        solve = f"<solve>{solution}</solve>\n" if style == "s2j" else ""
        return f"{solve}{critics}<choice>[[{right}]]</choice>"
    return (f"Checking both answers step by step. Answer {wrong} has an error. {critique} "
            f"Answer {right} computes every step correctly and reaches the right result, so "
            f"Answer {right} is better.\n\n[[{right}]]")


def _solve_first_judgment(right: str, wrong: str, critique: str, solution: str, rejected: str,
                          tags: str | None) -> str:
    last = {right: solution.strip().split("\n")[-1], wrong: rejected.strip().split("\n")[-1]}
    if tags in (None, "j1"):
        reasoning = (f"Solving the question first:\n{solution}\nAnswer A ends with {last['A']}. Answer B ends with "
                     f"{last['B']}. Answer {right} matches, so Answer {right} is correct.")
        return f"<think>{reasoning}</think>\n[[{right}]]" if tags else f"{reasoning}\n\n[[{right}]]"
    comparison = (f"Response A ends with {last['A']}. Response B ends with {last['B']}. Response {right} matches; "
                  f"response {wrong} has an error. {critique}")
    if tags == "s2j":
        return f"<solve>{solution}</solve>\n<critics>{comparison}</critics>\n<choice>[[{right}]]</choice>"
    solved = "; ".join(line.strip() for line in solution.strip().split("\n") if line.strip())
    return f"<critics>{SOLVE_FIRST_LEAD} {solved}. {comparison}</critics>\n<choice>[[{right}]]</choice>"


def _messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]}]


def _reply(text: str) -> list[dict]:
    """A judgment as the assistant turn (TRL's conversational format: prompt and completion both messages)."""
    return [{"role": "assistant", "content": text}]


def write_synthesis(out_dir: Path, sft: list[dict], dpo: list[dict], summary: dict) -> None:
    """``sft.jsonl``, ``dpo.jsonl`` and ``summary.json`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sft.jsonl", sft), ("dpo.jsonl", dpo)):
        (out_dir / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                                    encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


class SynthesisOptions(SamplingOptions):
    """``posttrain judge synthesize``: the ``judge`` model (or ``critique``), the ``pairs`` (a preference file, or
    ``task:arithmetic``), ``k`` judgments per pair and order, the pairwise ``template``, ``n`` pairs (None: all);
    ``masterkey_negatives``: that fraction of master-key pairs added (:mod:`posttrain.data.master_keys`);
    ``critique_style``: the critique judge's output format (default: the template's name; ``solve_first`` for any
    pairwise template); ``balance_orders``: as many DPO pairs of each order (:func:`balanced_by_order`)."""

    judge: str
    pairs: str
    k: int = 4
    out_dir: Path = Path("runs/judge-synthesis")
    template: str = "rise"
    max_new_tokens: int = 384
    n: int | None = None
    masterkey_negatives: float = Field(0.0, ge=0, le=10)
    critique_style: Literal["rise", "j1", "grm", "s2j", "solve_first"] | None = None
    balance_orders: bool = False


def run_synthesis(options: SynthesisOptions) -> dict:
    """``posttrain judge synthesize``: load the judge (or ``critique``: :class:`CritiqueJudge`) and the pairs (a
    preference file, or ``task:arithmetic`` for synthetic training-split pairs), synthesize, write the sets; returns
    the summary."""
    judge, template = options.judge, options.template
    records = preference_pairs(options.pairs, options.n, options.seed, split="train")
    records = add_masterkey_negatives(records, options.masterkey_negatives, options.seed)
    if judge == "critique":  # the reference judge; prompts are templated with the embedded model's tokenizer
        engine = CritiqueJudge(records, load_tokenizer("smollm2-135m"), style=options.critique_style or template,
                               template=template)
    else:
        engine = tool_engine(judge, options.engine, batch_size=options.batch_size)
    sft, dpo, summary = synthesize_judgments(engine, records, template, options.sampling(options.k),
                                             balance_orders=options.balance_orders)
    summary.update(judge=judge, pairs_source=options.pairs, template=template, temperature=options.temperature,
                   masterkey_negatives=sum("masterkey" in record for record in records))
    write_synthesis(options.out_dir, sft, dpo, summary)
    return summary
