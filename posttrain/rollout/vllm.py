"""A rollout engine on vLLM (paged KV cache, continuous batching, prefix caching), run in this process.

``VLLMEngine`` honours the :class:`~posttrain.rollout.base.RolloutEngine` contract exactly as
:class:`~posttrain.rollout.hf.HFEngine` does: the same stop tokens (:func:`~posttrain.rollout.hf.stop_token_ids`,
and only those: vLLM's own eos handling is switched off with ``ignore_eos``), completions that end with their
stop token when ``finish_reason == "eos"``, text decoded by the posttrain tokenizer without that token, and the
log-prob of every sampled token under the distribution it was drawn from. The last comes from vLLM's
``logprobs_mode="processed_logprobs"``: the log-softmax of the logits after temperature, top-k and top-p, and for
greedy requests the log-softmax of the raw logits (temperature 1).

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set before vLLM is imported), so a learner in
the same process can push its weights into it with :meth:`VLLMEngine.load_weights` / :meth:`VLLMEngine.sync_from`
(vLLM's ``reload_weights`` worker call, in place, no files written).

On CPU:

* the engine is eager (``enforce_eager``) and its KV cache has a fixed size, ``kv_cache_gib``;
* vLLM's CPU worker replaces ``torch.set_num_threads`` by a no-op for the whole process; the engine puts the
  real function back after start-up, and runs each ``generate`` with ``num_threads`` torch threads (default:
  as many as the caller has), restoring the caller's count afterwards. On a machine where other processes
  compete for the cores, ``num_threads=1`` avoids OpenMP spin-wait stalls (seconds per call on 2 cores);
* ``sleep``/``wake_up`` do nothing: vLLM's CPU backend has no sleep mode, and the weights and KV cache live in
  the same memory the learner uses, so there is nothing to hand back to another device.
"""

from __future__ import annotations

import contextlib
import os
import sys
import weakref
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import torch

from posttrain.errors import DataError, ModelError, first_line, location
from posttrain.rollout.base import (
    Generation,
    RolloutEngine,
    SamplingParams,
    check_prompts,
    cut_generation,
    repeated,
)
from posttrain.rollout.hf import stop_token_ids
from posttrain.rollout.vllm_support import (
    head_size_problem,
    import_vllm,
    merged_weights,
    on_cuda,
    read_generation_config,
    read_model_config,
    restore_environment,
    torch_threads,
    whole_prefill_groups,
)

VLLM_MAX_TEMPERATURE = 2.0
DTYPES = ("float32", "bfloat16", "float16")

_OPEN: weakref.WeakSet = weakref.WeakSet()  # engines not yet closed (see VLLMEngine.close)
_CLOSED: list = []  # the vllm.LLM of engines closed while others were open: shut down with the last one


class VLLMEngine(RolloutEngine):
    """Samples completions with an in-process vLLM engine; see the module docstring.

    ``model``: a model directory written by ``save_pretrained`` (or a hub name vLLM can resolve);
    ``tokenizer``: the posttrain tokenizer (stop ids and decoding); ``dtype``: the engine's weights and
    activations, "float32" (default; greedy tokens then match an fp32 learner) or "bfloat16";
    ``kv_cache_gib``: the KV cache size (CPU: default 1 GiB; CUDA: default None = ``gpu_memory_utilization``);
    ``sleep_mode``: on CUDA, free the KV cache and weights in :meth:`sleep` (default: on with CUDA).
    """

    def __init__(
        self,
        model: str | Path,
        tokenizer,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int = 2048,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float = 0.5,
        enable_prefix_caching: bool = True,
        sleep_mode: bool | None = None,
        num_threads: int | None = None,
    ):
        if dtype not in DTYPES:
            raise ModelError(f"vLLM dtype {dtype!r} is not supported", where=location(field="dtype"),
                             fix=f"use one of {', '.join(DTYPES)}")
        if max_model_len < 2:
            raise ModelError(f"max_model_len = {max_model_len} is too small", fix="use max_model_len >= 2")
        if num_threads is not None and num_threads < 1:
            raise ModelError(f"num_threads = {num_threads} is invalid", fix="use an integer >= 1 or null")
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.num_threads = num_threads
        self.cuda = on_cuda()
        self.sleep_mode = self.cuda if sleep_mode is None else (sleep_mode and self.cuda)
        self.sleeping = False
        model_dir = Path(model).expanduser()
        architectures: list[str] = []
        generation_config = None
        if not model_dir.exists() and (model_dir.is_absolute() or str(model).startswith((".", "~"))):
            raise ModelError(f"the model directory {model_dir} does not exist", where=location(str(model_dir)),
                             fix="give a directory written by save_pretrained")
        if model_dir.exists():
            config = read_model_config(model_dir)
            architectures = list(config.get("architectures") or [])
            generation_config = read_generation_config(model_dir)
        self.stop_ids = stop_token_ids(SimpleNamespace(generation_config=generation_config), tokenizer)
        environment = dict(os.environ)
        vllm = import_vllm()
        if architectures:
            supported = set(vllm.ModelRegistry.get_supported_archs())
            if not any(architecture in supported for architecture in architectures):
                raise ModelError(
                    f"vLLM {vllm.__version__} does not support the architecture {', '.join(architectures)}",
                    where=location(str(model_dir)),
                    fix="use the HF rollout engine (posttrain.rollout.HFEngine) for this model",
                )
        head_problem = head_size_problem(config) if model_dir.exists() else None
        if head_problem is not None:
            raise ModelError(head_problem, where=location(str(model_dir)),
                             fix="use the HF rollout engine (rollout.engine: hf) for this model")
        if kv_cache_gib is None and not self.cuda:
            kv_cache_gib = 1.0
        if kv_cache_gib is not None and kv_cache_gib <= 0:
            raise ModelError(f"kv_cache_gib = {kv_cache_gib} is invalid", fix="use a size in GiB > 0, e.g. 1")
        engine_args = dict(
            model=str(model_dir) if model_dir.exists() else str(model),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",
        )
        if kv_cache_gib is not None:
            engine_args["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        if self.cuda:
            engine_args.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode)
        else:
            engine_args.update(enforce_eager=True)
        real_set_num_threads = torch.set_num_threads
        exception_hook = sys.excepthook  # init_process_group wraps it to prefix "[rank0]:", once per engine start
        try:
            self.llm = vllm.LLM(**engine_args)
        except Exception as error:
            raise self._start_error(error, model, kv_cache_gib) from error
        finally:
            torch.set_num_threads = real_set_num_threads
            sys.excepthook = exception_hook
            restore_environment(environment)
        _OPEN.add(self)
        self._vllm = vllm

    def _live(self):
        llm = self.__dict__.get("llm")
        if llm is None:
            raise ModelError("the vLLM engine has been closed", fix="create a new VLLMEngine")
        return llm

    def _start_error(self, error: Exception, model, kv_cache_gib) -> ModelError:
        message = str(error)
        if any(sign in message.lower() for sign in ("kv cache", "cache blocks", "kv_cache")):
            return ModelError(
                f"the vLLM KV cache does not fit: {first_line(error)}",
                where=location(str(model)),
                fix=f"give the engine more KV cache (kv_cache_gib, now {kv_cache_gib}) or a smaller max_model_len "
                    f"(now {self.max_model_len}), within the memory that is free",
            )
        return ModelError(f"the vLLM engine failed to start for {model}: {first_line(error)}",
                          where=location(str(model)),
                          fix="check that the directory holds a complete model (config.json, weights) of an "
                              "architecture vLLM supports, or use the HF rollout engine")

    # sampling

    def _sampling_params(self, params: SamplingParams):
        if params.temperature > VLLM_MAX_TEMPERATURE:
            raise ModelError(f"temperature = {params.temperature} is above vLLM's limit of {VLLM_MAX_TEMPERATURE}",
                             where=location(field="temperature"),
                             fix=f"use a temperature <= {VLLM_MAX_TEMPERATURE}, or the HF rollout engine")
        common = dict(
            max_tokens=params.max_new_tokens,
            stop_token_ids=list(self.stop_ids),
            ignore_eos=True,  # only stop_token_ids end a completion, as in HFEngine
            logprobs=0,  # the sampled token's own log-prob only
            detokenize=False,  # text is decoded here, like HFEngine does
            skip_special_tokens=False,
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
            min_p=0.0,
            min_tokens=0,
        )
        if params.greedy:
            return self._vllm.SamplingParams(n=1, temperature=0.0, **common)
        return self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,  # 0 (or -1): no top-k restriction in vLLM
            seed=params.seed,
            **common,
        )

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample ``params.n`` completions per prompt, ordered by (prompt_index, sample_index).

        Greedy decoding runs each prompt once and repeats the result ``n`` times (vLLM refuses n > 1 there).
        A seed gives each prompt's request that seed, so a prompt's samples do not depend on the rest of the
        batch.
        """
        check_prompts(prompt_ids)
        for index, prompt in enumerate(prompt_ids):
            if len(prompt) + params.max_new_tokens > self.max_model_len:
                raise DataError(
                    f"prompt {index} has {len(prompt)} tokens; with max_new_tokens = {params.max_new_tokens} it "
                    f"exceeds the engine's max_model_len = {self.max_model_len}",
                    where=location(field=f"prompts[{index}]"),
                    fix="shorten the prompt, lower max_new_tokens or create the engine with a larger max_model_len",
                )
        if self.sleeping:
            self.wake_up()
        from vllm.inputs import TokensPrompt

        sampling = self._sampling_params(params)
        llm = self._live()
        groups = [range(len(prompt_ids))]
        if not self.cuda and sampling.seed is not None:  # see whole_prefill_groups
            scheduler = llm.llm_engine.vllm_config.scheduler_config
            groups = whole_prefill_groups([len(p) for p in prompt_ids], sampling.n, scheduler.max_num_batched_tokens,
                                          scheduler.max_num_seqs)
        outputs = []
        with torch_threads(self.num_threads):
            for group in groups:
                outputs += llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids[i])) for i in group], sampling,
                                        use_tqdm=False)
        generations: list[Generation] = []
        for prompt_index, (prompt, output) in enumerate(zip(prompt_ids, outputs, strict=True)):
            completions = sorted(output.outputs, key=lambda completion: completion.index)
            for completion in completions:
                tokens = list(completion.token_ids)
                # vLLM keeps the stop token in token_ids when it is one of stop_token_ids
                logprobs = [entry[token].logprob for token, entry in zip(tokens, completion.logprobs, strict=True)]
                generations.append(cut_generation(prompt_index, completion.index, prompt, tokens, logprobs,
                                                  self.stop_ids, self.tokenizer))
            if params.greedy:
                generations.extend(repeated(generations[-1], sample_index) for sample_index in range(1, params.n))
        return generations

    # weight sync

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights into the engine in place, by HF parameter name (every one a checkpoint would hold).

        Uses vLLM's ``reload_weights`` worker call with ``is_checkpoint_format=True``, so the names and layouts
        are those of an HF checkpoint (vLLM fuses q/k/v and gate/up itself, and repacks for its CPU kernels).
        The prefix cache is reset afterwards: cached KV blocks were computed with the old weights.
        """
        if self.sleeping:
            self.wake_up()
        self._live()
        dtype = getattr(torch, self.dtype)  # vLLM warns once per tensor whose dtype differs from its parameter's
        tensors = ((name, tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach())
                   for name, tensor in named_tensors)
        try:
            self._live().collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": tensors, "is_checkpoint_format": True})
        except Exception as error:
            raise ModelError(f"loading weights into the vLLM engine failed: {first_line(error)}",
                             fix="send the weights of the model the engine was created from, under their HF "
                                 "parameter names") from error
        self.llm.reset_prefix_cache()

    def sync_from(self, model) -> None:
        """Load every weight of an HF model (a PEFT LoRA model: with its active adapters merged, see
        :func:`~posttrain.rollout.vllm_support.merged_weights`) into the engine; the model itself is not changed."""
        self.load_weights(merged_weights(model))

    # memory

    def close(self) -> None:
        """Shut the engine down and free its KV cache and weights; it cannot generate afterwards.

        All in-process engines share vLLM's process-wide distributed state (a one-process gloo group), and
        shutting one down destroys that state under the others. So while another engine of the process is open,
        a closed engine is only parked, and shut down when the last open one closes; then ``torch.distributed``
        is no longer initialized. An engine dropped without ``close`` is shut down by vLLM when it is
        garbage-collected, which breaks any other engine of the process: close engines explicitly when several
        live side by side.
        """
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        _OPEN.discard(self)
        _CLOSED.append(llm)
        if not _OPEN:
            while _CLOSED:
                with contextlib.suppress(Exception):
                    _CLOSED.pop().llm_engine.engine_core.shutdown()

    def sleep(self) -> None:
        """Free the engine's memory while the learner updates: on CUDA with sleep mode, vLLM's ``sleep(level=1)``
        (weights offloaded to CPU, KV cache dropped). On CPU nothing happens (see the module docstring)."""
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def wake_up(self) -> None:
        """Undo :meth:`sleep`; ``generate`` and ``load_weights`` call it themselves when needed."""
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False
