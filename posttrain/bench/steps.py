"""What the benchmark workers of both sides share: per-step figures, and TRL's step timer and training arguments.

It imports nothing of posttrain's training stack, so a peer's worker process holds only what the peer itself
loads (each side's peak memory is compared).

On-policy benchmarks (GRPO, distillation), per side over the timed steps (the first ``warmup_steps`` are run but
not timed), :func:`generation_figures`::

    seconds_per_step       = mean duration of a step (generation, scoring, loss, backward, optimizer)
    generated_tokens_per_s = Σ completion tokens generated / Σ step durations

``tokens_per_s`` repeats ``generated_tokens_per_s`` so that the shared
:func:`~posttrain.bench.harness.summarize` applies. The DPO benchmark counts the real tokens fed to the model
instead (:func:`token_figures`).
"""

from __future__ import annotations

import os
import statistics
import time

from posttrain.errors import PosttrainError


def generation_figures(durations: list[float], completion_lengths: list[list[int]], warmup_steps: int) -> dict:
    """A worker's figures from every step's duration and the token count of each completion it generated."""
    timed_seconds = durations[warmup_steps:]
    timed_lengths = [n for step in completion_lengths[warmup_steps:] for n in step]
    generated_per_s = sum(timed_lengths) / sum(timed_seconds)
    return {
        "seconds_per_step": statistics.mean(timed_seconds),
        "generated_tokens_per_s": generated_per_s,
        "tokens_per_s": generated_per_s,
        "generated_tokens": sum(timed_lengths),
        "mean_completion_length": statistics.mean(timed_lengths),
        "steps": len(durations),
        "completions_per_step": [len(step) for step in completion_lengths],
    }


def token_figures(durations: list[float], tokens: list[int], losses: list[float], warmup_steps: int) -> dict:
    """A worker's figures from every step's duration, real token count and loss (the first ``warmup_steps``
    untimed)."""
    if len(durations) != len(tokens) or len(durations) <= warmup_steps:
        raise PosttrainError(f"{len(durations)} step durations for {len(tokens)} batches and {warmup_steps} warm-up "
                             "steps", fix="run more steps than warm-up steps; report this if it persists")
    seconds = durations[warmup_steps:]
    return {"tokens_per_s": sum(tokens[warmup_steps:]) / sum(seconds), "seconds_per_step": sum(seconds) / len(seconds),
            "final_loss": losses[-1] if losses else None, "steps": len(durations), "tokens_per_step": tokens,
            "losses": losses}


def trl_training_args(settings: dict) -> dict:
    """The ``TrainingArguments`` both TRL workers share: the steps, a constant lr, clipping at 1, float32 weights on
    the requested device (with bf16 autocast on CUDA), the data in the given order, no saving or reporting."""
    return {
        "output_dir": settings["workdir"] + "/trl",
        "gradient_accumulation_steps": 1,
        "shuffle_dataset": False,
        "max_steps": settings["steps"] + settings["warmup_steps"],
        "learning_rate": settings["lr"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_grad_norm": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "bf16": settings["device"] == "cuda",  # autocast over float32 weights, as posttrain's precision=auto
        "fp16": False,
        "use_cpu": settings["device"] == "cpu",
        "dataloader_num_workers": 0,
        "seed": settings["seed"],
        "model_init_kwargs": {"dtype": "float32"},
        "disable_tqdm": True,
    }


# In-process vLLM (TRL's colocate mode) on the CPU: no engine subprocess, a 1 GiB KV cache.
TRL_VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def trl_generation(settings: dict) -> str:
    """How the TRL side samples: ``vllm-colocate`` (``settings["trl_vllm"]``) or ``hf-generate`` (its default)."""
    return "vllm-colocate" if settings.get("trl_vllm") else "hf-generate"


def trl_vllm_args(settings: dict) -> dict:
    """The TRL config fields for ``settings["trl_vllm"]``: vLLM in the trainer's process (``vllm_mode="colocate"``),
    no sleep mode; ``{}`` (TRL's HF ``generate``) otherwise. Sets :data:`TRL_VLLM_ENV` where it is not set."""
    if not settings.get("trl_vllm"):
        return {}
    for name, value in TRL_VLLM_ENV.items():
        os.environ.setdefault(name, value)
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_enable_sleep_mode": False}


def sync_by_reload(trainer, settings: dict) -> None:
    """On the CPU, make a colocated TRL trainer push its weights into vLLM with vLLM's ``reload_weights``.

    TRL 1.16's ``VLLMGeneration.sync_weights`` calls ``model.load_weights`` on vLLM's model directly. vLLM's CPU
    backend (0.32) packs every linear layer's weight for oneDNN after loading and leaves an empty parameter without
    a ``weight_loader`` (``dispatch_cpu_unquantized_gemm(remove_weight=True)``), so that call fails with
    ``AttributeError: 'Parameter' object has no attribute 'weight_loader'`` at the first sync. ``reload_weights``
    (in checkpoint format, the same weights TRL sends) loads and repacks them. Nothing changes on other devices.
    """
    if not settings.get("trl_vllm") or settings["device"] != "cpu":
        return
    generation = trainer.vllm_generation

    def sync_weights() -> None:
        tensors = ((name, tensor.detach()) for name, tensor in generation._iter_named_params())
        generation.llm.collective_rpc("reload_weights",
                                      kwargs={"weights_iterator": tensors, "is_checkpoint_format": True})
        generation.llm.reset_prefix_cache()

    generation.sync_weights = sync_weights


def trl_step_timer(durations: list[float], losses: list[float]):
    """A ``TrainerCallback`` that appends each step's duration (``on_step_begin`` to ``on_step_end``: generation,
    scoring, loss, backward, optimizer) to ``durations`` and each logged loss to ``losses``."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        began = 0.0

        def on_step_begin(self, *_, **__):
            self.began = time.perf_counter()

        def on_step_end(self, *_, **__):
            durations.append(time.perf_counter() - self.began)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    return StepTimer()
