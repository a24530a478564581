"""The rewards of an RL run (``rl.rewards:``, also ``distill.rewards:`` for logging): each a registered
name or a user function ``FILE.py:FUNCTION`` with a weight and arguments, and how errors and time-outs of a reward
function are treated (:mod:`posttrain.rewards` builds them).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from posttrain.config.sections import Section

PATH_FORM = "FILE.py:FUNCTION, e.g. my_rewards.py:score"


def split_reward_path(path: str) -> tuple[str, str]:
    """``"dir/my_rewards.py:score"`` → ``("dir/my_rewards.py", "score")``; a ValueError for other forms."""
    file, sep, function = path.rpartition(":")
    if not sep or not file.endswith(".py") or not function.isidentifier():
        raise ValueError(f"a reward path must be {PATH_FORM} (got {path!r})")
    return file, function


class RewardSpec(Section):
    """One reward of a recipe: a registered ``name`` or a user function ``path`` (``file.py:function``)."""

    name: str | None = None
    path: str | None = None
    weight: float = Field(1.0, allow_inf_nan=False)
    args: dict[str, Any] = {}

    @model_validator(mode="after")
    def _one_function(self) -> RewardSpec:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of `name` (a registered reward) or `path` (file.py:function)")
        if self.path is not None:
            split_reward_path(self.path)  # a ValueError names the expected form
        return self

    @property
    def label(self) -> str:
        """The reward's name in logs: the registered name, or the function name of a ``path``."""
        return self.name if self.name is not None else split_reward_path(self.path)[1]


class RewardsConfig(Section):
    """The rewards of an RL run and how failures of a reward function are treated."""

    functions: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="math")], min_length=1)
    on_error: float = Field(
        0.0, allow_inf_nan=False, description="score of a sample whose function raised or gave no number"
    )
    max_error_rate: float = Field(
        0.1, ge=0, le=1, description="fraction of samples with errors in a batch above which the run stops"
    )
    timeout: float | None = Field(
        30.0, ge=0, allow_inf_nan=False,
        description="seconds a reward function call may run before it counts as an error; 0 or null: no limit. "
        "Rewards that run a model of their own (judge, s2j, critique_similarity, metarm) are not limited",
    )
