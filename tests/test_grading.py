"""Final-answer extraction and answer equivalence."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.grading import answers_match, extract_answer, normalize_answer, reference_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        # '####' wins over everything else
        ("Half of 10 is 5, so 5 + 3 = 8.\n#### 8", "8"),
        ("We get \\boxed{3} but then\n#### 4\nextra 99", "4"),
        ("first #### 1 then #### 2", "2"),
        ("#### 1,234", "1234"),
        ("#### $18.", "18"),
        ("#### -7", "-7"),
        ("#### \\frac{1}{2}", "\\frac{1}{2}"),
        ("empty mark ####\nbut the answer is 6", "6"),
        # the last \boxed{...}, braces nested
        ("so \\boxed{12}", "12"),
        ("try \\boxed{1} then \\boxed{2}, final", "2"),
        ("x = \\boxed{\\frac{1}{2}} and then 7", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
        ("The answer: $\\boxed{12}$.", "12"),
        ("\\fbox{9} is it", "9"),
        ("\\boxed {5}", "5"),
        ("\\boxed{} leaves 4", "4"),
        ("unclosed \\boxed{5", "5"),
        ("\\boxed{1,000}", "1000"),
        # the last number
        ("so the answer is 42.", "42"),
        ("it is -3.5 and then -7", "-7"),
        ("10 apples cost $1,200.50.", "1200.50"),
        ("The total is 1,234,567 dollars", "1234567"),
        ("a list 1,2,3", "3"),
        ("value .5", ".5"),
        ("3/4 of the pie", "3/4"),
        ("subtract: 10-4", "4"),
        ("temperature (-5) then -6", "-6"),
        ("x2 is a name, 3.14 is pi", "3.14"),
        # nothing
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_rejects_non_text():
    assert extract_answer(None) is None
    assert extract_answer(42) is None


@pytest.mark.parametrize(
    "raw, expected",
    [(" 42 ", "42"), ("$42$", "42"), ("1,234.", "1234"), ("1,2", "1,2"), ("\\frac{1}{2}.", "\\frac{1}{2}")],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("Some steps.\n#### 72", "72"),
        (72, "72"),
        (0.5, "0.5"),
        (" 1,000 ", "1000"),
        ("\\frac{1}{3}", "\\frac{1}{3}"),
    ],
)
def test_reference_answer(reference, expected):
    assert reference_answer(reference) == expected


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("42", "42"),
        ("42.0", "42"),
        ("42.", "42"),
        ("1,000", "1000"),
        ("-5", "-5.00"),
        ("0.5", "1/2"),
        ("36/2", "18"),
        ("$18$", "18"),
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac{3}{4}", "0.75"),
        ("\\sqrt{4}", "2"),
        ("sqrt(2)", "\\sqrt{2}"),
        ("x+1", "1+x"),
        ("2x+3", "3+2x"),
        ("\\{1,2\\}", "\\{2,1\\}"),
        ("18 dollars", "18"),
        ("The answer is 7", "7"),
    ],
)
def test_equivalent_answers_match(predicted, reference):
    assert answers_match(predicted, reference)


@pytest.mark.parametrize(
    "predicted, reference",
    [
        ("7", "8"),
        ("42.1", "42"),
        ("-5", "5"),
        ("0.333", "1/3"),
        ("1,2", "12"),
        ("x+2", "x+1"),
        ("\\frac{1}{3}", "0.5"),
        ("abc", "42"),
        ("", "1"),
        ("1", ""),
        (None, "1"),
        ("1", None),
        (1, "1"),
        ("\\boxed{", "1"),
        ("}{}{\\frac", "\\sqrt{"),
    ],
)
def test_different_or_unusable_answers_do_not_match(predicted, reference):
    assert answers_match(predicted, reference) is False


def test_answers_match_works_outside_the_main_thread():
    results: list[bool] = []
    worker = threading.Thread(
        target=lambda: results.extend([answers_match("\\frac{1}{2}", "0.5"), answers_match("x", "y")])
    )
    worker.start()
    worker.join()
    assert results == [True, False]


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_written_integers_round_trip(value):
    with_separators = f"{value:,}"
    text = f"Step one gives 3. The result is {with_separators}."
    assert extract_answer(text) == str(value)
    assert answers_match(extract_answer(text), str(value))
    assert answers_match(f"{value}.0", str(value))
    assert not answers_match(str(value + 1), str(value))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_extraction_and_matching_never_raise(text):
    answer = extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert isinstance(answers_match(text, "1"), bool)
    assert isinstance(answers_match("1", text), bool)
