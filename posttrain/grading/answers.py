"""Final-answer extraction from a model's solution text, and answer equivalence.

``extract_answer`` looks, in order of priority, for a GSM8K-style ``#### answer`` line, then for the
last ``\\boxed{...}`` (nested braces allowed), then for the last number in the text. ``answers_match``
compares a predicted answer with a reference: plain numbers are compared exactly as rationals
(``18.0`` = ``18`` = ``36/2``); anything else goes through math-verify's symbolic equivalence. ``grade``
does both for a whole solution against a reference (a bare answer or a GSM8K-style solution).
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

from math_verify import parse, verify

FINAL_ANSWER_MARK = "####"
BOX_COMMANDS = ("\\boxed", "\\fbox")

# A number: optional sign (not when it reads as a binary minus after a word, digit or bracket),
# digits with optional thousands separators, then an optional decimal part or an integer denominator.
NUMBER = re.compile(
    r"(?:(?<![\w)\]])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+|/\d+)?"
    r"|(?:(?<![\w)\]])-)?\.\d+"
)
PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
PROSE_WORD = re.compile(r"(?:^|\s)[A-Za-z]{3,}(?:\s|$|[.,;:!?])")


def normalize_answer(answer: str) -> str:
    """Trim what surrounds an answer without changing it: whitespace, ``$`` signs, a trailing period,
    and the thousands separators of a plain number (``$1,234.`` -> ``1234``)."""
    text = answer.strip().strip("$").strip()
    text = text.rstrip(".").rstrip()
    if PLAIN_NUMBER.fullmatch(text):
        text = text.replace(",", "")
    return text


def _after_final_answer_mark(text: str) -> str | None:
    """The rest of the line after the last ``####``, or None when there is none or it is empty."""
    position = text.rfind(FINAL_ANSWER_MARK)
    if position < 0:
        return None
    answer = normalize_answer(text[position + len(FINAL_ANSWER_MARK) :].split("\n", 1)[0])
    return answer or None


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` whose braces close, or None."""
    starts = sorted(
        (match.start(), match.end())
        for command in BOX_COMMANDS
        for match in re.finditer(re.escape(command), text)
    )
    for _, command_end in reversed(starts):
        position = command_end
        while position < len(text) and text[position] == " ":
            position += 1
        if position >= len(text) or text[position] != "{":
            continue
        depth = 0
        for index in range(position, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    answer = normalize_answer(text[position + 1 : index])
                    if answer:
                        return answer
                    break
    return None


def _last_number(text: str) -> str | None:
    matches = NUMBER.findall(text)
    return normalize_answer(matches[-1]) if matches else None


def extract_answer(text: str) -> str | None:
    """The final answer in a solution: ``#### x``, else the last ``\\boxed{x}``, else the last number.

    Returns None when the text holds none of them (a parse failure).
    """
    if not isinstance(text, str):
        return None
    for extractor in (_after_final_answer_mark, _last_boxed, _last_number):
        answer = extractor(text)
        if answer is not None:
            return answer
    return None


def reference_answer(reference: str | int | float) -> str:
    """The final answer of a reference: what follows ``####`` in a full GSM8K-style solution, else the
    reference itself (numbers are written as text), normalized like extracted answers."""
    text = str(reference)
    return _after_final_answer_mark(text) or normalize_answer(text)


def _as_rational(answer: str) -> Fraction | None:
    """The exact value of a plain number (integer, decimal or integer fraction), else None."""
    if not PLAIN_NUMBER.fullmatch(answer):
        return None
    return Fraction(answer.replace(",", ""))


def _forms(answer: str) -> tuple[str, str]:
    """The texts math-verify is given for an answer, in order: read as a math expression (inside ``$...$``:
    bare LaTeX and expressions such as ``1+x`` are not recognized otherwise), unless it contains a word of
    prose (``18 dollars``), which is parsed as text so the number is found. The other form is the fallback."""
    wrapped = f"${answer}$"
    return (answer, wrapped) if PROSE_WORD.search(answer) else (wrapped, answer)


def _parse_timeout() -> int | None:
    """math-verify's timeouts use SIGALRM, which only the main thread may set: 5 s there, else none."""
    return 5 if threading.current_thread() is threading.main_thread() else None


def _symbolic(answer: str, timeout: int | None) -> list:
    """Parse with math-verify, trying the :func:`_forms` of ``answer`` in turn."""
    for form in _forms(answer):
        parsed = parse(form, parsing_timeout=timeout)
        if parsed:
            return parsed
    return []


def is_math_answer(answer: str) -> bool:
    """Whether an answer (normalized here) reads as a number or a math expression, which is what
    :func:`answers_match` can compare reliably: a plain number, or text from which math-verify parses an
    expression. Not: empty text; text math-verify finds nothing in (its parse result is empty, or holds only
    its fall-back copy of the string, as for ``???``); and prose with no number or formula in it (``Paris``,
    ``yes``), which math-verify finds only inside ``$...$``, read as a product of letters (P·a·r·i·s).
    """
    answer = normalize_answer(answer) if isinstance(answer, str) else ""
    if not answer:
        return False
    if _as_rational(answer) is not None:
        return True
    forms = _forms(answer)[:1] if PROSE_WORD.search(answer) else _forms(answer)
    timeout = _parse_timeout()
    return any(not isinstance(item, str) for form in forms for item in parse(form, parsing_timeout=timeout))


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Whether ``predicted`` is equivalent to ``reference``. Never raises: unusable input gives False."""
    try:
        if not isinstance(predicted, str) or not isinstance(reference, str):
            return False
        predicted, reference = normalize_answer(predicted), normalize_answer(reference)
        if not predicted or not reference:
            return False
        predicted_value, reference_value = _as_rational(predicted), _as_rational(reference)
        if predicted_value is not None and reference_value is not None:
            return predicted_value == reference_value
        timeout = _parse_timeout()
        gold = _symbolic(reference, timeout)
        target = _symbolic(predicted, timeout)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=timeout))
    except Exception:
        return False


def grade(solution: str, reference: str | int | float) -> tuple[str | None, bool]:
    """The final answer extracted from ``solution`` and whether it matches the final answer of ``reference``."""
    extracted = extract_answer(solution)
    return extracted, extracted is not None and answers_match(extracted, reference_answer(reference))
