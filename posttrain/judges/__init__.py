"""LLM-as-a-judge: prompt formats (pairwise, pointwise, verifier, GRM), verdict parsing, both-order scoring and synthetic labelled pairs."""

from posttrain.judges.formats import (
    KINDS,
    PLACEHOLDERS,
    TEMPLATES,
    BothOrders,
    JudgeTemplate,
    aggregate,
    get_template,
    pairwise_prompts,
    parse_pairwise,
    parse_pointwise,
    parse_verifier,
    score_both_orders,
    template_from_text,
)
from posttrain.judges.grm import GRMOutput, parse_grm
from posttrain.judges.pairs import ERROR_KINDS, corrupt_solution, make_preference_pairs

__all__ = [
    "ERROR_KINDS",
    "KINDS",
    "PLACEHOLDERS",
    "TEMPLATES",
    "BothOrders",
    "GRMOutput",
    "JudgeTemplate",
    "aggregate",
    "corrupt_solution",
    "get_template",
    "make_preference_pairs",
    "pairwise_prompts",
    "parse_grm",
    "parse_pairwise",
    "parse_pointwise",
    "parse_verifier",
    "score_both_orders",
    "template_from_text",
]
