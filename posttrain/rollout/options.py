"""Options objects of the tools (evaluations, judge data, benchmarks): one frozen pydantic model per tool, the
single place its settings are named, typed and defaulted. The CLI builds it from a command's parameters, a
pipeline stage from its ``args`` (checked before any stage runs), Python callers directly; the tool's ``run_*``
function takes it as its one argument.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, ValidationError, field_validator

from posttrain.config import Section
from posttrain.errors import ConfigError
from posttrain.rollout.base import SamplingParams


def comma_list(value: Any) -> Any:
    """``"a, b"`` as ``["a", "b"]`` (how the CLI writes a list); any other value as it is."""
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


class ToolOptions(Section):
    """A tool's options: unknown keys are errors, values are validated, the object is immutable
    (``options.model_copy(update={...})`` gives a changed copy)."""

    model_config = ConfigDict(**Section.model_config, frozen=True)

    @classmethod
    def parse(cls, values: dict[str, Any], where: Callable[[str], str] = str) -> ToolOptions:
        """The options from ``values``; the first refused key is a :class:`ConfigError` at ``where(key)`` (a CLI
        flag, or a pipeline stage's ``args.<key>``)."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            key = ".".join(str(part) for part in first["loc"][:1])
            if first["type"] == "extra_forbidden":
                raise ConfigError(f"unknown option {key!r}", where=where(key),
                                  fix=f"use one of: {', '.join(cls.model_fields)}") from None
            if first["type"] == "missing":
                raise ConfigError(f"option {key!r} is required", where=where(key), fix=f"give {key}") from None
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{key}: {message}", where=where(key), fix=f"give a valid {key}") from None


class EngineOptions(ToolOptions):
    """A generating tool's choice of rollout engine (:func:`posttrain.rollout.engines.tool_engine`): ``hf``,
    ``vllm`` or ``auto`` (vLLM when installed and the model has a weights folder it supports, else HF)."""

    engine: Literal["hf", "vllm", "auto"] = "hf"


class SamplingOptions(EngineOptions):
    """The sampling settings a generating tool shares; :meth:`sampling` gives its
    :class:`~posttrain.rollout.SamplingParams` (a subclass redeclares a field to change its default)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16
    seed: int = 0

    def sampling(self, n: int = 1) -> SamplingParams:
        """``n`` samples per prompt under these settings."""
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              n=n, seed=self.seed)


class EvalOptions(SamplingOptions):
    """An evaluation of ``model`` (a name or directory) on the first ``n`` records of ``data`` (a file or
    ``task:NAME``; None: all), writing its files into ``out_dir`` when given."""

    model: str = "smollm2-135m"
    data: str = "task:arithmetic"
    n: int | None = None
    out_dir: Path | None = None


def list_option(*names: str):
    """A validator that reads the fields ``names`` from a comma-separated string too."""
    return field_validator(*names, mode="before")(lambda cls, value: comma_list(value))
