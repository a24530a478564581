"""Scores a model gives its own completions from one forward pass: the log-probability of a reserved token
``z_c`` after the completion's EOS (LaSeR's last-token self-reward, Yang et al. 2025, arXiv 2510.14943) and the
completion's self-certainty (Kang, Zhao & Song 2025). Used by the self-reward and best-of-N evaluations, LaSeR
training and the self-rewarding judge data (:mod:`posttrain.judges.self_rewarding`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from posttrain.data import padded_batch
from posttrain.errors import DataError, ModelError
from posttrain.ops import causal_lm_parts, completion_logprobs, hidden_logprobs, self_certainty, soft_cap

# Reserved tokens the LaSeR authors used: Qwen2.5 vocabularies (id 151652) and Llama 3 vocabularies (128002).
PREFERRED_RESERVED_TOKENS = ("<|vision_start|>", "<|reserved_special_token_0|>")
RESERVED_TOKEN_FIX = (
    "pass a token the model never writes (one of its unused special tokens) as the reserved token"
)


def reserved_token(tokenizer, token: str | None = None) -> int:
    """The id of the reserved token ``z_c``: ``token`` when given, else a default for this tokenizer.

    The default is the first of :data:`PREFERRED_RESERVED_TOKENS` in the vocabulary, else the added special
    token with the highest id that is none of BOS, EOS, PAD and UNK and does not occur in the chat template
    (for SmolLM2 that is ``<empty_output>``, id 16, a code-data marker that never appears in chat text; on
    the embedded SmolLM2-135M-Instruct, ``log π(z_c | x, y, <|im_end|>)`` over 24 arithmetic solutions is
    −19.32 ± 0.84, so its ``c_ref`` is about −19.3). The unknown token is the last resort (byte-level
    vocabularies never produce it).
    Raises :class:`ModelError` when ``token`` is not in the vocabulary, is a token the model writes (BOS,
    EOS, PAD), or when no candidate exists.
    """
    vocabulary = tokenizer.get_vocab()
    emitted = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    if token is not None:
        if token not in vocabulary:
            raise ModelError(
                f"the reserved token {token!r} is not in the tokenizer's vocabulary",
                where="reserved_token",
                fix=f"{RESERVED_TOKEN_FIX}, e.g. one of {_special_tokens(tokenizer)}",
            )
        if vocabulary[token] in emitted:
            raise ModelError(
                f"the reserved token {token!r} is the model's BOS, EOS or PAD token, which it writes itself",
                where="reserved_token",
                fix=RESERVED_TOKEN_FIX,
            )
        return vocabulary[token]
    for preferred in PREFERRED_RESERVED_TOKENS:
        if preferred in vocabulary:
            return vocabulary[preferred]
    template = str(getattr(tokenizer, "chat_template", None) or "")
    unknown = tokenizer.unk_token_id
    candidates = [
        token_id
        for token_id, added in tokenizer.added_tokens_decoder.items()
        if added.special and token_id not in emitted and added.content not in template
    ]
    unused = [token_id for token_id in candidates if token_id != unknown]
    if unused or unknown in candidates:
        return max(unused) if unused else unknown
    raise ModelError(
        "the tokenizer has no special token that the model never writes, so no default reserved token",
        where="reserved_token",
        fix=RESERVED_TOKEN_FIX,
    )


def _special_tokens(tokenizer) -> list[str]:
    return [added.content for added in tokenizer.added_tokens_decoder.values() if added.special]


@dataclass
class CompletionScores:
    """Per completion: ``log π(z_c | x, y, EOS)`` and self-certainty, each ``[B]`` or None if not asked for."""

    reserved_logprobs: torch.Tensor | None
    self_certainty: torch.Tensor | None


def completion_scores(
    model,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    eos_id: int,
    reserved_id: int | None = None,
    with_self_certainty: bool = False,
    batch_size: int = 8,
) -> CompletionScores:
    """Score completions with one forward pass per batch of ``batch_size`` sequences.

    Each sequence is ``prompt + completion (+ EOS unless the completion already ends with it) (+ z_c)``,
    right-padded. With ``reserved_id``, the log-probability of ``z_c`` is read at the EOS position (only
    that position is projected onto the vocabulary). With ``with_self_certainty``, each completion's
    :func:`posttrain.ops.self_certainty` is taken over the positions that predict its own tokens (an EOS
    appended here is not one of them). The model runs in eval mode without gradients.
    """
    if not prompt_ids or len(prompt_ids) != len(completion_ids):
        raise DataError(
            f"{len(prompt_ids)} prompts and {len(completion_ids)} completions to score",
            fix="give one prompt per completion, and at least one",
        )
    if any(len(prompt) == 0 for prompt in prompt_ids):
        raise DataError("a prompt has no tokens", fix="drop empty prompts")
    body, head, softcap = causal_lm_parts(model)
    device = head.weight.device
    ended = [list(c) if c and c[-1] == eos_id else [*c, eos_id] for c in completion_ids]
    tail = [] if reserved_id is None else [reserved_id]
    sequences = [[*p, *c, *tail] for p, c in zip(prompt_ids, ended, strict=True)]
    reserved, certainty = [], []
    with scoring(model):
        for rows, batch in padded_batches(sequences, eos_id, batch_size, device):
            hidden = body(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).last_hidden_state
            if reserved_id is not None:
                eos_positions = torch.tensor([len(prompt_ids[i]) + len(ended[i]) - 1 for i in rows])
                labels = torch.full((len(rows),), reserved_id, dtype=torch.long, device=device)
                at_eos = hidden[torch.arange(len(rows)), eos_positions.to(device)]
                reserved.append(
                    hidden_logprobs(at_eos, head.weight, labels, logit_softcap=softcap)[0].cpu()
                )
            if with_self_certainty:
                for row, index in enumerate(rows):
                    first = len(prompt_ids[index]) - 1
                    states = hidden[row, first : first + len(completion_ids[index])]
                    logits = soft_cap(states @ head.weight.t(), softcap)
                    mask = torch.ones(1, logits.shape[0], device=device)
                    certainty.append(self_certainty(logits[None], mask).cpu())
    return CompletionScores(
        torch.cat(reserved) if reserved_id is not None else None,
        torch.cat(certainty) if with_self_certainty else None,
    )


def continuation_logprobs(model, prefix_ids: list[list[int]], continuation_ids: list[list[int]], pad_id: int,
                          batch_size: int = 8) -> list[float]:
    """``Σ_t log π(c_t | prefix, c_<t)`` of each continuation ``c`` after its prefix (teacher-forced, summed over the
    continuation's tokens; 0 for an empty one), ``batch_size`` right-padded sequences per forward pass, in eval mode
    without gradients. A completion's sequence log-probability (prefix = prompt), or the likelihood reward's
    ``log π(a* | p, z)`` (prefix = prompt + reasoning)."""
    sequences = [[*prefix, *continuation] for prefix, continuation in zip(prefix_ids, continuation_ids, strict=True)]
    values: list[float] = []
    with scoring(model):
        for rows, batch in padded_batches(sequences, pad_id, batch_size, next(model.parameters()).device):
            mask = torch.zeros_like(batch["input_ids"])
            for row, index in enumerate(rows):
                mask[row, len(prefix_ids[index]):len(sequences[index])] = 1
            out = completion_logprobs(model, batch["input_ids"], mask, attention_mask=batch["attention_mask"])
            values += out.logprobs.sum(-1).tolist()
    return values


@contextlib.contextmanager
def scoring(model) -> Iterator[None]:
    """``model`` in eval mode without gradients inside the block; its training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def padded_batches(sequences: list[list[int]], pad_id: int, batch_size: int, device
                   ) -> Iterator[tuple[range, dict[str, torch.Tensor]]]:
    """The indices and right-padded :func:`~posttrain.data.padded_batch` of ``batch_size`` sequences at a time."""
    for start in range(0, len(sequences), batch_size):
        rows = range(start, min(start + batch_size, len(sequences)))
        yield rows, padded_batch([sequences[i] for i in rows], pad_id, device)
