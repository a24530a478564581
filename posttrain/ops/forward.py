"""Per-token log-probabilities of a causal LM's targets, without materializing full logits.

:func:`completion_logprobs` runs the model body once, keeps the final hidden states only at the
positions whose *next* token is a target (``loss_mask[:, 1:] == 1``), and projects those through
the output layer in checkpointed chunks (:func:`posttrain.ops.logprobs.hidden_logprobs`). Prompt and
padding positions never reach the ``vocab``-sized projection at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.ops.logprobs import DEFAULT_CHUNK, hidden_logprobs


@dataclass
class TargetLogprobs:
    """Shifted per-token values aligned with ``input_ids[:, 1:]``; zero where ``mask`` is 0."""

    logprobs: torch.Tensor  # [B, T-1]
    mask: torch.Tensor  # [B, T-1], 1 where input_ids[:, t+1] is a target
    entropy: torch.Tensor | None  # [B, T-1] when requested
    hidden: torch.Tensor | None = None  # [B, T, H] the body's last hidden states, when requested


def causal_lm_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module, float | None]:
    """The decoder body, the output projection and the logit soft-cap of an HF causal LM (LoRA-wrapped or not)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = inner.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("output projections with a bias are not supported by completion_logprobs")
    softcap = getattr(inner.config, "final_logit_softcapping", None)
    return inner.get_decoder(), head, softcap


def completion_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    with_hidden: bool = False,
) -> TargetLogprobs:
    """``log p_θ(x_{t+1} | x_{≤t})`` for every target token ``x_{t+1}`` (``loss_mask[:, t+1] == 1``).

    ``attention_mask=None`` with ``position_ids`` restarting at 0 marks packed sequences; the model
    then attends only within each example (transformers builds the block-diagonal mask; see
    :mod:`posttrain.data.batching`). The body runs with ``use_cache=False``, which that detection needs.
    ``with_hidden`` also returns the body's last hidden states (a value head on the same forward).
    """
    body, head, softcap = causal_lm_parts(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=False).last_hidden_state
    target_mask = loss_mask[:, 1:].bool()
    labels = input_ids[:, 1:][target_mask]
    selected = hidden[:, :-1][target_mask]
    logps, entropy = hidden_logprobs(
        selected, head.weight, labels, temperature, chunk_size, logit_softcap=softcap, with_entropy=with_entropy
    )
    shape = target_mask.shape
    full_logps = logps.new_zeros(shape)
    full_logps[target_mask] = logps
    full_entropy = None
    if entropy is not None:
        full_entropy = entropy.new_zeros(shape)
        full_entropy[target_mask] = entropy
    return TargetLogprobs(full_logps, target_mask.to(logps.dtype), full_entropy, hidden if with_hidden else None)
