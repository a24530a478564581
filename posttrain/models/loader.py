"""Load any causal language model and its tokenizer by name or path.

A name resolves, in this order, to:

- ``smollm2-135m``: the embedded default model (converted once from the packaged GGUF, see ``embedded``);
- ``tiny-random``: ``tiny_model()`` / ``tiny_tokenizer()`` with default sizes, built in code;
- an existing local directory: a Hugging Face model directory (``config.json``), or a LoRA adapter
  directory (``adapter_config.json``) whose base model is loaded first, by name or path, then the adapter;
- anything else that looks like a hub id (``org/name``): the Hugging Face hub. When the hub is not to be
  contacted (``HF_HUB_OFFLINE``) or does not answer, the repository's snapshot in the local hub cache is
  loaded instead, and a repository not in the cache is a ``ModelError`` at once (see :mod:`posttrain.hub`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from posttrain.errors import ConfigError, ModelError, first_line, location
from posttrain.hub import locate_hub_repo
from posttrain.models.embedded import EMBEDDED_MODEL_NAME, embedded_model_dir
from posttrain.models.lora import apply_lora
from posttrain.models.tiny import TINY_MODEL_NAME, tiny_model, tiny_tokenizer

DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
ADAPTER_CONFIG_FILE = "adapter_config.json"
LOCAL_MODEL_ALTERNATIVE = f"a local Hugging Face model directory, or '{EMBEDDED_MODEL_NAME}' (the embedded model)"
LOCAL_DIRECTORY_FIX = (
    f"pass {LOCAL_MODEL_ALTERNATIVE}, or connect to the network and check the name at https://huggingface.co"
)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model name points: ``kind`` is ``tiny``, ``directory``, ``adapter`` or ``hub``. For ``hub`` the
    ``location`` is the repository id, or its snapshot directory in the local cache when the hub is not used."""

    kind: str
    location: str


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; any other value is parsed by ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"unknown device {device!r}", where=location(field="device"), fix='use "auto", "cpu" or "cuda"'
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {device!r} was requested but CUDA is not available",
            where=location(field="device"),
            fix='use device "auto" or "cpu" on this machine',
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``"auto"`` is bfloat16 on a CUDA device that supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        on_cuda = device is not None and device.type == "cuda"
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype in DTYPE_NAMES:
        return DTYPE_NAMES[dtype]
    raise ConfigError(
        f"unknown dtype {dtype!r}",
        where=location(field="dtype"),
        fix=f'use "auto" or one of {", ".join(DTYPE_NAMES)}',
    )


def resolve_source(name_or_path: str | Path) -> ModelSource:
    """Decide where ``name_or_path`` points, without loading anything heavy (see the module docstring); a hub
    name costs at most one short probe of the hub per process (:func:`posttrain.hub.hub_reachable`)."""
    name = str(name_or_path)
    if name == EMBEDDED_MODEL_NAME:
        return ModelSource("directory", str(embedded_model_dir()))
    if name == TINY_MODEL_NAME:
        return ModelSource("tiny", TINY_MODEL_NAME)
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / ADAPTER_CONFIG_FILE).is_file():
            return ModelSource("adapter", str(path.resolve()))
        if (path / "config.json").is_file():
            return ModelSource("directory", str(path.resolve()))
        raise ModelError(
            f"{path} is a directory but holds neither config.json nor {ADAPTER_CONFIG_FILE}",
            where=location(str(path)),
            fix="pass a directory written by save_pretrained (a model or a LoRA adapter)",
        )
    if path.exists():
        raise ModelError(
            f"{path} is a file, not a model directory",
            where=location(str(path)),
            fix="pass the directory that contains config.json",
        )
    if not HUB_ID_PATTERN.match(name) or name.startswith((".", "~")):
        raise ModelError(
            f"model '{name}' is not a known name, an existing directory, or a hub id",
            fix=f"use '{EMBEDDED_MODEL_NAME}', '{TINY_MODEL_NAME}', a local directory, or a hub id like org/name",
        )
    return ModelSource("hub", locate_hub_repo(name, repo_type="model", error_type=ModelError,
                                              local_alternative=LOCAL_MODEL_ALTERNATIVE))


def adapter_base_reference(adapter_dir: Path) -> str:
    """The base model an adapter directory was trained on: a name, an absolute path, or a subdirectory."""
    adapter_config = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
    reference = adapter_config.get("base_model_name_or_path")
    if not reference:
        raise ModelError(
            "this LoRA adapter does not record its base model",
            where=location(str(adapter_dir / ADAPTER_CONFIG_FILE), field="base_model_name_or_path"),
            fix="set base_model_name_or_path to the base model's name or directory",
        )
    if (adapter_dir / reference).is_dir():
        return str(adapter_dir / reference)
    return reference



def load_hub_model(name: str, dtype: torch.dtype):
    """Load a causal LM from the hub (or the local hub cache), turning failures into ``ModelError``."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"could not load model '{name}' from the Hugging Face hub (unreachable, or no such model): "
            f"{first_line(error)}",
            fix=LOCAL_DIRECTORY_FIX,
        ) from None


def load_directory_model(directory: str, dtype: torch.dtype):
    """Load a Hugging Face model directory, turning a broken or unsupported one into ``ModelError``."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    except (OSError, ValueError, KeyError) as error:
        raise ModelError(
            f"could not load the model in {directory}: {first_line(error)}",
            where=location(directory),
            fix="check that the directory holds a complete causal language model written by save_pretrained",
        ) from None


def load_base_model(source: ModelSource, name: str, dtype: torch.dtype):
    """Load the plain (adapter-free) model a source points to, named so adapters can record it."""
    if source.kind == "tiny":
        model = tiny_model().to(dtype)
    elif source.kind == "directory":
        model = load_directory_model(source.location, dtype)
    elif source.kind == "hub":
        model = load_hub_model(source.location, dtype)
    else:
        raise ModelError(
            f"the base model of an adapter is itself an adapter ({source.location})",
            where=location(source.location),
            fix="export the inner adapter as a merged model and train the new adapter on that",
        )
    keeps_name = name in (EMBEDDED_MODEL_NAME, TINY_MODEL_NAME) or source.kind == "hub"
    reference = name if keeps_name else source.location
    model.name_or_path = reference
    model.config.name_or_path = reference
    return model


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "auto",
    lora: Any = None,
):
    """Load a causal LM in eval mode on ``device`` in ``dtype``, optionally wrapped with new LoRA adapters.

    ``lora`` (a mapping or settings object with r, alpha, dropout, target_modules) adds fresh adapters
    and freezes everything else. An adapter directory loads its base model and then its adapter, trainable.
    """
    name = str(name_or_path)
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    source = resolve_source(name)
    if source.kind == "adapter":
        if lora is not None:
            raise ConfigError(
                f"{name} already holds a LoRA adapter; a second one cannot be added on load",
                where=location(field="lora"),
                fix="leave lora unset to continue training this adapter, or export a merged model first",
            )
        from peft import PeftModel

        adapter_dir = Path(source.location)
        base_name = adapter_base_reference(adapter_dir)
        base = load_base_model(resolve_source(base_name), base_name, resolved_dtype).to(resolved_device)
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
    else:
        model = load_base_model(source, name, resolved_dtype).to(resolved_device)
        if lora is not None:
            model = apply_lora(model, lora)
    return model.eval()


def ensure_pad_token(tokenizer, name: str):
    """Give a tokenizer without a pad token its eos token as pad token (padding side is left as it is)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(
                f"the tokenizer of '{name}' has neither a pad token nor an eos token",
                fix="add a pad token to the tokenizer (tokenizer.add_special_tokens) and save it with the model",
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name_or_path: str | Path):
    """Load the tokenizer for a model name or path (see ``load_model``), with a pad token set.

    An adapter directory uses the tokenizer saved beside the adapter, else its base model's.
    """
    from transformers import AutoTokenizer

    name = str(name_or_path)
    source = resolve_source(name)
    if source.kind == "tiny":
        return tiny_tokenizer()
    if source.kind == "adapter" and not (Path(source.location) / "tokenizer_config.json").is_file():
        return load_tokenizer(adapter_base_reference(Path(source.location)))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location)
    except (OSError, ValueError) as error:
        raise ModelError(
            f"could not load the tokenizer of '{name}': {first_line(error)}",
            where=location(source.location) if source.kind != "hub" else None,
            fix=LOCAL_DIRECTORY_FIX,
        ) from None
    return ensure_pad_token(tokenizer, name)
