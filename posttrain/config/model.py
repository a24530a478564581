"""The model a run trains (``model:``): its name or path, dtype and device, and optional LoRA adapters
(:class:`LoraConfig`, applied with peft by :mod:`posttrain.models`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.config.sections import Section


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class ModelConfig(Section):
    name: str = "smollm2-135m"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    lora: LoraConfig | None = None
