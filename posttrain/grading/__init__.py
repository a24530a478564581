"""Grading: final-answer extraction from a solution and answer equivalence (exact rationals, else math-verify).

Used by the rewards (``math``, ``s2j``), the evaluations and the judges alike; it imports nothing of posttrain.
"""

from posttrain.grading.answers import (
    FINAL_ANSWER_MARK,
    answers_match,
    extract_answer,
    grade,
    is_math_answer,
    normalize_answer,
    reference_answer,
)

__all__ = ["FINAL_ANSWER_MARK", "answers_match", "extract_answer", "grade", "is_math_answer", "normalize_answer", "reference_answer"]
