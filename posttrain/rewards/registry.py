"""Rewards registered by name and the :class:`~posttrain.rewards.scoring.RewardSet` of a recipe.

A registered reward is a function, in either form of :mod:`posttrain.rewards.base` (per-sample
``fn(prompt, completion, record, **args) -> float`` or batched ``fn(prompts, completions, **columns)``), or a
:class:`~posttrain.rewards.base.Reward` subclass, which :func:`build_rewards` constructs with the recipe's
``args`` once per run: a stateful reward (a judge model, an online MetaRM) keeps its state in that object. The
registry holds only what is registered, never a run's state.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.config import RewardsConfig
from posttrain.errors import ConfigError, DataError, location
from posttrain.rewards.base import FunctionReward, Reward, SampleReward, check_signature, is_batched
from posttrain.rewards.custom import load_reward_function
from posttrain.rewards.scoring import BoundReward, RewardSet

ArgsCheck = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RegisteredReward:
    """A named reward function or :class:`Reward` class; ``requires`` are the record fields it reads, ``check``
    validates args, ``time_limited=False`` exempts it from ``rewards.timeout``."""

    name: str
    fn: Callable
    requires: tuple[str, ...] = ()
    check: ArgsCheck | None = None
    time_limited: bool = True  # False: runs a model of its own, bounded by its generation settings instead


REWARDS: dict[str, RegisteredReward] = {}


def register_reward(name: str, *, requires: Sequence[str] = (), check: ArgsCheck | None = None,
                    time_limited: bool = True) -> Callable[[Callable], Callable]:
    """Decorator registering a reward function or :class:`Reward` class under ``name``.

    ``requires`` names record fields every record must carry (checked before training by
    :func:`check_rewards_for_records`); ``check(args)`` raises a ConfigError for bad arguments.
    ``time_limited=False`` exempts a reward from ``rewards.timeout``: one that loads and runs a model of its own
    (a judge), whose time is bounded by its generation settings and may exceed a limit meant for plain functions.
    """

    def decorator(fn: Callable) -> Callable:
        if name in REWARDS:
            raise ConfigError(
                f"a reward named {name!r} is already registered ({REWARDS[name].fn.__qualname__})",
                fix="register the new function under another name",
            )
        REWARDS[name] = RegisteredReward(name, fn, tuple(requires), check, time_limited)
        return fn

    return decorator


# ------------------------------------------------------------------------------------------ building


def build_rewards(config: RewardsConfig, base_dir: str | Path | None = None) -> RewardSet:
    """The :class:`RewardSet` of a config, with reward objects of its own: look up names, load ``path``
    functions, bind and check args, construct stateful rewards.

    Relative ``path`` files are read from ``base_dir`` (default: the working directory). Every problem is
    a ConfigError naming ``rewards.functions[i]``.
    """
    bound: list[BoundReward] = []
    seen: dict[str, int] = {}
    for index, spec in enumerate(config.functions):
        where = f"rewards.functions[{index}]"
        if spec.name is not None:
            registered = _registered(spec.name, where)
            describe = f"reward {spec.name!r}"
        else:
            registered = RegisteredReward(spec.label, load_reward_function(spec.path, base_dir, where))
            describe = f"reward function {spec.path}"
        try:
            reward = _reward_object(registered, dict(spec.args), describe)
        except ConfigError as error:
            raise ConfigError(error.what, where=f"{where}.args", fix=error.fix) from None
        seen[spec.label] = seen.get(spec.label, 0) + 1
        label = spec.label if seen[spec.label] == 1 else f"{spec.label}_{seen[spec.label]}"
        bound.append(BoundReward(label, spec.weight, reward, registered.requires, registered.time_limited))
    return RewardSet(bound, on_error=config.on_error, max_error_rate=config.max_error_rate,
                     timeout=config.timeout)


def _reward_object(registered: RegisteredReward, args: dict[str, Any], describe: str) -> Reward:
    """The reward object of one recipe entry: the class constructed with ``args``, or a function in its form."""
    fn = registered.fn
    is_class = inspect.isclass(fn) and issubclass(fn, Reward)
    if is_class:
        _check_constructor(fn, args, describe)
    else:
        check_signature(fn, args, describe)
    if registered.check is not None:
        registered.check(args)
    if is_class:
        return fn(**args)
    return FunctionReward(fn, args) if is_batched(fn) else SampleReward(fn, args)


def _check_constructor(cls: type, args: dict[str, Any], describe: str) -> None:
    signature = inspect.signature(cls)
    try:
        signature.bind(**args)
    except TypeError as error:
        raise ConfigError(f"{describe} cannot take args {sorted(args)}: {error}",
                          fix=f"give args among: {', '.join(signature.parameters) or 'none'}") from None


def _registered(name: str, where: str) -> RegisteredReward:
    if name not in REWARDS:
        raise ConfigError(
            f"unknown reward {name!r}",
            where=f"{where}.name",
            fix=f"use one of: {', '.join(sorted(REWARDS))}, or `path: file.py:function` for your own",
        )
    return REWARDS[name]


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
