"""A summary of a model: size, vocabulary, chat template, dtype and shape (``posttrain model info``)."""

from __future__ import annotations

from pathlib import Path

from posttrain.models.loader import load_model, load_tokenizer
from posttrain.models.lora import is_peft_model


def stored_dtype(config) -> str | None:
    """The dtype a model's config says its weights were saved in, if it says."""
    dtype = getattr(config, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def model_info(name_or_path: str | Path) -> dict:
    """Load a model on the CPU and describe it.

    Keys: ``name``, ``architecture``, ``parameters`` (all, counting tied weights once), ``trainable_parameters``
    (the adapter's for a LoRA directory), ``vocab_size`` (rows of the embedding), ``tokenizer_size``,
    ``has_chat_template``, ``dtype`` (as stored, else as loaded), ``layers``, ``hidden_size``, ``lora``.
    """
    model = load_model(name_or_path, device="cpu", dtype="float32")
    tokenizer = load_tokenizer(name_or_path)
    base = model.get_base_model() if is_peft_model(model) else model
    config = base.config
    architectures = getattr(config, "architectures", None)
    return {
        "name": str(name_or_path),
        "architecture": architectures[0] if architectures else type(base).__name__,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "vocab_size": base.get_input_embeddings().weight.shape[0],
        "tokenizer_size": len(tokenizer),
        "has_chat_template": bool(tokenizer.chat_template),
        "dtype": stored_dtype(config) or str(model.dtype).removeprefix("torch."),
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden_size": getattr(config, "hidden_size", None),
        "lora": is_peft_model(model),
    }
