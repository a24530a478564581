"""LoRA adapters through peft, and the reference model they give for free.

A LoRA adapter replaces a frozen weight W by W + (alpha / r) * B @ A with A (r x in) and B (out x r)
trainable, B initialized to zero so training starts from the base model. Disabling the adapter gives back
exactly the base model, which is why KL penalties and DPO can use "the same weights with the adapter
disabled" as their reference instead of a second copy of the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from posttrain.errors import ConfigError, location

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """Rank ``r``, scale numerator ``alpha``, ``dropout`` on the adapter input, and the modules to adapt
    (a list of module-name suffixes, or ``"all-linear"`` for every linear layer but the output head)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = DEFAULT_TARGET_MODULES


def lora_settings(value: Any) -> LoraSettings:
    """Read LoRA settings from a mapping, a pydantic model, a dataclass or an object with those attributes.

    Unknown keys and out-of-range values raise ``ConfigError`` naming the field.
    """
    if isinstance(value, LoraSettings):
        return value
    if isinstance(value, Mapping):
        fields = dict(value)
    elif hasattr(value, "model_dump"):
        fields = value.model_dump()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.asdict(value)
    else:
        known = [field.name for field in dataclasses.fields(LoraSettings)]
        fields = {name: getattr(value, name) for name in known if hasattr(value, name)}
    known_names = {field.name for field in dataclasses.fields(LoraSettings)}
    unknown = sorted(set(fields) - known_names)
    if unknown:
        raise ConfigError(
            f"unknown LoRA setting(s): {', '.join(unknown)}",
            where=location(field=f"lora.{unknown[0]}"),
            fix=f"use only {', '.join(sorted(known_names))}",
        )
    fields = {name: item for name, item in fields.items() if item is not None}
    if isinstance(fields.get("target_modules"), list | tuple):
        fields["target_modules"] = tuple(fields["target_modules"])
    settings = LoraSettings(**fields)
    check_lora_settings(settings)
    return settings


def check_lora_settings(settings: LoraSettings) -> None:
    """Raise ``ConfigError`` for a rank below 1, a non-positive alpha, or dropout outside [0, 1)."""
    if not isinstance(settings.r, int) or settings.r < 1:
        raise ConfigError(
            f"LoRA rank must be a positive integer, got {settings.r!r}", where=location(field="lora.r")
        )
    if not settings.alpha > 0:
        raise ConfigError(
            f"LoRA alpha must be positive, got {settings.alpha!r}", where=location(field="lora.alpha")
        )
    if not 0 <= settings.dropout < 1:
        raise ConfigError(
            f"LoRA dropout must be in [0, 1), got {settings.dropout!r}", where=location(field="lora.dropout")
        )
    if not settings.target_modules:
        raise ConfigError(
            "LoRA target_modules is empty",
            where=location(field="lora.target_modules"),
            fix=f'name the layers to adapt, e.g. {list(DEFAULT_TARGET_MODULES)} or "all-linear"',
        )


def apply_lora(model, lora: Any):
    """Wrap ``model`` with fresh LoRA adapters (peft ``get_peft_model``); only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    settings = lora_settings(lora)
    target_modules = settings.target_modules
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ConfigError(
            f"LoRA could not be applied: {error}",
            where=location(field="lora.target_modules"),
            fix="name modules that exist in this model (for Llama-style models q_proj, k_proj, v_proj, o_proj, "
            'gate_proj, up_proj, down_proj) or use "all-linear"',
        ) from None


def unwrap_distributed(model):
    """The model inside a ``DistributedDataParallel``/``DataParallel`` wrapper, else ``model`` itself."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    return model.module if isinstance(model, DataParallel | DistributedDataParallel) else model


def is_peft_model(model) -> bool:
    """True when ``model`` (or the module a distributed wrapper holds) is a peft model."""
    from peft import PeftModel

    return isinstance(unwrap_distributed(model), PeftModel)


@contextlib.contextmanager
def disabled_adapter(model) -> Iterator[Any]:
    """Yield ``model`` with its LoRA adapters switched off: the reference policy for KL and DPO.

    Inside the block the forward pass is the base model's; the adapters come back on exit, even on error.
    For a model without adapters this yields the model unchanged (a caller that needs a separate frozen
    reference must then keep its own copy).
    """
    if is_peft_model(model):
        with unwrap_distributed(model).disable_adapter():
            yield model
    else:
        yield model
