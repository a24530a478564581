"""Reward objects: what a run's :class:`~posttrain.rewards.scoring.RewardSet` holds and calls once per batch.

The convention is TRL's (``GRPOTrainer(reward_funcs=...)``): a reward is called on a whole batch as
``reward(prompts=..., completions=..., **columns) -> list[float | None]``, where ``columns`` are the prompt
records' fields as lists over the batch (``columns["reference"][i]`` is sample ``i``'s reference; a field a
record lacks is ``None`` there; the trainer adds ``finish_reason`` and ``completion_tokens``). ``None`` means
"not applicable to this sample": it adds nothing to the weighted total and is no error. An entry may also be an
exception instance: that sample alone failed, for that reason (counted as an error like a raise).

User functions take one of two forms; which one is decided by this rule (:func:`is_batched`):

1. an explicit marker wins: a function decorated with :func:`batched` (or with ``fn.batched = True``) is
   batched, one with ``fn.batched = False`` is per-sample;
2. otherwise a function with a parameter named ``completions`` is batched (TRL passes it by that name);
3. every other function has the per-sample form ``fn(prompt, completion, record, **args) -> float`` and is
   called once per sample through the adapter :class:`SampleReward`, unchanged.

A batched function receives ``prompts``, ``completions`` and every column by keyword, or only those it names
when it takes no ``**kwargs``; the recipe's ``args`` come last and win over a column of the same name.

Stateful rewards (a judge model and its judgment cache, an online MetaRM, a loaded scalar reward model) are
:class:`Reward` subclasses: each run's :func:`~posttrain.rewards.registry.build_rewards` makes its own objects, so
two runs in one process share nothing, and the set checkpoints them through :meth:`Reward.save_state` /
:meth:`Reward.load_state`.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError, first_line
from posttrain.rewards.timeout import CallTimedOut, call_with_timeout

# One sample's outcome: (value, None) scored; (None, None) not applicable; (None, problem) failed.
Outcome = tuple[float | None, str | None]


def batched(fn: Callable) -> Callable:
    """Mark ``fn`` as a batched reward ``fn(prompts, completions, **columns) -> list[float | None]``."""
    fn.batched = True
    return fn


def is_batched(fn: Callable) -> bool:
    """The form rule of the module docstring: the ``batched`` marker, else a parameter named ``completions``."""
    marker = getattr(fn, "batched", None)
    if isinstance(marker, bool):
        return marker
    try:
        return "completions" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read: the per-sample form, as before
        return False


def columns_of(records: Sequence[dict]) -> dict[str, list]:
    """The records' fields as columns over the batch, in order of first appearance (``None`` where missing)."""
    names = dict.fromkeys(name for record in records for name in record)
    return {name: [record.get(name) for record in records] for name in names}


def rows_of(columns: dict[str, Sequence], size: int) -> list[dict]:
    """The ``size`` per-sample records of ``columns`` (the inverse of :func:`columns_of`, missing fields None)."""
    return [{name: values[index] for name, values in columns.items()} for index in range(size)]


class Reward:
    """A batched reward of a run: ``reward(prompts, completions, **columns) -> list[float | None]``.

    Subclasses implement ``__call__``; a stateful one overrides the hooks, which the run calls: :meth:`prepare`
    (and, in on-policy training, :meth:`attach_policy`) before training, :meth:`after_batch` after every scored batch, :meth:`save_state`/:meth:`load_state` with
    every checkpoint.
    """

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence) -> list:
        raise NotImplementedError

    def score(self, prompts: Sequence[str], completions: Sequence[str], records: Sequence[dict],
              timeout: float | None) -> list[Outcome]:
        """One outcome per sample from one call on the whole batch, limited to ``timeout`` seconds: a call that
        raises or runs out of time fails every sample, an entry that is no number fails its sample."""
        columns = columns_of(records)
        values, problem = guarded(lambda: self(prompts, completions, **columns), timeout)
        if problem is None and (not isinstance(values, list | tuple) or len(values) != len(completions)):
            size = f"{len(values)} values" if isinstance(values, list | tuple) else shown(values)
            problem = f"returned {size} for {len(completions)} completions, not one number or None per completion"
        if problem is not None:
            return [(None, problem)] * len(completions)
        return [checked(value, allow_none=True) for value in values]

    def prepare(self, tokenizer) -> None:
        """Check the reward against the policy's tokenizer before training (default: nothing to check)."""

    def attach_policy(self, model) -> None:
        """Keep the policy being trained, for a reward that scores with it (``likelihood``); the on-policy trainer
        calls it once before training (default: the reward does not read the policy)."""

    def after_batch(self, prompts: Sequence[str], completions: Sequence[str], records: Sequence[dict],
                    values: Sequence[float]) -> dict[str, float]:
        """Learn from a scored batch; metrics to log as ``<label>/<key>`` (default: none)."""
        return {}

    def save_state(self, directory: Path) -> None:
        """Write the state a resumed run needs into ``directory`` (default: no state)."""

    def load_state(self, directory: Path) -> None:
        """Restore what :meth:`save_state` wrote, when ``directory`` holds it (default: no state)."""


class FunctionReward(Reward):
    """A user's batched function with the recipe's ``args`` (keyword rule in the module docstring)."""

    def __init__(self, fn: Callable, args: dict[str, Any]):
        self.fn, self.args = fn, dict(args)
        parameters = inspect.signature(fn).parameters.values()
        self.takes_all = any(p.kind is p.VAR_KEYWORD for p in parameters)
        self.names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def __call__(self, prompts, completions, **columns):
        given = {**columns, "prompts": prompts, "completions": completions}
        keywords = given if self.takes_all else {name: given[name] for name in self.names & set(given)}
        return self.fn(**{**keywords, **self.args})


class SampleReward(Reward):
    """The adapter of the per-sample form ``fn(prompt, completion, record, **args) -> float``.

    :meth:`score` calls ``fn`` once per sample with the sample's own record, each call limited to the timeout on
    its own, so one slow or failing sample costs only itself.
    """

    def __init__(self, fn: Callable, args: dict[str, Any]):
        self.fn, self.args = fn, dict(args)

    def __call__(self, prompts, completions, **columns):
        rows = rows_of(columns, len(completions))
        return [self.fn(p, c, r, **self.args) for p, c, r in zip(prompts, completions, rows, strict=True)]

    def score(self, prompts, completions, records, timeout):
        outcomes = []
        for prompt, completion, record in zip(prompts, completions, records, strict=True):
            value, problem = guarded(functools.partial(self.fn, prompt, completion, record, **self.args), timeout)
            outcomes.append((None, problem) if problem is not None else checked(value, allow_none=False))
        return outcomes


def guarded(call: Callable[[], Any], timeout: float | None) -> tuple[Any, str | None]:
    """``(result, None)``, or ``(None, what went wrong)`` when ``call`` raised or ran past ``timeout`` seconds.

    Every exception counts as the reward's error, ``BaseException`` subclasses included (a reward that calls
    ``sys.exit()`` must not end the run as if it had succeeded), except an exact ``KeyboardInterrupt``: that is
    what Ctrl-C raises, so it propagates and stops the run. (A subclass of it cannot come from Ctrl-C and counts
    as an error.) How the call is stopped at its limit: :mod:`posttrain.rewards.timeout`.
    """
    try:
        return call_with_timeout(call, timeout), None
    except CallTimedOut as error:
        return None, str(error)
    except BaseException as error:
        if type(error) is KeyboardInterrupt:
            raise
        return None, raised(error)


def raised(error: BaseException) -> str:
    """``raised <type>: <first line>``; for ``SystemExit`` what ``sys.exit`` was called with."""
    if isinstance(error, SystemExit):
        return f"raised SystemExit: sys.exit({error.code!r}) was called in the reward function"
    return f"raised {type(error).__name__}: {first_line(error)}"


def checked(value: Any, allow_none: bool) -> Outcome:
    """A finite real number (``bool`` counts as 0/1) is a value; ``None`` is "not applicable" where
    ``allow_none`` (the batched form); an exception instance is its sample's failure; anything else a problem."""
    if value is None and allow_none:
        return None, None
    if isinstance(value, BaseException):
        return None, raised(value)
    if isinstance(value, bool):
        return float(value), None
    if not isinstance(value, numbers.Real):
        return None, f"returned {shown(value)}, not a real number"
    value = float(value)
    if not math.isfinite(value):
        return None, f"returned {value}, not a finite number"
    return value, None


def shown(value: Any) -> str:
    """The type and a short repr of a returned value, for error messages."""
    text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"{type(value).__name__} {text}"


def check_signature(fn: Callable, args: dict[str, Any], describe: str) -> None:
    """A ConfigError unless ``fn`` accepts the recipe's ``args``: a per-sample function as
    ``fn(prompt, completion, record, **args)``, a batched one as ``fn(prompts=, completions=, **args)``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have no signature to check
        return
    try:
        if is_batched(fn):
            signature.bind_partial(**args)
        else:
            signature.bind("prompt", "completion", {}, **args)
    except TypeError as error:
        form = "fn(prompts, completions, **columns, **args)" if is_batched(fn) else \
            "fn(prompt, completion, record, **args)"
        skipped = 0 if is_batched(fn) else 3
        keywords = [name for name, parameter in list(signature.parameters.items())[skipped:]
                    if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
        raise ConfigError(
            f"{describe} cannot be called as {form} with args {sorted(args)}: {error}",
            fix=f"its parameters are {getattr(fn, '__name__', 'fn')}({', '.join(signature.parameters)}); "
            f"give args among: {', '.join(keywords) or 'none'}",
        ) from None
