"""J1's rewards for RL of an LLM judge (Whitehouse et al. 2025, arXiv 2505.10320; methods.md §7.6).

The prompts are judge tasks in both orders (or, pointwise, both responses), two per labelled pair, kept in the
same step by ``rl.judge`` (:mod:`posttrain.judges.tasks`). Verdicts are parsed by the template's own rule
(:func:`posttrain.judges.consistency.judge_verdict`; ``j1``'s: the last ``[[A]]``/``[[B]]``).

``j1_verdict`` — verdict correctness, per rollout: ``1[verdict == gold]``; a format failure scores
``format_penalty`` (default 0: J1 found a format reward gave no gain).

``j1_consistency`` — 1 only when the judge is right in both orders of the pair, rollouts of the two orders paired
by ``pairing`` (``index``: rollout k with rollout k; ``mean``: against all of the other order's; see
:mod:`posttrain.judges.consistency`).

``j1_pointwise`` — J1's PoS: 1 when the pointwise scores of the pair's chosen and rejected responses, each from its
own prompt, order them right (``s_chosen > s_rejected``, both parsed; a tie is wrong), paired the same way.

J1 sums the rewards it uses; the recipes weight ``j1_verdict`` and ``j1_consistency`` 1:1.
"""

from __future__ import annotations

from typing import Any

from posttrain.errors import ConfigError
from posttrain.judges.consistency import PAIRINGS, both_right, judge_verdict, ordered_right, paired_rewards
from posttrain.judges.formats import get_template
from posttrain.rewards.base import batched
from posttrain.rewards.registry import register_reward

PAIR_FIELDS = ("task_index", "order")


def _checker(kind: str, default: str, reward: str):
    def check(args: dict[str, Any]) -> None:
        template = get_template(args.get("template", default))
        if template.kind != kind:
            raise ConfigError(f"the {reward} reward needs a {kind} template, got {template.name!r} ({template.kind})",
                              where=f"rewards.functions[{reward}].args.template",
                              fix=f"use e.g. {default!r}, the same template as rl.judge.template")
        if args.get("pairing", "index") not in PAIRINGS:
            raise ConfigError(f"unknown pairing {args['pairing']!r}", where=f"rewards.functions[{reward}].args.pairing",
                              fix=f"use one of: {', '.join(PAIRINGS)}")
    return check


@register_reward("j1_verdict", requires=("gold",), check=_checker("pairwise", "j1", "j1_verdict"))
def verdict_correct(prompt: str, completion: str, record: dict, template: str = "j1",
                    format_penalty: float = 0.0) -> float:
    """``1[verdict == gold]``, or ``format_penalty`` without a verdict (module docstring)."""
    verdict = judge_verdict(completion, template)
    return format_penalty if verdict is None else float(verdict == record["gold"])


@register_reward("j1_consistency", requires=("gold", *PAIR_FIELDS),
                 check=_checker("pairwise", "j1", "j1_consistency"))
@batched
def consistency(prompts, completions, gold, task_index, order, template: str = "j1",
                pairing: str = "index") -> list[float]:
    """1 only when right in both orders (module docstring)."""
    right = [judge_verdict(text, template) == answer for text, answer in zip(completions, gold, strict=True)]
    return paired_rewards(task_index, order, right, both_right, pairing)


@register_reward("j1_pointwise", requires=PAIR_FIELDS, check=_checker("pointwise", "j1_pointwise", "j1_pointwise"))
@batched
def pointwise_order(prompts, completions, task_index, order, template: str = "j1_pointwise",
                    pairing: str = "index") -> list[float]:
    """1 when the two responses' scores order the pair right (module docstring)."""
    scores = [judge_verdict(text, template) for text in completions]
    return paired_rewards(task_index, order, scores, ordered_right, pairing)
