"""A rollout engine on Hugging Face ``model.generate`` (KV cache, left padding, batched).

Prompts are sorted by length and packed into calls of at most ``batch_size`` sequences; the ``n``
samples of one prompt travel in the same call (``num_return_sequences``), so a prompt is never split
across calls unless ``n > batch_size``. Sampling is done by HF with only the processors that
:class:`SamplingParams` describes (the model's own sampling defaults are overridden), and the log-prob
of every drawn token is read from the final processed scores, so it is the log-prob under the
distribution the token was actually drawn from.

With ``dtype`` set (``torch.bfloat16`` or its name, ``"bfloat16"``) the engine samples from the model with its floating-point
weights cast to that type for the duration of the call, the way RL systems roll out in bf16 while the
learner keeps fp32 weights. The recorded log-probs are then those of the cast model, the behaviour
policy, so an importance ratio against them corrects for the difference. The cast copy exists only
during the call; the model's own weights are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from posttrain.data import pad_sequences
from posttrain.errors import ModelError, location
from posttrain.models import resolve_dtype
from posttrain.rollout.base import (
    Generation,
    SamplingParams,
    WeightSyncEngine,
    check_prompts,
    cut_generation,
    repeated,
)

CHATML_END = "<|im_end|>"


class _SampledTokenLogprobs(LogitsProcessor):
    """Records log p(token drawn at step t) = s_t[token] - logsumexp(s_t) for the processed scores s_t.

    Placed last in the processor list, it sees exactly the scores the next token is drawn from. The
    drawn token only becomes known at the next call (the last column of ``input_ids``), or from the
    final sequences for the last step, so one step's scores are kept until then.
    """

    def __init__(self) -> None:
        self.per_step: list[torch.Tensor] = []
        self._pending_scores: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._record(input_ids[:, -1])
        self._pending_scores = scores
        return scores

    def _record(self, drawn_tokens: torch.Tensor) -> None:
        if self._pending_scores is None:
            return
        scores = self._pending_scores.float()
        chosen = scores.gather(-1, drawn_tokens[:, None]).squeeze(-1)
        self.per_step.append(chosen - torch.logsumexp(scores, dim=-1))
        self._pending_scores = None

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """Return the [rows, steps] log-probs once generation has produced ``sequences``."""
        self._record(sequences[:, -1])
        return torch.stack(self.per_step, dim=1)


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end a completion: the generation config's eos ids, the tokenizer's eos, and
    ``<|im_end|>`` when the chat template uses it."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.extend([config_eos] if isinstance(config_eos, int) else list(config_eos))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and CHATML_END in template:
        end_id = tokenizer.convert_tokens_to_ids(CHATML_END)
        if isinstance(end_id, int) and end_id != tokenizer.unk_token_id:
            ids.append(end_id)
    unique = list(dict.fromkeys(ids))
    if not unique:
        raise ModelError(
            "the model has no end-of-sequence token, so generation could never stop early",
            fix="use a tokenizer with an eos token or set model.generation_config.eos_token_id",
        )
    return unique


def pad_token_id(model, tokenizer) -> int:
    """The id rows of rollouts are padded with: the tokenizer's pad token, else the first stop token."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else stop_token_ids(model, tokenizer)[0]


def _plan_calls(prompt_lengths: list[int], samples: int, batch_size: int) -> list[tuple[list[int], int, int]]:
    """Group prompts into generate calls of at most ``batch_size`` rows.

    Returns ``(prompt_indices, first_sample_index, samples_per_prompt)`` per call. Prompts go longest
    first, so similar lengths share a call (little padding) and the largest call runs first.
    """
    order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
    if samples <= batch_size:
        per_call = batch_size // samples
        return [(order[start : start + per_call], 0, samples) for start in range(0, len(order), per_call)]
    return [
        ([index], first, min(batch_size, samples - first))
        for index in order
        for first in range(0, samples, batch_size)
    ]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed sampling without disturbing the caller's random state (the RNG is forked and restored)."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        forked = torch.random.fork_rng(devices=[])
    else:
        forked = torch.random.fork_rng(devices=[device], device_type=device.type)
    with forked:
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def weights_cast_to(model, dtype: torch.dtype | None) -> Iterator[None]:
    """Run with every floating-point parameter of ``model`` cast to ``dtype``; restore the originals after.

    The parameters stay the same objects (optimizers and hooks keep their references); only their data is
    swapped for a cast copy, which is freed on exit. ``dtype=None`` changes nothing.
    """
    originals = []
    if dtype is not None:
        for parameter in model.parameters():
            if parameter.is_floating_point() and parameter.dtype != dtype:
                originals.append((parameter, parameter.data))
                parameter.data = parameter.data.to(dtype)
    try:
        yield
    finally:
        for parameter, data in originals:
            parameter.data = data


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Put the model in eval mode (no dropout) and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class HFEngine(WeightSyncEngine):
    """Samples completions with ``model.generate``; see the module docstring for batching."""

    def __init__(self, model, tokenizer, batch_size: int = 16, dtype: str | torch.dtype | None = None,
                 synced: bool = False):
        """``synced``: the model is sharded over processes (FSDP) that generate together; a process whose
        sequences are done keeps running forward passes until every process is (``synced_gpus``)."""
        if batch_size < 1:
            raise ModelError(f"batch_size = {batch_size} is invalid", fix="use a batch_size >= 1")
        dtype = None if dtype is None else resolve_dtype(dtype)
        if dtype is not None and not dtype.is_floating_point:
            raise ModelError(f"rollout dtype {dtype} is not a floating-point type",
                             fix="use bfloat16, float16, float32 or null (the model's own)")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dtype = dtype
        self.synced = synced
        self.stop_ids = stop_token_ids(model, tokenizer)
        self.pad_id = pad_token_id(model, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample ``params.n`` completions per prompt, ordered by (prompt_index, sample_index).

        Greedy decoding (temperature 0) runs each prompt once and repeats the result ``n`` times.
        """
        check_prompts(prompt_ids)
        distinct = 1 if params.greedy else params.n
        results: dict[tuple[int, int], Generation] = {}
        with _eval_mode(self.model), _seeded(params.seed, self.device), weights_cast_to(self.model, self.dtype):
            for indices, first_sample, count in _plan_calls(
                [len(p) for p in prompt_ids], distinct, self.batch_size
            ):
                rows = self._generate_call([prompt_ids[i] for i in indices], count, params)
                for row, (tokens, logprobs) in enumerate(rows):
                    prompt_index = indices[row // count]
                    sample_index = first_sample + row % count
                    results[(prompt_index, sample_index)] = cut_generation(
                        prompt_index, sample_index, prompt_ids[prompt_index], tokens, logprobs, self.stop_ids,
                        self.tokenizer)
        if params.greedy:
            for prompt_index in range(len(prompt_ids)):
                only = results[(prompt_index, 0)]
                for sample_index in range(1, params.n):
                    results[(prompt_index, sample_index)] = repeated(only, sample_index)
        return [results[key] for key in sorted(results)]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors into the model's parameters by name (see :class:`WeightSyncEngine`).

        Every name and shape is checked before anything is copied, so a bad request changes nothing. A tied
        weight may come under either of its names; the copy is converted to the parameter's dtype and device.
        """
        parameters = dict(self.model.named_parameters(remove_duplicate=False))
        updates = []
        for name, tensor in named_tensors:
            parameter = parameters.get(name)
            if parameter is None:
                known = ", ".join(list(parameters)[:3])
                raise ModelError(f"the model has no parameter named {name!r}", where=location(field=name),
                                 fix=f"send Hugging Face parameter names of this model (e.g. {known}); "
                                     "the learner and the engine must hold the same architecture")
            if tuple(tensor.shape) != tuple(parameter.shape):
                raise ModelError(f"parameter {name!r} has shape {tuple(parameter.shape)} in the engine's model, "
                                 f"but the update has shape {tuple(tensor.shape)}", where=location(field=name),
                                 fix="sync from a model of the same architecture and size")
            updates.append((parameter, tensor))
        with torch.no_grad():
            for parameter, tensor in updates:
                parameter.copy_(tensor.to(device=parameter.device, dtype=parameter.dtype))

    def _processors(self, params: SamplingParams) -> list[LogitsProcessor]:
        """Temperature, top-k and top-p, in that order, as described by :class:`SamplingParams`."""
        if params.greedy:
            return []
        processors: list[LogitsProcessor] = []
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            processors.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=params.top_p))
        return processors

    def _generate_call(
        self, prompts: list[list[int]], count: int, params: SamplingParams
    ) -> list[tuple[list[int], list[float]]]:
        """One ``model.generate`` call: left-pad ``prompts``, draw ``count`` samples of each.

        Returns per row (prompt-major, ``count`` rows per prompt) the generated ids after the prompt,
        padding included, and their log-probs.
        """
        input_ids = pad_sequences(prompts, self.pad_id, left=True)
        attention_mask = pad_sequences([[1] * len(prompt) for prompt in prompts], 0, left=True)
        # Neutral values are set explicitly: fields left unset would be filled from the model's own
        # generation config (e.g. a default temperature), and the recorded log-probs would be wrong.
        neutral_sampling = {} if params.greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        config = GenerationConfig(
            do_sample=not params.greedy,
            **neutral_sampling,
            repetition_penalty=1.0,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=count,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        recorder = _SampledTokenLogprobs()
        with torch.no_grad():
            sequences = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([*self._processors(params), recorder]),
                synced_gpus=self.synced,
            )
        logprobs = recorder.finish(sequences).cpu()
        completions = sequences[:, input_ids.shape[1] :].cpu()
        return list(zip(completions.tolist(), logprobs.tolist(), strict=True))
