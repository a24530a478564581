"""Evaluations: math accuracy and pass@k, answer extraction and equivalence."""

from posttrain.evals.answers import answers_match, extract_answer, normalize_answer, reference_answer
from posttrain.evals.math import MathEvalResult, evaluate_math, pass_at_k, pass_k_values

__all__ = [
    "MathEvalResult",
    "answers_match",
    "evaluate_math",
    "extract_answer",
    "normalize_answer",
    "pass_at_k",
    "pass_k_values",
    "reference_answer",
]
