"""Generative reward model (GRM) output formats: a critique section and a choice, optionally after a solution.

Two pairwise templates (registered in :data:`posttrain.judges.formats.TEMPLATES`, so every judge evaluation can
use them too):

``grm``
    RM-NLHF's format (Wang et al. 2026, arXiv 2601.07349; methods.md §4.2): a brief critique inside
    ``<critics>…</critics>``, then ``<choice>[[A]]</choice>`` or ``<choice>[[B]]</choice>``.
``s2j``
    S2J's solve-then-judge format (Sun et al. 2025, arXiv 2509.22099; methods.md §5.2, our wording since the
    paper's prompt is not public): the judge first solves the question inside ``<solve>…</solve>`` ending in a
    final answer, then critiques both answers against its own solution inside ``<critics>…</critics>`` and
    chooses as above.

:func:`parse_grm` reads an output as the RM-NLHF code does: the **last** match of each tag; the choice is the
``<choice>`` content, or, without that tag, the text after the critique (the fallback ``[[A]]``/``[[B]]``
search); a choice counts only when it names exactly one of A and B. A format error (reward −1 in
:mod:`posttrain.rewards.grm`) is a missing critique or choice, a critique longer than ``max_lines`` lines or
``max_chars`` characters (RM-NLHF: 4 and 1500), or, when a solution is required, a missing one.

On a judge task (:mod:`posttrain.judges.tasks`, whose records carry ``gold``, the right verdict for their order),
a well-formed output's outcome is ``o = 1[choice == gold]`` (:func:`outcome`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from posttrain.errors import DataError
from posttrain.judges.formats import TEMPLATES, JudgeTemplate, parse_pairwise

GRM_TEMPLATES = ("grm", "s2j")

RESPONSES = """
[Client Question]
{question}

[The Start of Response A]
{answer_a}
[The End of Response A]

[The Start of Response B]
{answer_b}
[The End of Response B]
"""

GRM_TEXT = """\
Please act as an impartial judge and compare two responses to the client's question below. Decide which \
response is better: check first whether each one is correct, then how well it follows the question. Do \
not let the order, the length or the style of the responses sway you.
""" + RESPONSES + """
Write a brief critique inside <critics> and </critics> (at most four lines: the decisive strengths and \
weaknesses of each response), then give your choice inside <choice> and </choice>: [[A]] if response A is \
better, [[B]] if response B is better. For example:
<critics>...</critics>
<choice>[[A]]</choice>"""

S2J_TEXT = """\
Please act as an impartial judge and compare two responses to the client's question below. First solve the \
question yourself inside <solve> and </solve>, ending your solution with a line "#### <final answer>". \
Then compare both responses with your own solution: write a brief critique inside <critics> and </critics> \
(at most four lines, naming the first wrong step of a wrong response), and give your choice inside <choice> \
and </choice>: [[A]] if response A is better, [[B]] if response B is better.
""" + RESPONSES + """
Answer in this form:
<solve>...
#### <final answer></solve>
<critics>...</critics>
<choice>[[A]]</choice>"""

MAX_CRITIQUE_LINES = 4
MAX_CRITIQUE_CHARS = 1500


@dataclass(frozen=True)
class GRMOutput:
    """A parsed GRM output: the last ``<solve>``, ``<critics>`` and ``<choice>`` contents (None when absent),
    the choice ``"A"``/``"B"`` (None when it is missing or names both), and ``error``: why the output is a
    format failure, or None when it is well formed."""

    solve: str | None
    critique: str | None
    choice: str | None
    error: str | None

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def arguments(self) -> str | None:
        """The critique's arguments about the responses (:func:`critique_arguments`): what a critique similarity
        compares with a reference critique."""
        return None if self.critique is None else critique_arguments(self.critique)


# How a solve-first critique in the grm format opens (`judge synthesize --critique-style solve_first`): the judge's
# own solution, its steps joined by "; ", ending with its "#### answer" line, before anything about the responses.
SOLVE_FIRST_LEAD = "Solving it first:"
_SOLVE_FIRST_SOLUTION = re.compile(rf"\s*{re.escape(SOLVE_FIRST_LEAD)}.*?####[^.]*\.\s*", re.DOTALL)


def critique_arguments(critique: str) -> str:
    """``critique`` without a leading solve-first solution (:data:`SOLVE_FIRST_LEAD` up to its ``#### answer.``).

    RM-NLHF's similarity judge compares the key arguments of two critiques (methods.md §4.4); the judge's own
    solution argues nothing about either response, and its numbers would swamp a numeric overlap (measured: with
    the solution kept, no right critique of the judge testbed reached the ``numbers`` threshold)."""
    match = _SOLVE_FIRST_SOLUTION.match(critique)
    return critique[match.end():] if match else critique


def last_tag(text: str, tag: str) -> str | None:
    """The stripped content of the last ``<tag>…</tag>`` in ``text``, or None."""
    matches = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL | re.IGNORECASE)
    return matches[-1].strip() if matches else None


def parse_grm(text: str, *, require_solve: bool = False, max_lines: int = MAX_CRITIQUE_LINES,
              max_chars: int = MAX_CRITIQUE_CHARS) -> GRMOutput:
    """Parse a GRM output (module docstring). Every rule that fails is named in ``error``."""
    if not isinstance(text, str):
        return GRMOutput(None, None, None, "the output is not text")
    solve, critique, choice_text = last_tag(text, "solve"), last_tag(text, "critics"), last_tag(text, "choice")
    if choice_text is None:  # fallback: a verdict token after the critique (or anywhere without one)
        tail_start = text.lower().rfind("</critics>")
        choice_text = text[tail_start:] if tail_start >= 0 else text
    choice = parse_pairwise(choice_text)
    error = None
    if require_solve and not solve:
        error = "no <solve>…</solve> section"
    elif not critique:
        error = "no <critics>…</critics> section"
    elif len(critique.splitlines()) > max_lines:
        error = f"the critique has {len(critique.splitlines())} lines, more than {max_lines}"
    elif len(critique) > max_chars:
        error = f"the critique has {len(critique)} characters, more than {max_chars}"
    elif choice is None:
        error = "no single choice [[A]] or [[B]]"
    return GRMOutput(solve, critique, choice, error)


def parsed(completion: str, template: str) -> GRMOutput:
    """The GRM output under ``template``'s rules (``s2j`` requires the solve section)."""
    return parse_grm(completion, require_solve=template == "s2j")


def outcome(output: GRMOutput, record: dict) -> float:
    """``o = 1[choice == gold]`` for a well-formed output."""
    gold = record.get("gold")
    if gold not in ("A", "B"):
        raise DataError(f"the judge task record has gold {gold!r}, not 'A' or 'B'", where=record.get("_where"),
                        fix="build GRM training prompts with rl.judge (posttrain.judges.tasks), which sets gold")
    return 1.0 if output.choice == gold else 0.0


TEMPLATES.setdefault("grm", JudgeTemplate("grm", GRM_TEXT, "pairwise"))
TEMPLATES.setdefault("s2j", JudgeTemplate("s2j", S2J_TEXT, "pairwise"))
