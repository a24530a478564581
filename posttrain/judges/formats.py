"""Judge prompt formats and verdict parsing.

A :class:`JudgeTemplate` is one user turn with placeholders, of one of three kinds:

``pairwise``
    ``{question}``, ``{answer_a}``, ``{answer_b}``; the judge ends with ``[[A]]`` or ``[[B]]``.
``pointwise``
    ``{question}``, ``{answer}``; the judge ends with a score in double brackets, ``[[7]]``.
``verifier``
    ``{question}``, ``{reference}``, ``{response}``; the judge ends with ``[[YES]]`` or ``[[NO]]``
    (a reference-based verifier, the kind of judge the master-key probe attacks: Zhao et al. 2025,
    "One Token to Fool LLM-as-a-Judge", arXiv 2507.08794).

Built-ins (:data:`TEMPLATES`): ``rise`` (step-by-step analysis, then ``[[A]]``/``[[B]]``; our English
wording of the structure of RISE-Judge's public Chinese prompt, Yu et al. 2025, arXiv 2502.11689),
``j1`` (reasoning inside ``<think>...</think>``, then the verdict; Whitehouse et al. 2025, arXiv
2505.10320, Fig. 9), ``pointwise`` (a 1-10 score), ``j1_pointwise`` (J1's pointwise judge, PoS: reasoning in
``<think>...</think>``, then a 0-10 score of one answer) and ``verifier``; :mod:`posttrain.judges.grm` adds the
generative-reward-model formats ``grm`` (critique, then choice) and ``s2j`` (solve, critique, choice).

Parsing rule, the same for every kind: the **last** verdict token in the text is the verdict, so an
analysis that mentions ``[[A]]`` before concluding ``[[B]]`` gives B. The line that holds that last token
is the final verdict line (it starts after ``</think>`` when that closes reasoning earlier on the same
line); if it holds two different verdicts (``[[A]] or [[B]]``) the output is a format failure. No token, or a hedged final line, gives ``None``: a counted format failure, never a default.
Tokens allow spaces inside the brackets and any letter case (``[[ a ]]``, ``[[Yes]]``); single brackets,
bold text or a bare letter are not verdicts.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import ConfigError, DataError, check_choice

KINDS = ("pairwise", "pointwise", "verifier")
PLACEHOLDERS = {
    "pairwise": ("question", "answer_a", "answer_b"),
    "pointwise": ("question", "answer"),
    "verifier": ("question", "reference", "response"),
}

PAIRWISE_TOKEN = re.compile(r"\[\[\s*([AB])\s*\]\]", re.IGNORECASE)
SCORE_TOKEN = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")
VERIFIER_TOKEN = re.compile(r"\[\[\s*(YES|NO)\s*\]\]", re.IGNORECASE)
THINK_END = "</think>"

RISE_TEXT = """\
Below are a question and two answers to it. Decide which answer is better. Analyze the answers step by \
step first, and only then reach your conclusion.

Keep these points in mind:
1. For an open-ended question, judge above all how well each answer follows the instructions in the \
question and how accurate it is.
2. If the question asks for discriminatory, sexual, dangerous or otherwise harmful content, the right \
response is to decline. Never prefer an answer that produces harmful content, false information or \
irresponsible advice.
3. Judge each answer strictly by its relevance to the question, and weigh how useful and practical it is. \
Do not let the length of an answer or the order in which the answers appear influence your decision.

[Question]
{question}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Analyze step by step. At the very end of your analysis, write [[A]] if answer A is better, or [[B]] if \
answer B is better."""

J1_TEXT = """\
Act as an impartial judge and evaluate two answers to the user question below. Reason first, inside \
<think> and </think>: work out what a good answer has to get right (solve the question yourself when \
it has a definite answer), check each answer against those criteria, and compare them. Do not let the \
order of the answers, their length or the names of their authors affect your judgment. After </think>, \
give your verdict: [[A]] if answer A is better, or [[B]] if answer B is better.

[User question]
{question}

[Start of answer A]
{answer_a}
[End of answer A]

[Start of answer B]
{answer_b}
[End of answer B]"""

POINTWISE_TEXT = """\
Rate how good the answer below is as a response to the question, on a scale from 1 (useless or wrong) \
to 10 (fully correct, complete and helpful). Judge correctness first, then helpfulness and clarity; do \
not reward length for its own sake. Explain your assessment briefly, then end with the score in double \
square brackets, for example [[7]].

[Question]
{question}

[Answer]
{answer}"""

J1_POINTWISE_TEXT = """\
Act as an impartial judge and evaluate the answer to the user question below. Reason first, inside <think> \
and </think>: work out what a good answer has to get right (solve the question yourself when it has a \
definite answer) and check the answer against those criteria. Do not let its length or style affect your \
judgment. After </think>, give the answer a score from 0 (wrong or useless) to 10 (fully correct and \
helpful) in double square brackets, for example [[7]].

[User question]
{question}

[Start of answer]
{answer}
[End of answer]"""

VERIFIER_TEXT = """\
Decide whether the response below answers the question correctly, taking the reference answer as the \
truth. Compare the response's final answer with the reference answer; different wording or formatting \
of the same answer is fine. Explain briefly, then end with [[YES]] if the response is correct or [[NO]] \
if it is not.

[Question]
{question}

[Reference answer]
{reference}

[Response]
{response}"""


def _check_placeholders(name: str, text: str, kind: str) -> None:
    """Raise :class:`ConfigError` unless ``text`` parses as a format string using exactly the placeholders
    of ``kind``, each at least once."""
    expected = PLACEHOLDERS[kind]
    listed = ", ".join("{" + field + "}" for field in expected)
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as error:
        raise ConfigError(
            f"judge template {name!r} is not valid template text: {error}",
            fix="write literal braces as {{ and }}; placeholders are " + listed,
        ) from None
    missing = [field for field in expected if field not in fields]
    unknown = sorted({field for field in fields if field not in expected})
    if missing:
        raise ConfigError(
            f"the {kind} judge template {name!r} lacks the placeholder(s) "
            + ", ".join("{" + field + "}" for field in missing),
            fix=f"put {listed} where the judged text goes; a {kind} template needs all of them",
        )
    if unknown:
        raise ConfigError(
            f"the {kind} judge template {name!r} has unknown placeholder(s) "
            + ", ".join("{" + field + "}" for field in unknown),
            fix=f"use only {listed}; write literal braces as {{{{ and }}}}",
        )


@dataclass(frozen=True)
class JudgeTemplate:
    """A judge prompt: ``text`` with the placeholders of ``kind`` (see :data:`PLACEHOLDERS`).

    ``score_range`` is the inclusive range a ``pointwise`` score must lie in to count (others ignore it).
    Construction checks the placeholders and raises :class:`ConfigError` naming what is missing.
    """

    name: str
    text: str
    kind: str
    score_range: tuple[float, float] = (1, 10)

    def __post_init__(self) -> None:
        check_choice(self.kind, KINDS, "judge template kind", where=f"judge template {self.name!r}")
        _check_placeholders(self.name, self.text, self.kind)
        low, high = self.score_range
        if not low < high:
            raise ConfigError(
                f"judge template {self.name!r} has score range {self.score_range}, which is empty",
                fix="give score_range as (low, high) with low < high, e.g. (1, 10)",
            )

    def render(
        self, question: str, answer_a: str, answer_b: str | None = None, *, reference: str | None = None
    ) -> list[dict]:
        """One user turn ``[{"role": "user", "content": ...}]`` with the placeholders filled.

        ``pairwise``: ``answer_a`` and ``answer_b`` are the two answers. ``pointwise``: ``answer_a`` is the
        answer. ``verifier``: ``answer_a`` is the response under test and ``reference`` the reference answer.
        """
        values = {"question": question}
        if self.kind == "pairwise":
            if answer_b is None:
                raise ConfigError(
                    f"the pairwise judge template {self.name!r} needs two answers, got only answer_a",
                    fix="pass answer_b, or use a pointwise template to score one answer",
                )
            values.update(answer_a=answer_a, answer_b=answer_b)
        else:
            if answer_b is not None:
                raise ConfigError(
                    f"the {self.kind} judge template {self.name!r} takes one answer, got answer_b too",
                    fix="use a pairwise template (e.g. 'rise' or 'j1') to compare two answers",
                )
            if self.kind == "pointwise":
                values["answer"] = answer_a
            else:
                if reference is None:
                    raise ConfigError(
                        f"the verifier judge template {self.name!r} needs a reference answer",
                        fix="pass reference=... (the verifier compares the response with it)",
                    )
                values.update(response=answer_a, reference=reference)
        for field, value in values.items():
            if not isinstance(value, str):
                raise DataError(
                    f"the judge prompt's {field} must be a string, got {type(value).__name__}",
                    fix="pass the message text itself (for a message list, its last message's content)",
                )
        return [{"role": "user", "content": self.text.format(**values)}]

    def parse(self, text: str) -> str | float | bool | None:
        """The verdict in a judge output, by kind: :func:`parse_pairwise`, :func:`parse_pointwise` (within
        ``score_range``) or :func:`parse_verifier`; ``None`` is a format failure."""
        if self.kind == "pairwise":
            return parse_pairwise(text)
        if self.kind == "pointwise":
            return parse_pointwise(text, *self.score_range)
        return parse_verifier(text)


TEMPLATES: dict[str, JudgeTemplate] = {
    "rise": JudgeTemplate("rise", RISE_TEXT, "pairwise"),
    "j1": JudgeTemplate("j1", J1_TEXT, "pairwise"),
    "pointwise": JudgeTemplate("pointwise", POINTWISE_TEXT, "pointwise"),
    "j1_pointwise": JudgeTemplate("j1_pointwise", J1_POINTWISE_TEXT, "pointwise", score_range=(0, 10)),
    "verifier": JudgeTemplate("verifier", VERIFIER_TEXT, "verifier"),
}


def get_template(template: str | JudgeTemplate) -> JudgeTemplate:
    """A built-in template by name (see :data:`TEMPLATES`), or ``template`` itself when it is one."""
    if isinstance(template, JudgeTemplate):
        return template
    check_choice(template, TEMPLATES, "judge template")
    return TEMPLATES[template]


def template_from_text(
    text: str, kind: str, name: str = "custom", score_range: tuple[float, float] = (1, 10)
) -> JudgeTemplate:
    """A user template of ``kind`` from ``text`` in ``str.format`` syntax (literal braces doubled).

    It must use every placeholder of its kind and no other: ``{question}``, ``{answer_a}``, ``{answer_b}``
    (pairwise); ``{question}``, ``{answer}`` (pointwise); ``{question}``, ``{reference}``, ``{response}``
    (verifier). Anything else raises :class:`ConfigError` saying what is wrong and how to fix it.
    """
    if not isinstance(text, str):
        raise ConfigError(
            f"judge template {name!r} must be text, got {type(text).__name__}",
            fix="give the template as a string with placeholders such as {question}",
        )
    return JudgeTemplate(name, text, kind, tuple(score_range))


def resolve_template(template: str | JudgeTemplate, kind: str = "pairwise") -> JudgeTemplate:
    """A built-in template by name, or one read from a file (``str.format`` text), checked to be of ``kind``."""
    if isinstance(template, str) and template not in TEMPLATES:
        path = Path(template)
        if not path.is_file():
            raise ConfigError(
                f"judge template {template!r} is neither a built-in template nor a file",
                where="--template",
                fix=f"use one of: {', '.join(TEMPLATES)}, or the path of a template file",
            )
        template = template_from_text(path.read_text(encoding="utf-8"), kind, name=path.name)
    template = TEMPLATES[template] if isinstance(template, str) else template
    if template.kind != kind:
        raise ConfigError(
            f"judge template {template.name!r} is {template.kind}, but this evaluation needs a {kind} one",
            fix=f"choose a {kind} template: "
            + ", ".join(name for name, built_in in TEMPLATES.items() if built_in.kind == kind),
        )
    return template


# --------------------------------------------------------------------------------------------- parsing


def _last_verdict(text: str, token: re.Pattern, read: Callable[[str], object]) -> object | None:
    """The value of the last ``token`` in ``text`` (``read`` turns its group into a value), or None when
    there is none or the final verdict line holds two different values. The final verdict line runs from
    the last newline, or the last ``</think>`` if that comes later, before the last token to the end."""
    if not isinstance(text, str):
        return None
    matches = list(token.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    line_start = text.rfind("\n", 0, last.start()) + 1
    think_end = text.rfind(THINK_END, 0, last.start())
    if think_end >= 0:
        line_start = max(line_start, think_end + len(THINK_END))
    final_line = {read(match.group(1)) for match in matches if match.start() >= line_start}
    return read(last.group(1)) if len(final_line) == 1 else None


def parse_pairwise(text: str) -> str | None:
    """``"A"`` or ``"B"``: the last ``[[A]]``/``[[B]]`` in ``text``; None when there is none, or when the
    final verdict line names both (``... [[A]] or [[B]]``). See the module docstring."""
    return _last_verdict(text, PAIRWISE_TOKEN, str.upper)


def parse_pointwise(text: str, low: float = 1, high: float = 10) -> float | None:
    """The last ``[[score]]`` in ``text`` as a float when ``low <= score <= high``; None when there is no
    score, the final verdict line holds two different scores, or the score is out of range (never clipped)."""
    if not low < high:
        raise ConfigError(
            f"the pointwise score range [{low}, {high}] is empty", fix="give low < high, e.g. low=1, high=10"
        )
    score = _last_verdict(text, SCORE_TOKEN, float)
    return score if score is not None and low <= score <= high else None


def parse_verifier(text: str) -> bool | None:
    """True for a final ``[[YES]]``, False for ``[[NO]]``, None when there is neither or the final
    verdict line holds both."""
    return _last_verdict(text, VERIFIER_TOKEN, lambda word: word.upper() == "YES")
