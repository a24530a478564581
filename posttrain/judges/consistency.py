"""J1's pair rewards: a judge rollout rewarded through the rollouts of the other prompt of the same task.

Whitehouse et al. 2025, "J1: Incentivizing Thinking in LLM-as-a-Judge via RL" (arXiv 2505.10320; methods.md
§7.6) trains on both orders ``(x, a, b)`` and ``(x, b, a)`` of every labelled pair in the same batch, with

* a **consistency reward**: 1 only when the judge is right in *both* orders of the pair;
* for the pointwise judge (PoS), trained from pairwise labels, a reward of 1 when the two independent scores
  ``s(x, chosen)`` and ``s(x, rejected)`` order the pair right (``s_chosen > s_rejected``; a tie is wrong).

Both are functions of two rollouts, one of each prompt of a task (:mod:`posttrain.judges.tasks` makes the two
prompts: orders ``first``/``swapped``, or responses ``chosen``/``rejected``), and the paper does not say how the
``G`` rollouts of one prompt meet the ``G`` of the other. :func:`paired_rewards` offers two pairings:

``index`` (default)
    rollout ``k`` of one prompt is paired with rollout ``k`` of the other (``k`` counted in batch order), and
    both get ``agree(side-0 value, side-1 value)``. The rollouts of a prompt are i.i.d. samples, so this is a
    random pairing, and every reward is exactly 0 or 1: "1 only if right in both orders".
``mean``
    rollout ``k`` gets the mean of ``agree`` over all rollouts of the other prompt: the expectation of the
    ``index`` reward over random pairings, with less variance (fractional values).

A task whose two prompts are not both in the batch, or whose two prompts have different numbers of rollouts, is
a :class:`~posttrain.errors.DataError`: the RL sampler keeps both prompts of a task in one step and on one
process (``rl.judge`` draws prompts in blocks of two), so this only happens to data not made by ``rl.judge``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from types import MappingProxyType

from posttrain.errors import ConfigError, DataError
from posttrain.judges.formats import get_template
from posttrain.judges.grm import GRM_TEMPLATES, parsed
from posttrain.judges.tasks import ORDERS, POINTWISE_ORDERS

PAIRINGS = ("index", "mean")
SIDES = MappingProxyType({ORDERS[0]: 0, ORDERS[1]: 1, POINTWISE_ORDERS[0]: 0, POINTWISE_ORDERS[1]: 1})


def judge_verdict(text: str, template: str) -> str | float | None:
    """The verdict of one judge output under ``template``: ``A``/``B`` for a pairwise one (the GRM formats
    ``grm``/``s2j`` by their own parser, a choice counting only in a well-formed output), a score for a pointwise
    one; None for a format failure."""
    if template in GRM_TEMPLATES:
        output = parsed(text, template)
        return output.choice if output.valid else None
    return get_template(template).parse(text)


def paired_rewards(tasks: Sequence, orders: Sequence[str], values: Sequence,
                   agree: Callable[[object, object], bool], pairing: str = "index") -> list[float]:
    """One reward per rollout: ``agree(value of the side-0 rollout, value of the side-1 rollout)`` under
    ``pairing`` (module docstring). ``tasks[i]`` is rollout ``i``'s task, ``orders[i]`` its prompt (``first`` or
    ``chosen`` is side 0, ``swapped`` or ``rejected`` side 1), ``values[i]`` what it said."""
    if pairing not in PAIRINGS:
        raise ConfigError(f"unknown pairing {pairing!r}", fix=f"use one of: {', '.join(PAIRINGS)}")
    rollouts: dict[object, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for index, (task, order) in enumerate(zip(tasks, orders, strict=True)):
        if order not in SIDES:
            raise DataError(f"rollout {index} has order {order!r}, not one of {', '.join(SIDES)}",
                            fix="build the judge prompts with rl.judge (posttrain.judges.tasks)")
        rollouts[task][SIDES[order]].append(index)
    rewards = [0.0] * len(values)
    for task, (side0, side1) in rollouts.items():
        if len(side0) != len(side1):
            raise DataError(f"task {task!r} has {len(side0)} rollouts of one prompt and {len(side1)} of the other "
                            "in this batch; a pair reward needs both prompts of a task, equally sampled",
                            fix="train with rl.judge, which keeps both prompts of a task in one step and process")
        for i, j in zip(side0, side1, strict=True):
            if pairing == "index":
                rewards[i] = rewards[j] = float(agree(values[i], values[j]))
            else:
                rewards[i] = sum(agree(values[i], values[other]) for other in side1) / len(side1)
                rewards[j] = sum(agree(values[other], values[j]) for other in side0) / len(side0)
    return rewards


def both_right(right_first: bool, right_swapped: bool) -> bool:
    """J1's consistency: the verdict right (``== gold``) in both orders."""
    return bool(right_first) and bool(right_swapped)


def ordered_right(score_chosen: float | None, score_rejected: float | None) -> bool:
    """J1's pointwise reward: both scores parsed and the chosen response's strictly higher."""
    return score_chosen is not None and score_rejected is not None and score_chosen > score_rejected
