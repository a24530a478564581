"""The ``judge`` reward: a generative judge model scores each completion (LLM-as-a-judge as an RL reward).

A thin reward over :class:`posttrain.judges.judge_model.JudgeModel`, whose modes it takes (``mode`` argument):
``verifier`` (default; the record's ``reference`` answer), ``pointwise`` (a 1–10 score mapped to [0, 1]) or
``pairwise`` (the completion against the record's reference solution, ``answer_field``, default ``answer``, in
both orders). The whole batch is judged in one generation call. A judgment without a parsable verdict, or a record
without its reference, fails that sample alone, which the reward set counts as an error (scored ``on_error``; the
run stops above ``max_error_rate``). Each run's reward owns its judge: the model, loaded on first use, and the
cache of its greedy judgments, which is saved with every checkpoint (``judgments.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posttrain.data import prompt_text
from posttrain.errors import ConfigError, DataError, check_choice
from posttrain.judges.formats import get_template
from posttrain.judges.judge_model import DEFAULT_TEMPLATES, MODES, JudgeModel
from posttrain.rewards.base import Reward
from posttrain.rewards.registry import register_reward

STATE_FILE = "judgments.json"


def _check_judge_args(args: dict[str, Any]) -> None:
    mode = args.get("mode", "verifier")
    check_choice(mode, MODES, "judge reward mode", "rewards.functions[judge].args.mode")
    template = get_template(args.get("template", DEFAULT_TEMPLATES[mode]))
    if template.kind != mode:
        raise ConfigError(f"judge reward mode {mode!r} needs a {mode} template, got {template.name!r} "
                          f"({template.kind})", where="rewards.functions[judge].args.template",
                          fix=f"use the built-in {DEFAULT_TEMPLATES[mode]!r} or another {mode} template")


@register_reward("judge", time_limited=False, requires=("reference",), check=_check_judge_args)
class JudgeReward(Reward):
    """The judge's score of every completion in [0, 1] (module docstring)."""

    def __init__(self, model: str, mode: str = "verifier", template: str | None = None, answer_field: str = "answer",
                 max_new_tokens: int = 256, engine: str = "hf"):
        self.judge = JudgeModel(model, engine=engine)
        self.mode, self.max_new_tokens = mode, max_new_tokens
        self.template = get_template(template or DEFAULT_TEMPLATES[mode])
        self.field = answer_field if mode == "pairwise" else "reference"

    def __call__(self, prompts, completions, **columns):
        size = len(completions)
        references = [str(value or "") for value in columns.get(self.field) or [None] * size]
        wheres = columns.get("_where") or [None] * size
        records = [{"prompt": p} for p in columns.get("prompt") or [None] * size]
        questions = [prompt or prompt_text(record) for prompt, record in zip(prompts, records, strict=True)]
        judged = [index for index, reference in enumerate(references) if reference.strip()]
        scores = self.judge.scores(self.mode, self.template, [questions[i] for i in judged],
                                   [completions[i] for i in judged], [references[i] for i in judged],
                                   self.max_new_tokens)
        values: list = [DataError(f"the record has no {self.field!r} for the judge reward", where=where,
                                  fix=f"give every record a {self.field!r}") for where in wheres]
        for index, score in zip(judged, scores, strict=True):
            values[index] = score
        return values

    def save_state(self, directory: Path) -> None:
        """The judge's cached judgments into ``directory/judgments.json``."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / STATE_FILE).write_text(json.dumps(self.judge.state_dict()), encoding="utf-8")

    def load_state(self, directory: Path) -> None:
        path = Path(directory) / STATE_FILE
        if path.is_file():
            self.judge.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
