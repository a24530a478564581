"""Judge tasks as RL prompts: each labelled pair becomes two prompts, one per A/B order.

A judge task is a question, two responses, the gold winner and, optionally, a ``reference`` answer (objective
tasks) and a ``critique`` (a human or programmatic critique of the pair). Two inputs are read:

* preference pairs (``prompt``, ``chosen``, ``rejected``, any form :mod:`posttrain.data.records` reads, e.g.
  :mod:`posttrain.data.tasks.judge_pairs` or RewardBench files): the chosen response is the winner;
* explicit tasks: ``question``, ``response_a``, ``response_b``, ``winner`` (``A`` or ``B``).

:func:`judge_task_prompts` renders every task in both orders with a pairwise judge template (J1's both-order
training, Whitehouse et al. 2025, arXiv 2505.10320): prompt ``2i`` shows the winner as A, prompt ``2i + 1`` as B,
and the RL sampler keeps the two together (blocks of two), so each batch holds both orders of every task in it.
Each prompt record carries ``gold`` (the right verdict for that order), ``question``, ``response_a``,
``response_b``, ``reference``, ``critique``, ``task_index`` and ``order`` for the rewards of
:mod:`posttrain.rewards.grm` and :mod:`posttrain.rewards.j1`.

With a pointwise template (J1's PoS, e.g. ``j1_pointwise``) each task becomes two prompts that score one response
each: prompt ``2i`` the winner (``order: chosen``), prompt ``2i + 1`` the loser (``order: rejected``), kept together
in the same way; their records carry ``response`` instead of ``response_a``/``response_b`` and no ``gold``
(the ``j1_pointwise`` reward rewards the two scores for ordering the pair right). ``hide_critiques`` drops the critique of that fraction of tasks (seeded), the
RM-NLHF setting where only part of the data has human critiques.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from posttrain.data import normalize_record
from posttrain.errors import DataError, location
from posttrain.judges.formats import JudgeTemplate, get_template
from posttrain.judges.pairs import conversation_text, pair_texts

ORDERS = ("first", "swapped")
POINTWISE_ORDERS = ("chosen", "rejected")


def task_fields(record: dict, index: int) -> tuple[str, str, str, str]:
    """``(question, response_a, response_b, winner)`` of one task record (module docstring); DataError for a
    record without a gold winner, with an empty response or with two identical responses."""
    where = record.get("_where") or f"task {index}"
    if "response_a" in record or "response_b" in record or "winner" in record:
        winner = str(record.get("winner") or "").strip().upper()
        if winner not in ("A", "B"):
            raise DataError(f"the judge task has winner {record.get('winner')!r}, not 'A' or 'B'",
                            where=location(where, field="winner"),
                            fix="give every task its gold winner: winner: A or winner: B")
        texts = []
        for field in ("question", "response_a", "response_b"):
            value = record.get(field)
            text = conversation_text(value) if isinstance(value, str | list) and value else ""
            if not text.strip():
                raise DataError(f"the judge task's {field} is missing or empty", where=location(where, field=field),
                                fix=f"give a non-empty {field}")
            texts.append(text)
        if texts[1] == texts[2]:
            raise DataError("the two responses are identical, so the task has no right verdict",
                            where=location(where, field="response_b"), fix="drop the task")
        return texts[0], texts[1], texts[2], winner
    if not all(key in record for key in ("chosen", "rejected")):
        raise DataError("a judge task needs a gold winner: prompt/chosen/rejected, or question/response_a/"
                        "response_b/winner", where=where, fix="add the missing fields")
    pair = normalize_record({key: value for key, value in record.items() if key != "_where"}, "preference", where)
    question, chosen, rejected = pair_texts(pair, index)
    question = str(record.get("question") or question)
    return question, chosen, rejected, "A"


def judge_task_prompts(records: Sequence[dict], template: str | JudgeTemplate = "grm", *,
                       hide_critiques: float = 0.0, seed: int = 0) -> list[dict]:
    """Two prompt records per task, both orders (or, pointwise, both responses) adjacent (module docstring)."""
    template = get_template(template)
    if template.kind not in ("pairwise", "pointwise"):
        raise DataError(f"judge tasks need a pairwise or pointwise template, got {template.name!r} ({template.kind})",
                        fix="use grm, s2j, rise, j1, j1_pointwise or a template of your own")
    hidden = _hidden_tasks(len(records), hide_critiques, seed)
    prompts = []
    for index, record in enumerate(records):
        question, first, second, winner = task_fields(record, index)
        critique = None if index in hidden else (str(record.get("critique") or "").strip() or None)
        base = {"question": question, "reference": record.get("reference"), "critique": critique,
                "task_index": index, "subset": record.get("subset"), "_where": record.get("_where")}
        if template.kind == "pointwise":
            for order, response in zip(POINTWISE_ORDERS, (first, second) if winner == "A" else (second, first),
                                       strict=True):
                prompts.append({**base, "prompt": template.render(question, response), "response": response,
                                "gold": None, "order": order})
            continue
        loser = "B" if winner == "A" else "A"
        for order in ORDERS:
            a, b = (first, second) if order == "first" else (second, first)
            gold = winner if order == "first" else loser
            prompts.append({**base, "prompt": template.render(question, a, b), "response_a": a, "response_b": b,
                            "gold": gold, "order": order})
    return prompts


def _hidden_tasks(count: int, fraction: float, seed: int) -> set[int]:
    if not 0 <= fraction <= 1:
        raise DataError(f"hide_critiques is {fraction}, not a fraction in [0, 1]", fix="give a value in [0, 1]")
    return set(random.Random(f"hide-critiques:{seed}").sample(range(count), round(fraction * count)))
