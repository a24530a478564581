"""Models: load any causal LM by name or path, the embedded default, tiny test models, LoRA, saving.

See ``loader`` for how names resolve (``smollm2-135m``, ``tiny-random``, a directory, a hub id).
"""

from posttrain.models.embedded import EMBEDDED_MODEL_NAME, embedded_model_dir, posttrain_home
from posttrain.models.info import model_info
from posttrain.models.loader import load_model, load_tokenizer, resolve_device, resolve_dtype
from posttrain.models.lora import LoraSettings, apply_lora, disabled_adapter, is_peft_model, lora_settings
from posttrain.models.saving import export_checkpoint, save_model
from posttrain.models.tiny import TINY_MODEL_NAME, tiny_model, tiny_tokenizer

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "TINY_MODEL_NAME",
    "LoraSettings",
    "apply_lora",
    "disabled_adapter",
    "embedded_model_dir",
    "export_checkpoint",
    "is_peft_model",
    "load_model",
    "load_tokenizer",
    "lora_settings",
    "model_info",
    "posttrain_home",
    "resolve_device",
    "resolve_dtype",
    "save_model",
    "tiny_model",
    "tiny_tokenizer",
]
