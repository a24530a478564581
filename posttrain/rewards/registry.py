"""Reward functions registered by name, bound with arguments and combined with weights.

A reward function is called once per sample as ``fn(prompt, completion, record, **args) -> float``:
``prompt`` is the prompt text, ``completion`` the sampled text, ``record`` the normalized prompt record
(``reference``, ``_where`` and, added by the trainer, ``finish_reason`` and ``completion_tokens``), and
``args`` the keyword arguments of the recipe. The total reward of sample ``i`` is

    R_i = sum_k  w_k * r_k(prompt_i, completion_i, record_i)

A function that raises, runs longer than ``rewards.timeout`` seconds, or returns anything but a finite real
number (``bool`` counts as 0/1), is caught for that sample alone: it is counted, its first message kept, and
its value replaced by ``rewards.on_error``. Scoring stops with a :class:`RewardError` only when the fraction
of samples with any such error in one batch exceeds ``rewards.max_error_rate``. "Raises" includes
``SystemExit`` (``sys.exit()``), ``GeneratorExit`` and any other ``BaseException``, which would otherwise end
the run as if it had finished; only an exact ``KeyboardInterrupt`` (what Ctrl-C raises) propagates and stops
the run. How a call is stopped at its time limit, and the limits of that, is described in
:mod:`posttrain.rewards.timeout`.

A registered reward may also keep state across batches (a learned reward such as the online MetaRM of
:mod:`posttrain.rewards.grm`): ``after_batch(prompts, completions, records, values, **args)`` runs after each
batch is scored and returns metrics; ``prepare(tokenizer, **args)`` checks it against the policy before
training; ``save_state(dir, **args)`` / ``load_state(dir, **args)`` put it into and take it out of checkpoints.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from posttrain.config import RewardsConfig
from posttrain.errors import ConfigError, DataError, PosttrainError, first_line, location
from posttrain.rewards.custom import load_reward_function
from posttrain.rewards.timeout import CallTimedOut, call_with_timeout

RewardFn = Callable[..., float]
ArgsCheck = Callable[[dict[str, Any]], None]


class RewardError(PosttrainError):
    """Reward functions failed on more samples of a batch than ``rewards.max_error_rate`` allows."""


# ------------------------------------------------------------------------------------------- config


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RegisteredReward:
    """A named reward function; ``requires`` are the record fields it reads, ``check`` validates args."""

    name: str
    fn: RewardFn
    requires: tuple[str, ...] = ()
    check: ArgsCheck | None = None
    after_batch: Callable[..., dict[str, float]] | None = None
    prepare: Callable[..., None] | None = None
    save_state: Callable[..., None] | None = None
    load_state: Callable[..., None] | None = None
    time_limited: bool = True  # False: runs a model of its own, bounded by its generation settings instead


REWARDS: dict[str, RegisteredReward] = {}


def register_reward(
    name: str, *, requires: Sequence[str] = (), check: ArgsCheck | None = None, time_limited: bool = True,
    **hooks: Callable,
) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering ``fn(prompt, completion, record, **args) -> float`` under ``name``.

    ``requires`` names record fields every record must carry (checked before training by
    :func:`check_rewards_for_records`); ``check(args)`` raises a ConfigError for bad arguments; ``hooks`` are
    the optional ``after_batch``, ``prepare``, ``save_state`` and ``load_state`` of a stateful reward (module
    docstring). ``time_limited=False`` exempts a reward from ``rewards.timeout``: one that loads and runs a
    model of its own (a judge), whose time is bounded by its generation settings and may exceed a limit meant
    for plain functions.
    """
    unknown = sorted(set(hooks) - {"after_batch", "prepare", "save_state", "load_state"})
    if unknown:
        raise TypeError(f"unknown reward hooks {unknown}")

    def decorator(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ConfigError(
                f"a reward named {name!r} is already registered ({REWARDS[name].fn.__qualname__})",
                fix="register the new function under another name",
            )
        REWARDS[name] = RegisteredReward(name, fn, tuple(requires), check, time_limited=time_limited, **hooks)
        return fn

    return decorator


# ------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class BoundReward:
    """A reward of a run: its label in logs, weight, function with the recipe's args bound, needs."""

    label: str
    weight: float
    fn: RewardFn
    requires: tuple[str, ...] = ()
    hooks: dict[str, Callable] = field(default_factory=dict)  # after_batch, prepare, ... with the args bound
    time_limited: bool = True  # subject to rewards.timeout


@dataclass
class RewardBatch:
    """Rewards of one batch of samples.

    ``total[i]`` is the weighted sum over functions; ``components[label][i]`` the raw value of one
    function (``on_error`` where it failed); ``errors[label]`` how many samples it failed on and
    ``error_examples[label]`` its first failure; ``error_rate`` the fraction of samples with any failure.
    """

    total: torch.Tensor
    components: dict[str, list[float]]
    errors: dict[str, int]
    error_examples: dict[str, str] = field(default_factory=dict)
    error_rate: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # metrics of the after_batch hooks

    def metrics(self) -> dict[str, float]:
        """Per function: the mean raw value (``reward/<label>``) and the error count (``.../errors``); and the
        metrics of the stateful rewards' ``after_batch`` hooks."""
        values: dict[str, float] = dict(self.extra)
        for label, scores in self.components.items():
            values[f"reward/{label}"] = sum(scores) / len(scores) if scores else 0.0
            values[f"reward/{label}/errors"] = float(self.errors[label])
        return values


class RewardSet:
    """The weighted rewards of a run (see the module docstring); made by :func:`build_rewards`."""

    def __init__(self, rewards: Sequence[BoundReward], on_error: float = 0.0, max_error_rate: float = 0.1,
                 timeout: float | None = 30.0):
        self.rewards = list(rewards)
        self.on_error = on_error
        self.max_error_rate = max_error_rate
        self.timeout = timeout  # seconds per call; None or 0: no limit

    @property
    def labels(self) -> list[str]:
        return [reward.label for reward in self.rewards]

    def score(
        self, prompts: Sequence[str], completions: Sequence[str], records: Sequence[dict]
    ) -> RewardBatch:
        """Score every sample with every function; raise :class:`RewardError` above the error rate."""
        if not len(prompts) == len(completions) == len(records):
            raise ValueError(
                f"{len(prompts)} prompts, {len(completions)} completions and {len(records)} records: "
                "give one prompt and one record per completion"
            )
        size = len(completions)
        totals = [0.0] * size
        failed = [False] * size
        components: dict[str, list[float]] = {}
        errors: dict[str, int] = {}
        examples: dict[str, str] = {}
        for reward in self.rewards:
            scores = []
            errors[reward.label] = 0
            for index in range(size):
                value, problem = _call(reward.fn, prompts[index], completions[index], records[index],
                                       self.timeout if reward.time_limited else None)
                if problem is not None:
                    value = self.on_error
                    failed[index] = True
                    errors[reward.label] += 1
                    examples.setdefault(reward.label, f"sample {index}: {problem}")
                scores.append(value)
                totals[index] += reward.weight * value
            components[reward.label] = scores
        batch = RewardBatch(
            total=torch.tensor(totals, dtype=torch.float32),
            components=components,
            errors=errors,
            error_examples=examples,
            error_rate=sum(failed) / size if size else 0.0,
        )
        if batch.error_rate > self.max_error_rate:
            raise _too_many_errors(batch, size, self)
        for reward in self.rewards:
            if "after_batch" in reward.hooks:
                hook_metrics = reward.hooks["after_batch"](prompts, completions, records, components[reward.label])
                batch.extra.update({f"{reward.label}/{k}": float(v) for k, v in hook_metrics.items()})
        return batch

    def prepare(self, tokenizer) -> None:
        """Check every stateful reward against the policy's tokenizer before training."""
        for reward in self.rewards:
            if "prepare" in reward.hooks:
                reward.hooks["prepare"](tokenizer)

    def save_state(self, directory: str | Path) -> None:
        """Write every stateful reward's state into ``directory/rewards/<label>``."""
        for reward in self.rewards:
            if "save_state" in reward.hooks:
                target = Path(directory) / "rewards" / reward.label
                target.mkdir(parents=True, exist_ok=True)
                reward.hooks["save_state"](target)

    def load_state(self, directory: str | Path) -> None:
        """Restore what :meth:`save_state` wrote (rewards with no saved state keep their current one)."""
        for reward in self.rewards:
            if "load_state" in reward.hooks:
                reward.hooks["load_state"](Path(directory) / "rewards" / reward.label)


def _call(fn: RewardFn, prompt: str, completion: str, record: dict,
          timeout: float | None = None) -> tuple[float | None, str | None]:
    """``(value, None)`` for a finite real result within ``timeout`` seconds, else ``(None, what went wrong)``.

    Every exception counts as the function's error, ``BaseException`` subclasses included (a reward that
    calls ``sys.exit()`` must not end the run as if it had succeeded), except an exact ``KeyboardInterrupt``:
    that is what Ctrl-C raises, so it propagates and stops the run. (A subclass of it cannot come from
    Ctrl-C and counts as an error; a function that itself raises a plain ``KeyboardInterrupt`` stops the run.)
    """
    try:
        value = call_with_timeout(functools.partial(fn, prompt, completion, record), timeout)
    except CallTimedOut as error:
        return None, str(error)
    except BaseException as error:
        if type(error) is KeyboardInterrupt:
            raise
        return None, f"raised {type(error).__name__}: {_message(error)}"
    if isinstance(value, bool):
        return float(value), None
    if not isinstance(value, numbers.Real):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return None, f"returned {type(value).__name__} {shown}, not a real number"
    value = float(value)
    if not math.isfinite(value):
        return None, f"returned {value}, not a finite number"
    return value, None


def _message(error: BaseException) -> str:
    """The first line of an exception's message; for ``SystemExit`` what ``sys.exit`` was called with."""
    if isinstance(error, SystemExit):
        return f"sys.exit({error.code!r}) was called in the reward function"
    return first_line(error)


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


# ------------------------------------------------------------------------------------------ building


def build_rewards(config: RewardsConfig, base_dir: str | Path | None = None) -> RewardSet:
    """The :class:`RewardSet` of a config: look up names, load ``path`` functions, bind and check args.

    Relative ``path`` files are read from ``base_dir`` (default: the working directory). Every problem is
    a ConfigError naming ``rewards.functions[i]``.
    """
    bound: list[BoundReward] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(config.functions):
        where = f"rewards.functions[{index}]"
        if spec.name is not None:
            registered = _registered(spec.name, where)
            fn, requires, check = registered.fn, registered.requires, registered.check
            time_limited = registered.time_limited
            hooks = {name: hook for name in ("after_batch", "prepare", "save_state", "load_state")
                     if (hook := getattr(registered, name)) is not None}
            describe = f"reward {spec.name!r}"
        else:
            fn, requires, check = load_reward_function(spec.path, base_dir, where), (), None
            time_limited = True
            hooks = {}
            describe = f"reward function {spec.path}"
        _check_signature(fn, spec.args, describe, where)
        if check is not None:
            try:
                check(dict(spec.args))
            except ConfigError as error:
                raise ConfigError(error.what, where=f"{where}.args", fix=error.fix) from None
        seen[spec.label] = seen.get(spec.label, 0) + 1
        label = spec.label if seen[spec.label] == 1 else f"{spec.label}_{seen[spec.label]}"
        bound.append(BoundReward(label, spec.weight, functools.partial(fn, **spec.args), requires,
                                 {name: functools.partial(hook, **spec.args) for name, hook in hooks.items()},
                                 time_limited))
    return RewardSet(bound, on_error=config.on_error, max_error_rate=config.max_error_rate,
                     timeout=config.timeout)


def _registered(name: str, where: str) -> RegisteredReward:
    if name not in REWARDS:
        raise ConfigError(
            f"unknown reward {name!r}",
            where=f"{where}.name",
            fix=f"use one of: {', '.join(sorted(REWARDS))}, or `path: file.py:function` for your own",
        )
    return REWARDS[name]


def _check_signature(fn: RewardFn, args: dict[str, Any], describe: str, where: str) -> None:
    """``fn`` must accept ``(prompt, completion, record, **args)``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have no signature to check
        return
    try:
        signature.bind("prompt", "completion", {}, **args)
    except TypeError as error:
        keywords = [
            name
            for name, parameter in list(signature.parameters.items())[3:]
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
        ]
        raise ConfigError(
            f"{describe} cannot be called as fn(prompt, completion, record, **args) with args "
            f"{sorted(args)}: {error}",
            where=f"{where}.args",
            fix=f"its parameters are {getattr(fn, '__name__', 'fn')}({', '.join(signature.parameters)}); "
            f"give args among: {', '.join(keywords) or 'none'}",
        ) from None


# ------------------------------------------------------------------------------------- data checks


def check_rewards_for_records(reward_set: RewardSet, records: Iterable[dict], source: str) -> None:
    """Before training: every record must carry the fields the rewards read (``math`` needs ``reference``).

    Raises a DataError naming how many records lack a field, the first one (``file:line`` from the
    record's ``_where``, else ``source:[index]``) and how to fix it.
    """
    needs = [(reward.label, name) for reward in reward_set.rewards for name in reward.requires]
    if not needs:
        return
    records = list(records)
    for label, name in needs:
        missing = [
            record.get("_where") or f"{source}:[{index}]"
            for index, record in enumerate(records)
            if record.get(name) is None or (isinstance(record.get(name), str) and not record[name].strip())
        ]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(records)} records of {source} have no {name!r}, which the "
                f"{label!r} reward needs (first: {missing[0]})",
                where=location(missing[0], field=name),
                fix=_fix_for(name, label),
            )


def _fix_for(name: str, label: str) -> str:
    if name == "reference":
        return (
            "give each record a `reference` (the exact final answer) or a GSM8K-style `answer` ending in "
            f"`#### <answer>`, or remove the {label!r} reward from rewards.functions"
        )
    return f"add {name!r} to each record, or remove the {label!r} reward from rewards.functions"
