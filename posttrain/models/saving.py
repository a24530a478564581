"""Save models in Hugging Face format and export run checkpoints as merged, self-describing directories.

A LoRA model is saved as its adapter plus a reference to the base model (``base_model_name_or_path``
in ``adapter_config.json``): a model name such as ``smollm2-135m``, an absolute directory or a hub id. A base
model with no such reference (built in code, for instance) is saved beside the adapter in
``base_model/`` so the directory always loads again with ``load_model``. ``merged=True`` instead saves
one plain model with W + (alpha / r) * B @ A folded into each adapted weight.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from posttrain.errors import ModelError, location
from posttrain.models.card import configured_base_model, model_card
from posttrain.models.embedded import EMBEDDED_MODEL_NAME
from posttrain.models.loader import (
    ADAPTER_CONFIG_FILE,
    HUB_ID_PATTERN,
    adapter_base_reference,
    load_model,
    load_tokenizer,
)
from posttrain.models.lora import is_peft_model, unwrap_distributed
from posttrain.models.sharded import SHARDED_DIR, read_shards
from posttrain.models.tiny import TINY_MODEL_NAME

BASE_MODEL_SUBDIRECTORY = "base_model"
NAMED_MODELS = (EMBEDDED_MODEL_NAME, TINY_MODEL_NAME)


def is_loadable_reference(reference: str | None) -> bool:
    """True for a posttrain model name, an absolute path to an existing directory, or a hub id.

    ``load_model`` records one of these as a model's ``name_or_path``; a model built in code has none.
    """
    if not reference:
        return False
    path = Path(reference)
    if reference in NAMED_MODELS or (path.is_absolute() and path.is_dir()):
        return True
    return not path.is_absolute() and not path.exists() and bool(HUB_ID_PATTERN.match(reference))


def merged_copy(peft_model):
    """A plain model equal to ``peft_model`` with its adapters folded in; ``peft_model`` is left as it was."""
    return copy.deepcopy(peft_model).merge_and_unload()


def trains_embeddings(peft_model) -> bool:
    """True when the input embeddings or the output head have trainable parameters (adapted or saved whole)."""
    embedding_names = ("embed_tokens", "lm_head", "wte", "embed_out")
    return any(
        parameter.requires_grad and any(part in name for part in embedding_names)
        for name, parameter in peft_model.named_parameters()
    )


def save_adapter(peft_model, out_dir: Path) -> None:
    """Save the adapter and make its base reference loadable (saving the base beside it when needed).

    Embedding layers are saved with the adapter only when they are trained; deciding this here keeps peft
    from looking the base model up on the hub to compare vocabulary sizes.
    """
    peft_model.save_pretrained(out_dir, save_embedding_layers=trains_embeddings(peft_model))
    adapter_config_path = out_dir / ADAPTER_CONFIG_FILE
    adapter_config = json.loads(adapter_config_path.read_text())
    if is_loadable_reference(adapter_config.get("base_model_name_or_path")):
        return
    base_model = copy.deepcopy(peft_model).unload()
    base_model.save_pretrained(out_dir / BASE_MODEL_SUBDIRECTORY)
    adapter_config["base_model_name_or_path"] = BASE_MODEL_SUBDIRECTORY
    adapter_config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def save_model(model, tokenizer, out_dir: str | Path, *, merged: bool = False) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out_dir`` in Hugging Face format; returns ``out_dir``.

    A plain model is saved whole. A LoRA model is saved as its adapter (see the module docstring), or,
    with ``merged=True``, as one plain model with the adapters merged in. ``load_model(out_dir)`` reads
    either back.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap_distributed(model)
    if is_peft_model(model) and merged:
        merged_copy(model).save_pretrained(out_dir)
    elif is_peft_model(model):
        save_adapter(model, out_dir)
    else:
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def read_run_config(run_dir: Path) -> dict:
    """The resolved ``config.yaml`` of a run directory, as a mapping."""
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ModelError(
            f"no config.yaml in the run directory {run_dir}, so the model card cannot state the recipe",
            where=location(str(config_path)),
            fix="export a checkpoint that sits inside its run directory, as RUN/checkpoints/step-N",
        )
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ModelError(
            f"config.yaml is not valid YAML: {error}", where=location(str(config_path))
        ) from None
    if not isinstance(config, dict):
        raise ModelError("config.yaml does not hold a mapping", where=location(str(config_path)))
    return config


def consolidated_model(checkpoint_dir: Path):
    """The fp32 model of a sharded (FSDP) checkpoint: built from ``model/config.json``, its shards gathered."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint_dir / "model")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    read_shards(checkpoint_dir / SHARDED_DIR, model, None, fix="export another checkpoint of the run")
    return model


def checkpoint_model_dir(checkpoint_dir: Path) -> Path:
    """``step-N/model`` of a checkpoint directory, or a :class:`ModelError` when there is none."""
    model_dir = checkpoint_dir / "model"
    if not model_dir.is_dir():
        raise ModelError(
            f"{checkpoint_dir} is not a checkpoint: it has no model/ directory",
            where=location(str(checkpoint_dir)),
            fix="pass a checkpoint directory such as runs/NAME/checkpoints/step-100",
        )
    return model_dir


def checkpoint_card(checkpoint_dir: Path, load_from: str) -> str:
    """The model card (:mod:`posttrain.models.card`) of checkpoint ``RUN/checkpoints/step-N``, from the run's
    ``config.yaml`` and ``metrics.jsonl``; its usage snippet loads from ``load_from``."""
    model_dir = checkpoint_model_dir(checkpoint_dir)
    run_dir = checkpoint_dir.parent.parent
    config = read_run_config(run_dir)
    if (model_dir / ADAPTER_CONFIG_FILE).is_file():
        base_model = adapter_base_reference(model_dir)
    else:
        base_model = configured_base_model(config)
    return model_card(run_dir, checkpoint_dir, config, base_model, load_from)


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, *, load_from: str | None = None) -> Path:
    """Write ``RUN/checkpoints/step-N`` as a merged fp32 Hugging Face directory (safetensors) with a README.md
    model card (:func:`checkpoint_card`) whose usage snippet loads from ``load_from`` (default ``out_dir``).

    The checkpoint's model (``step-N/model``, a full model or a LoRA adapter; FSDP shards are gathered) is loaded
    on the CPU, any adapter is merged, and model, tokenizer and card are written to a temporary directory that is
    then renamed to ``out_dir`` (which must not exist, or be empty). Returns ``out_dir``.
    """
    checkpoint_dir = Path(checkpoint_dir).resolve()
    out_dir = Path(out_dir).resolve()
    model_dir = checkpoint_model_dir(checkpoint_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelError(
            f"the output {out_dir} already exists and is not an empty directory",
            where=location(str(out_dir)),
            fix="choose a new output directory, or delete this one",
        )
    card = checkpoint_card(checkpoint_dir, load_from or str(out_dir))
    if (checkpoint_dir / SHARDED_DIR).is_dir():  # FSDP shards: the model is built from its config around them
        model = consolidated_model(checkpoint_dir)
    else:
        model = load_model(model_dir, dtype="float32", device="cpu")
    if is_peft_model(model):
        model = model.merge_and_unload()
    tokenizer = load_tokenizer(model_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
