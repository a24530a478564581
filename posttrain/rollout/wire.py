"""The JSON a rollout server and its client exchange: generations, sampling settings, prompts, the metadata of
the tensors a weight update broadcasts (with the dtypes it may carry), and errors; and the error a failed exchange
raises on the client. The protocol itself is described in :mod:`posttrain.rollout.server`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from posttrain import errors
from posttrain.errors import ConfigError, DataError, PosttrainError
from posttrain.rollout.base import Generation, SamplingParams

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class RolloutServerError(PosttrainError):
    """The rollout server cannot be reached, answered with a fault, or a weight sync failed."""


def generation_to_json(generation: Generation) -> dict:
    return dataclasses.asdict(generation)


def generation_from_json(data: dict) -> Generation:
    return Generation(**{field.name: data[field.name] for field in dataclasses.fields(Generation)})


def params_to_json(params: SamplingParams) -> dict:
    return dataclasses.asdict(params)


def params_from_json(data: Any) -> SamplingParams:
    if not isinstance(data, dict):
        raise ConfigError("params must be a JSON object of sampling settings", where="params",
                          fix="send e.g. {\"temperature\": 0, \"max_new_tokens\": 32}")
    known = {field.name for field in dataclasses.fields(SamplingParams)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown sampling setting {unknown[0]!r}", where=f"params.{unknown[0]}",
                          fix=f"use only: {', '.join(sorted(known))}")
    return SamplingParams(**data)


def prompts_from_json(data: Any) -> list[list[int]]:
    def is_token(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(data, list) or not all(isinstance(p, list) and all(map(is_token, p)) for p in data):
        raise DataError("prompt_ids must be a list of lists of token ids (integers >= 0)", where="prompt_ids",
                        fix="send tokenized prompts, e.g. {\"prompt_ids\": [[1, 2, 3]]}")
    return data


def tensor_specs_from_json(data: Any) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    if not isinstance(data, list) or not data:
        raise DataError("tensors must be a non-empty list of {name, shape, dtype}", where="tensors",
                        fix="send the metadata of the tensors to broadcast")
    specs = []
    for index, item in enumerate(data):
        where = f"tensors[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise DataError("each tensor needs a string name", where=where, fix="send {name, shape, dtype}")
        shape = item.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise DataError(f"tensor {item['name']!r} has an invalid shape {shape!r}", where=f"{where}.shape",
                            fix="send the shape as a list of integers >= 0")
        dtype = DTYPES.get(item.get("dtype"))
        if dtype is None:
            raise DataError(f"tensor {item['name']!r} has an unsupported dtype {item.get('dtype')!r}",
                            where=f"{where}.dtype", fix=f"use one of: {', '.join(DTYPES)}")
        specs.append((item["name"], tuple(shape), dtype))
    return specs


def error_to_json(error: BaseException) -> dict:
    if isinstance(error, PosttrainError):
        return {"type": type(error).__name__, "what": error.what, "where": error.where, "fix": error.fix}
    return {"type": type(error).__name__, "what": f"{type(error).__name__}: {errors.first_line(error)}",
            "where": None, "fix": "see the rollout server's log for the traceback"}


def error_from_json(data: Any, url: str, status: int) -> PosttrainError:
    """The :class:`PosttrainError` a server's error answer stands for (its own class when posttrain has it)."""
    if not isinstance(data, dict) or "what" not in data:
        return RolloutServerError(f"the rollout server at {url} answered HTTP {status}: {str(data)[:200]}",
                                  fix="check that the URL points at `posttrain rollout serve`")
    kind = getattr(errors, str(data.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, PosttrainError)):
        kind = RolloutServerError
    what = str(data["what"])
    return kind(f"rollout server {url}: {what}", where=data.get("where"), fix=data.get("fix"))
