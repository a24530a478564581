"""The rollout interface: prompts and sampling settings in; completions with their log-probs out.

Trainers and evaluations only talk to :class:`RolloutEngine`. An engine turns a batch of tokenized
prompts into ``n`` samples per prompt and reports, for every sampled token, its log-probability under
the distribution it was actually drawn from. Any backend (HF ``generate``, continuous batching, vLLM)
that honours this contract can replace another without changes to the callers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from posttrain.errors import ConfigError, DataError, location

if TYPE_CHECKING:
    import torch

FinishReason = Literal["eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions.

    The sampling distribution of each token is ``softmax(logits / temperature)`` restricted to the
    ``top_k`` most likely tokens (``0`` = no restriction), then to the smallest set of most likely
    tokens whose probability mass reaches ``top_p`` (``1.0`` = no restriction), renormalized.
    ``temperature = 0`` means greedy decoding (argmax); then all ``n`` samples of a prompt are equal.
    ``seed`` makes sampling reproducible: the same seed, prompts and settings give the same tokens.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (
                "temperature",
                math.isfinite(self.temperature) and self.temperature >= 0,
                "a number >= 0 (0 = greedy)",
            ),
            ("top_p", 0.0 < self.top_p <= 1.0, "a number in (0, 1] (1 = off)"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0 (0 = off)"),
            (
                "max_new_tokens",
                isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                "an integer >= 1",
            ),
            ("n", isinstance(self.n, int) and self.n >= 1, "an integer >= 1 (samples per prompt)"),
            (
                "seed",
                self.seed is None or (isinstance(self.seed, int) and self.seed >= 0),
                "an integer >= 0 or null",
            ),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"sampling {name} = {getattr(self, name)!r} is invalid",
                    where=name,
                    fix=f"set {name} to {expected}",
                )

    @property
    def greedy(self) -> bool:
        """True when decoding takes the most likely token at every step."""
        return self.temperature == 0


@dataclass
class Generation:
    """One sampled completion of one prompt.

    ``token_ids`` holds the completion only (no prompt, no padding), ending with the end-of-sequence
    token when ``finish_reason == "eos"``; nothing after that token is kept. ``logprobs[i]`` is the
    log-probability of ``token_ids[i]`` under the distribution it was sampled from (after temperature,
    top-k and top-p); for greedy decoding it is the log-probability under the model's own distribution
    (temperature 1). ``text`` is the decoded completion without the end-of-sequence token.
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason

    def __len__(self) -> int:
        return len(self.token_ids)


def check_prompts(prompt_ids: list[list[int]]) -> None:
    """A :class:`DataError` naming the first prompt without tokens."""
    for index, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            raise DataError(f"prompt {index} has no tokens", where=location(field=f"prompts[{index}]"),
                            fix="drop empty prompts")


def cut_generation(prompt_index: int, sample_index: int, prompt: list[int], tokens: list[int],
                   logprobs: list[float], stop_ids, tokenizer) -> Generation:
    """The :class:`Generation` of sampled ``tokens``: kept through the first of ``stop_ids`` (``eos``), or whole
    (``length``); nothing after the stop token (padding, say) is kept, and the text leaves the stop token out."""
    stops = set(stop_ids)
    end = next((i for i, token in enumerate(tokens) if token in stops), None)
    if end is None:
        kept, finish_reason, text_tokens = list(tokens), "length", tokens
    else:
        kept, finish_reason, text_tokens = list(tokens[: end + 1]), "eos", tokens[:end]
    return Generation(prompt_index=prompt_index, sample_index=sample_index, prompt_ids=list(prompt),
                      token_ids=kept, logprobs=list(logprobs[: len(kept)]),
                      text=tokenizer.decode(text_tokens, skip_special_tokens=False), finish_reason=finish_reason)


def repeated(generation: Generation, sample_index: int) -> Generation:
    """A copy of ``generation`` as sample ``sample_index`` (greedy decoding gives every sample the same)."""
    return dataclasses.replace(generation, sample_index=sample_index, token_ids=list(generation.token_ids),
                               logprobs=list(generation.logprobs))


@runtime_checkable
class RolloutEngine(Protocol):
    """Anything that can sample completions for tokenized prompts.

    ``generate`` returns ``len(prompt_ids) * params.n`` generations ordered by
    ``(prompt_index, sample_index)``; ``prompt_index`` is the position of the prompt in ``prompt_ids``.
    """

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Generation]:
        """Sample ``params.n`` completions for each prompt."""
        ...


@runtime_checkable
class WeightSyncEngine(RolloutEngine, Protocol):
    """A rollout engine whose weights a learner can replace in place, between calls to ``generate``.

    ``load_weights`` takes ``(name, tensor)`` pairs with Hugging Face parameter names (as
    ``model.named_parameters()`` gives them; a tied weight appears once, under either of its names). It may
    receive a subset of the parameters (the rest keep their values); an unknown name or a shape that does not
    match raises :class:`posttrain.errors.ModelError` before any weight changes. Tensors may be in another
    dtype or on another device than the engine's; they are converted on the way in.
    """

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy the given tensors into the engine's weights."""
        ...
