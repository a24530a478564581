"""LLM-as-a-judge, all of it: prompt formats (pairwise, pointwise, verifier, GRM) and verdict parsing, preference
pairs judged in both orders, judge scorers and their figures, judge models scoring responses, GRM rewards' scores,
judge tasks, RISE synthesis, judge labels, critique similarity and MetaRM. Rewards and evaluations use it.

The synthetic labelled pairs are a data task (:mod:`posttrain.data.tasks.judge_pairs`).
"""

from posttrain.judges.formats import (
    KINDS,
    PLACEHOLDERS,
    TEMPLATES,
    JudgeTemplate,
    get_template,
    parse_pairwise,
    parse_pointwise,
    parse_verifier,
    resolve_template,
    template_from_text,
)
from posttrain.judges.grm import GRMOutput, parse_grm
from posttrain.judges.pairs import (
    BothOrders,
    aggregate,
    pairwise_prompts,
    preference_pairs,
    score_both_orders,
)
from posttrain.judges.scorers import JudgeResult, judge_pairs, reward_model_pairs

__all__ = [
    "KINDS",
    "PLACEHOLDERS",
    "TEMPLATES",
    "BothOrders",
    "GRMOutput",
    "JudgeResult",
    "JudgeTemplate",
    "aggregate",
    "get_template",
    "judge_pairs",
    "pairwise_prompts",
    "parse_grm",
    "parse_pairwise",
    "parse_pointwise",
    "parse_verifier",
    "preference_pairs",
    "resolve_template",
    "reward_model_pairs",
    "score_both_orders",
    "template_from_text",
]
