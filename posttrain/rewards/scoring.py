"""The weighted rewards of a run and how one batch is scored: :class:`RewardSet`, :class:`RewardBatch`.

The total reward of sample ``i`` is

    R_i = sum over functions k with a value for i of  w_k * r_k(i)

A function's ``None`` ("not applicable", :mod:`posttrain.rewards.base`) is left out of the sum, as TRL's
``nansum`` over functions leaves out its NaN; a sample no function applies to gets ``R_i = 0``. It is no error.

A reward that raises, runs longer than ``rewards.timeout`` seconds, or gives anything but a finite real number
(``bool`` counts as 0/1) fails: for a per-sample function that sample alone; for a batched call that raised or
timed out every sample of the batch (the timeout limits one call: one sample of a per-sample function, the whole
batch of a batched one; rewards that run a model of their own are not limited); for one bad entry of a batched
result that sample. Each failure is counted per function and sample, its first message kept, and its value
replaced by ``rewards.on_error``. Scoring stops with a :class:`RewardError` only when the fraction of samples with
any failure in one batch exceeds ``rewards.max_error_rate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from posttrain.errors import PosttrainError
from posttrain.rewards.base import Reward


class RewardError(PosttrainError):
    """Reward functions failed on more samples of a batch than ``rewards.max_error_rate`` allows."""


@dataclass(frozen=True)
class BoundReward:
    """A reward of a run: its label in logs, weight, reward object (args bound), the record fields it needs, and
    whether ``rewards.timeout`` limits it."""

    label: str
    weight: float
    reward: Reward
    requires: tuple[str, ...] = ()
    time_limited: bool = True


@dataclass
class RewardBatch:
    """Rewards of one batch of samples.

    ``total[i]`` is the weighted sum over functions; ``components[label][i]`` the raw value of one function
    (``on_error`` where it failed, 0.0 where it was not applicable: its share of the total);
    ``applicable[label][i]`` whether it gave a value (or failed) rather than ``None``; ``errors[label]`` how many
    samples it failed on and ``error_examples[label]`` its first failure; ``error_rate`` the fraction of samples
    with any failure.
    """

    total: torch.Tensor
    components: dict[str, list[float]]
    errors: dict[str, int]
    error_examples: dict[str, str] = field(default_factory=dict)
    error_rate: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # metrics of the rewards' after_batch hooks
    applicable: dict[str, list[bool]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Per function: the mean raw value over the samples it applied to (``reward/<label>``), the error count
        (``.../errors``) and, when some, the samples it did not apply to (``.../not_applicable``); and the metrics
        of the stateful rewards' ``after_batch`` hooks."""
        values: dict[str, float] = dict(self.extra)
        for label, scores in self.components.items():
            applies = self.applicable.get(label) or [True] * len(scores)
            kept = [score for score, keep in zip(scores, applies, strict=True) if keep]
            values[f"reward/{label}"] = sum(kept) / len(kept) if kept else 0.0
            values[f"reward/{label}/errors"] = float(self.errors[label])
            if len(kept) < len(scores):
                values[f"reward/{label}/not_applicable"] = float(len(scores) - len(kept))
        return values


class RewardSet:
    """The weighted rewards of a run and their state (module docstring); made by
    :func:`~posttrain.rewards.registry.build_rewards`, one per run."""

    def __init__(self, rewards: Sequence[BoundReward], on_error: float = 0.0, max_error_rate: float = 0.1,
                 timeout: float | None = 30.0):
        self.rewards = list(rewards)
        self.on_error = on_error
        self.max_error_rate = max_error_rate
        self.timeout = timeout  # seconds per call; None or 0: no limit

    @property
    def labels(self) -> list[str]:
        return [reward.label for reward in self.rewards]

    def score(self, prompts: Sequence[str], completions: Sequence[str], records: Sequence[dict]) -> RewardBatch:
        """Score the batch with every reward, one call each; raise :class:`RewardError` above the error rate;
        then give every reward the scored batch (:meth:`~posttrain.rewards.base.Reward.after_batch`)."""
        if not len(prompts) == len(completions) == len(records):
            raise ValueError(
                f"{len(prompts)} prompts, {len(completions)} completions and {len(records)} records: "
                "give one prompt and one record per completion"
            )
        size = len(completions)
        totals = [0.0] * size
        failed = [False] * size
        batch = RewardBatch(total=torch.zeros(0), components={}, errors={})
        for bound in self.rewards:
            outcomes = bound.reward.score(prompts, completions, records, self.timeout if bound.time_limited else None)
            scores, applies = [], []
            batch.errors[bound.label] = 0
            for index, (value, problem) in enumerate(outcomes):
                if problem is not None:
                    value = self.on_error
                    failed[index] = True
                    batch.errors[bound.label] += 1
                    batch.error_examples.setdefault(bound.label, f"sample {index}: {problem}")
                applies.append(value is not None)
                scores.append(0.0 if value is None else value)
                totals[index] += bound.weight * scores[-1]
            batch.components[bound.label], batch.applicable[bound.label] = scores, applies
        batch.total = torch.tensor(totals, dtype=torch.float32)
        batch.error_rate = sum(failed) / size if size else 0.0
        if batch.error_rate > self.max_error_rate:
            raise _too_many_errors(batch, size, self)
        for bound in self.rewards:
            hook_metrics = bound.reward.after_batch(prompts, completions, records, batch.components[bound.label])
            batch.extra.update({f"{bound.label}/{k}": float(v) for k, v in hook_metrics.items()})
        return batch

    def prepare(self, tokenizer, policy=None) -> None:
        """Check every reward against the policy's tokenizer before training, and give ``policy`` (the model being
        trained, when the trainer samples from it) to every reward (:meth:`~posttrain.rewards.base.Reward.attach_policy`)."""
        for bound in self.rewards:
            bound.reward.prepare(tokenizer)
            if policy is not None:
                bound.reward.attach_policy(policy)

    def save_state(self, directory: str | Path) -> None:
        """Write every stateful reward's state into ``directory/rewards/<label>``."""
        for bound in self.rewards:
            bound.reward.save_state(Path(directory) / "rewards" / bound.label)

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote (rewards with no saved state keep their current one)."""
        for bound in self.rewards:
            bound.reward.load_state(Path(directory) / "rewards" / bound.label)


def _too_many_errors(batch: RewardBatch, size: int, rewards: RewardSet) -> RewardError:
    failing = [
        f"{label!r} failed on {count} (first: {batch.error_examples[label]})"
        for label, count in batch.errors.items()
        if count
    ]
    # a problem reads "raised ...", "returned ..." or, from CallTimedOut, "timed out after N s"
    slow = any(example.partition(": ")[2].startswith("timed out") for example in batch.error_examples.values())
    raise_timeout = f"raise rewards.timeout (now {rewards.timeout:g} s) if it is slow but right, " if slow else ""
    return RewardError(
        f"reward functions failed on {batch.error_rate:.0%} of {size} samples, above "
        f"rewards.max_error_rate = {rewards.max_error_rate:g}: " + "; ".join(failing),
        fix="fix the reward function named above so it returns a finite number for every sample, "
        f"{raise_timeout}or raise rewards.max_error_rate to score such samples as rewards.on_error = "
        f"{rewards.on_error:g}",
    )
