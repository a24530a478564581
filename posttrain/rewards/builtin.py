"""Built-in rewards: ``math`` (answer correctness), ``format`` (a regex) and ``length`` (over-long penalty).

They are cheap, stateless per-sample functions, called through the adapter of :mod:`posttrain.rewards.base`, so
a sample they cannot score (no reference, no token count) fails alone.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from posttrain.errors import ConfigError, DataError
from posttrain.grading import FINAL_ANSWER_MARK, grade
from posttrain.rewards.registry import register_reward

# The final line the arithmetic task teaches (posttrain/data/tasks/arithmetic.py): "#### <integer>".
FINAL_ANSWER_PATTERN = rf"(?:\A|\n){FINAL_ANSWER_MARK} -?\d+\s*\Z"


@register_reward("math", requires=("reference",))
def math_reward(prompt: str, completion: str, record: dict) -> float:
    """1.0 when the completion's final answer equals the record's reference answer, else 0.0.

    The answer is read and compared by :func:`posttrain.grading.grade` (``#### x``, else the last
    ``\\boxed{x}``, else the last number; exact rationals, else math-verify).
    """
    reference = record.get("reference")
    if reference is None or (isinstance(reference, str) and not reference.strip()):
        raise DataError(
            "the record has no reference answer",
            where=record.get("_where"),
            fix="give the record a `reference` or a GSM8K-style `answer` ending in `#### <answer>`",
        )
    return 1.0 if grade(completion, reference)[1] else 0.0


def _check_format_args(args: dict[str, Any]) -> None:
    pattern = args.get("pattern", FINAL_ANSWER_PATTERN)
    if not isinstance(pattern, str):
        raise ConfigError(
            f"the format reward's pattern must be a string, got {type(pattern).__name__}",
            fix="quote the regular expression in the recipe",
        )
    try:
        re.compile(pattern, re.DOTALL)
    except re.error as error:
        raise ConfigError(
            f"the format reward's pattern {pattern!r} is not a valid regular expression: {error}",
            fix="correct the pattern (Python `re` syntax)",
        ) from None


@register_reward("format", check=_check_format_args)
def format_reward(prompt: str, completion: str, record: dict, pattern: str = FINAL_ANSWER_PATTERN) -> float:
    """1.0 when ``re.search(pattern, completion, re.DOTALL)`` finds a match, else 0.0.

    The default pattern accepts a completion whose last line is the task's final-answer mark,
    ``#### <integer>`` (trailing whitespace allowed), as the arithmetic task's solutions end.
    """
    return 1.0 if re.search(pattern, completion, re.DOTALL) else 0.0


def _check_length_args(args: dict[str, Any]) -> None:
    max_tokens, buffer, penalty = args["max_tokens"], args["buffer"], args.get("penalty", 1.0)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(
            f"the length reward's max_tokens must be an integer >= 1, got {max_tokens!r}",
            fix="set args.max_tokens to L_max, the length beyond which the full penalty applies "
            "(usually the rollout's max_new_tokens)",
        )
    if isinstance(buffer, bool) or not isinstance(buffer, int) or not 0 <= buffer <= max_tokens:
        raise ConfigError(
            f"the length reward's buffer must be an integer in [0, max_tokens = {max_tokens}], got {buffer!r}",
            fix="set args.buffer to the number of tokens before max_tokens where the penalty ramps up",
        )
    if isinstance(penalty, bool) or not isinstance(penalty, numbers.Real) or not 0 <= penalty < math.inf:
        raise ConfigError(
            f"the length reward's penalty must be a finite number >= 0, got {penalty!r}",
            fix="set args.penalty to the size of the punishment beyond max_tokens (default 1)",
        )


@register_reward("length", check=_check_length_args)
def length_reward(
    prompt: str, completion: str, record: dict, *, max_tokens: int, buffer: int, penalty: float = 1.0
) -> float:
    """DAPO's soft over-long punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13), scaled by ``penalty``.

    With ``L`` = ``record["completion_tokens"]``, ``L_max`` = ``max_tokens``, ``L_cache`` = ``buffer``::

        0                                  if L <= L_max - L_cache
        penalty * (L_max - L_cache - L) / L_cache   if L_max - L_cache < L <= L_max
        -penalty                           if L > L_max

    Matches TRL 1.16 ``get_soft_overlong_punishment`` for ``penalty = 1``.
    """
    length = record.get("completion_tokens")
    if isinstance(length, bool) or not isinstance(length, numbers.Integral):
        raise DataError(
            f"the record's completion_tokens is {length!r}, not a token count",
            where=record.get("_where"),
            fix="the trainer must set record['completion_tokens'] to the completion's length in tokens",
        )
    if length <= max_tokens - buffer:
        return 0.0
    if length <= max_tokens:
        return penalty * (max_tokens - buffer - length) / buffer
    return -penalty
