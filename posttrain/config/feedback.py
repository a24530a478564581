"""The per-rollout teacher context of self-distillation with feedback (``distill.feedback:``): which feedback a
rollout's self-teacher is shown (SDPO), how it is worded, and the reviser prompt of ``teacher: self_revision``
(SD-Zero). :mod:`posttrain.trainers.feedback` builds the contexts.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from posttrain.config.sections import Section

FEEDBACK_SOURCES = ("sibling", "verdict", "field")
DEFAULT_PHRASES = {
    "sibling": "A correct solution:\n\n{text}",
    "verdict": "Your earlier attempt was {text}.",
    "field": "Feedback on your earlier attempt:\n\n{text}",
}


def template_fields(template: str) -> set[str]:
    """The ``{name}`` fields of a format string."""
    return set(re.findall(r"\{(\w+)\}", template))


class FeedbackConfig(Section):
    """What the self-teacher of one rollout is shown (``teacher: self_feedback``, SDPO; ``method: srpo``)."""

    sources: list[Literal["sibling", "verdict", "field"]] = Field(
        ["sibling"], min_length=1, description="feedback kinds, in the order they are written: sibling (the first "
        "other rollout of the group with reward >= success_threshold, as a demonstration), verdict (correct / "
        "incorrect from the rewards), field (the record's error text in `field`)")
    field: str = Field("feedback", description="the record field holding a rollout's feedback text (source: field)")
    success_threshold: float = Field(1.0, description="a rollout whose total reward is >= this is correct")
    template: str = Field("{prompt}\n\n{feedback}\n\nCorrectly solve the original question.",
                          description="the teacher's user message; fields {prompt}, {feedback} and optionally "
                          "{attempt} (the rollout's own completion). SDPO's code does not show the attempt: a teacher "
                          "that reads it predicts the attempt's own tokens (docs/reproductions.md, SDPO)")
    phrases: dict[str, str] = Field(DEFAULT_PHRASES, description="how each source is written into {feedback}; "
                                    "{text} is the demonstration, the verdict or the field's text")
    separator: str = Field("\n\n", description="written between the sources in {feedback}")
    verdicts: tuple[str, str] = Field(("incorrect", "correct"), description="the verdict's words for a failed and "
                                      "a correct rollout")
    no_feedback: Literal["skip", "prompt"] = Field("skip", description="a rollout with no feedback: skip (not "
                                                   "distilled, as SDPO's code) or prompt (the teacher sees the "
                                                   "student's prompt: the plain self-teacher)")
    revision_template: str = Field(
        "{prompt}\n\nYour earlier answer:\n{attempt}\n\nThat answer is {verdict}. Review it and write a corrected, "
        "complete solution.", description="teacher: self_revision — the reviser's user message; fields {prompt}, "
        "{attempt}, {verdict}")

    def phrase(self, kind: str) -> str:
        """The wording of one source (the recipe's, else the default)."""
        return self.phrases.get(kind, DEFAULT_PHRASES[kind])

    @model_validator(mode="after")
    def _templates(self) -> FeedbackConfig:
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"distill.feedback.sources lists a kind twice: {self.sources}")
        fields = template_fields(self.template)
        if not {"prompt", "feedback"} <= fields or fields - {"prompt", "feedback", "attempt"}:
            raise ValueError("distill.feedback.template must contain {prompt} and {feedback} and may contain "
                             f"{{attempt}}; it has {sorted(fields)}")
        unknown = sorted(set(self.phrases) - set(FEEDBACK_SOURCES))
        if unknown:
            raise ValueError(f"distill.feedback.phrases has unknown kinds {unknown}; use {list(FEEDBACK_SOURCES)}")
        for kind, phrase in self.phrases.items():
            if template_fields(phrase) - {"text"}:
                raise ValueError(f"distill.feedback.phrases.{kind} may only contain {{text}} (got {phrase!r})")
        revision = template_fields(self.revision_template)
        if not {"prompt", "attempt"} <= revision or revision - {"prompt", "attempt", "verdict"}:
            raise ValueError("distill.feedback.revision_template must contain {prompt} and {attempt} and may "
                             f"contain {{verdict}}; it has {sorted(revision)}")
        return self
