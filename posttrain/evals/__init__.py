"""Evaluations: math accuracy and pass@k (answers graded by :mod:`posttrain.grading`), judges, best-of-N,
self-rewarding, sharpness, master keys, the solve-to-judge gap."""

from posttrain.evals.math import MathEvalResult, evaluate_math, pass_at_k, pass_k_values

__all__ = ["MathEvalResult", "evaluate_math", "pass_at_k", "pass_k_values"]
