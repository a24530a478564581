"""The teacher context of one rollout, for self-distillation with feedback that changes per rollout.

SDPO (Hübotter et al. 2026, arXiv 2601.20802; ``distill.teacher: self_feedback``, and ``method: srpo``): the
self-teacher of rollout ``y`` of prompt ``x`` is the model shown ``c(x, f)`` — ``distill.feedback.template``
filled with the question and the rollout's feedback ``f`` (and the attempt ``y`` itself where the template has
``{attempt}``, which SDPO's code leaves out: a teacher that can read ``y`` copies it) — followed by the completion
tokens ``y``; the divergence is taken on ``y``'s tokens. ``f`` joins, in ``feedback.sources`` order, the sources
available for that rollout, each worded by ``feedback.phrases``:

* ``sibling`` — the first **other** rollout of the same prompt group whose total reward is ≥
  ``success_threshold``, as a demonstration (SDPO's implicit feedback for binary rewards; as SDPO's code, a
  rollout is never its own demonstration, so a correct rollout is taught by another correct one);
* ``verdict`` — ``correct`` / ``incorrect`` from the rewards;
* ``field`` — the record's feedback text (an error message, a judge's critique) when present.

A rollout with no available source is, with ``no_feedback: skip``, left out of the distillation (SDPO's code
masks it); with ``no_feedback: prompt`` its teacher sees the student's own prompt — the plain self-teacher.

SD-Zero (He et al. 2026, arXiv 2604.12002; ``distill.teacher: self_revision``): :func:`reviser_record` is the
prompt the model, as Reviser, answers after seeing ``x``, its first answer and that answer's binary verdict.

Everything here is pure (records, texts, rewards in; records out), so the contexts are unit-tested directly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from posttrain.config import FeedbackConfig
from posttrain.data import prompt_text


@dataclass(frozen=True)
class RolloutFeedback:
    """The feedback one rollout's teacher is shown: the sources used (empty: none was available), their text,
    and the sibling shown as a demonstration (its index in the step's rollouts, or None)."""

    kinds: tuple[str, ...]
    text: str
    demonstration: int | None = None


def with_user_message(record: dict, text: str) -> dict:
    """The record with the text of its prompt (its last message, or the string) replaced by ``text``."""
    prompt = record.get("prompt")
    if isinstance(prompt, list) and prompt:
        return {**record, "prompt": [*prompt[:-1], {**prompt[-1], "content": text}]}
    return {**record, "prompt": text}


def is_correct(reward: float, threshold: float) -> bool:
    """A rollout is correct when its total reward is finite and ≥ the threshold."""
    return math.isfinite(reward) and reward >= threshold


def rollout_feedback(groups: Sequence[int], texts: Sequence[str], rewards: Sequence[float] | None,
                     field_texts: Sequence[str | None], cfg: FeedbackConfig) -> list[RolloutFeedback]:
    """The feedback of each rollout: ``groups[i]`` names rollout ``i``'s prompt (rollouts with the same value are
    siblings), ``texts[i]`` its completion, ``rewards[i]`` its total reward (None: no rewards, so neither siblings
    nor verdicts) and ``field_texts[i]`` its record's feedback text."""
    correct = None if rewards is None else [is_correct(float(r), cfg.success_threshold) for r in rewards]
    feedback = []
    for i, group in enumerate(groups):
        parts, kinds, demonstration = [], [], None
        for kind in cfg.sources:
            text = None
            if kind == "sibling" and correct is not None:
                demonstration = next((j for j, g in enumerate(groups) if g == group and j != i and correct[j]), None)
                text = None if demonstration is None else texts[demonstration]
            elif kind == "verdict" and correct is not None:
                text = cfg.verdicts[int(correct[i])]
            elif kind == "field" and field_texts[i] not in (None, ""):
                text = str(field_texts[i])
            if text is not None:
                kinds.append(kind)
                parts.append(cfg.phrase(kind).format(text=text))
        feedback.append(RolloutFeedback(tuple(kinds), cfg.separator.join(parts), demonstration))
    return feedback


def teacher_record(record: dict, attempt: str, feedback: RolloutFeedback, cfg: FeedbackConfig) -> dict:
    """The record whose prompt is the teacher's context for one rollout: ``cfg.template`` filled with the
    question, the attempt and the feedback — or the record itself (the student's prompt) when there is no
    feedback (``no_feedback: prompt``; with ``skip`` the row is not distilled and its context is not read)."""
    if not feedback.kinds:
        return record
    return with_user_message(record, cfg.template.format(prompt=prompt_text(record), attempt=attempt,
                                                         feedback=feedback.text))


def reviser_record(record: dict, attempt: str, correct: bool, cfg: FeedbackConfig) -> dict:
    """SD-Zero's Reviser prompt for one first answer: ``cfg.revision_template`` with the question, the answer and
    its verdict."""
    return with_user_message(record, cfg.revision_template.format(prompt=prompt_text(record), attempt=attempt,
                                                                  verdict=cfg.verdicts[int(correct)]))


def feedback_counts(feedback: Sequence[RolloutFeedback], distilled: Sequence[bool]) -> dict[str, float]:
    """Step statistics: ``feedback/<kind>`` rollouts shown each source, ``feedback/none`` rollouts shown none,
    ``feedback/distilled`` rollouts distilled."""
    counts = Counter(kind for item in feedback for kind in item.kinds)
    stats = {f"feedback/{kind}": float(counts.get(kind, 0)) for kind in ("sibling", "verdict", "field")}
    stats["feedback/none"] = float(sum(not item.kinds for item in feedback))
    stats["feedback/distilled"] = float(sum(distilled))
    return stats


def feedback_metrics(sums: dict[str, float], rollouts: float) -> dict[str, float]:
    """The logged share of the step's rollouts shown each feedback source (``feedback_sibling`` …,
    ``feedback_none``) and distilled (``feedback_distilled``), from the summed :func:`feedback_counts`."""
    return {key.replace("/", "_"): value / rollouts for key, value in sums.items() if key.startswith("feedback/")}
