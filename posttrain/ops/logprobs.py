"""Per-token log-probabilities and entropies, computed in chunks.

A full ``[batch, seq, vocab]`` log-softmax of a 50k-vocabulary model costs hundreds of MB per copy,
and autograd keeps several copies. The functions here never hold more than ``chunk_size`` rows of
vocabulary-sized values at once:

* :func:`token_logprobs` — ``log p(label_t) = z_t[label_t]/T − logsumexp(z_t/T)`` from logits.
* :func:`token_entropy` — ``H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v z_{t,v}`` from logits.
* :func:`hidden_logprobs` — the same quantities from final hidden states and the output projection,
  with the projection recomputed chunk by chunk in the backward pass (activation checkpointing), so
  the ``[tokens, vocab]`` logits never exist for all tokens at once, not even for autograd.
* :func:`soft_cap` — the logit soft-cap ``c·tanh(z/c)`` of models that configure one, applied wherever
  logits are projected from hidden states.

Convention (shared by every op): ``logits[..., t, :]`` scores ``labels[..., t]``; callers shift.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 1024


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    """Half-precision values are promoted to float32 (logsumexp in bf16 is too coarse); float64 stays."""
    return values if values.dtype in (torch.float32, torch.float64) else values.float()


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """Log-probability of each label: ``log softmax(z_t / T)[label_t]``.

    ``logits`` is ``[..., V]`` and ``labels`` is ``[...]``; the result has the shape of ``labels`` and
    the dtype of ``logits`` (computed in float32 for half-precision inputs). Rows are processed
    ``chunk_size`` at a time so the log-softmax is never materialized for every row.
    Equal to TRL's ``selective_log_softmax`` (tested).
    """
    _check_temperature(temperature)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        rows = _at_least_float32(flat_logits[start : start + chunk_size])
        if temperature != 1.0:
            rows = rows / temperature
        picked = rows.gather(-1, flat_labels[start : start + chunk_size, None]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(rows, dim=-1))
    out = torch.cat(pieces) if pieces else _at_least_float32(flat_logits.new_zeros(0))
    return out.reshape(labels.shape)


def token_entropy(logits: torch.Tensor, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Entropy of ``softmax(z_t / T)`` at every position: ``H = logsumexp(z) − Σ_v p_v z_v`` (nats)."""
    _check_temperature(temperature)
    flat = logits.reshape(-1, logits.shape[-1])
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        rows = _at_least_float32(flat[start : start + chunk_size]) / temperature
        pieces.append(_entropy_of_rows(rows))
    out = torch.cat(pieces) if pieces else _at_least_float32(flat.new_zeros(0))
    return out.reshape(logits.shape[:-1])


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``c·tanh(z/c)``: the final-logit soft-cap of models that set one (Gemma 2's ``final_logit_softcapping``,
    as transformers applies it); ``z`` unchanged when ``cap`` is None or 0."""
    return torch.tanh(logits / cap) * cap if cap else logits


def _entropy_of_rows(rows: torch.Tensor) -> torch.Tensor:
    log_norm = torch.logsumexp(rows, dim=-1, keepdim=True)
    probs = torch.exp(rows - log_norm)
    return log_norm.squeeze(-1) - (probs * rows).sum(-1)


def _project_chunk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    softcap: float | None,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = soft_cap(_at_least_float32(hidden @ weight.t()), softcap)
    if temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, labels[:, None]).squeeze(-1) - log_norm
    if with_entropy:
        probs = torch.exp(logits - log_norm[:, None])
        entropy = log_norm - (probs * logits).sum(-1)
    else:
        entropy = picked.new_zeros(picked.shape)
    return picked, entropy


def hidden_logprobs(
    hidden: torch.Tensor,
    output_weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK,
    logit_softcap: float | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities (and optionally entropies) of ``labels`` from hidden states.

    ``hidden`` is ``[N, H]`` (the final hidden states of the positions that predict ``labels``),
    ``output_weight`` is the ``[V, H]`` output projection. For each chunk of rows it computes
    ``z = h Wᵀ`` (optionally soft-capped, ``c·tanh(z/c)``), then ``log softmax(z/T)[label]`` and
    ``H = logsumexp(z/T) − Σ p·z/T``. When gradients are needed, every chunk but the last is
    checkpointed: the backward pass recomputes that chunk's logits instead of storing them, so peak
    memory holds one ``[chunk, V]`` block rather than ``[N, V]``. The last chunk keeps its logits for
    backward, which needs them first: recomputing it would cost a projection and save no peak memory.
    Entropy is returned with gradient (callers detach it when they only log it).
    """
    _check_temperature(temperature)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or output_weight.requires_grad)
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (hidden[start : start + chunk_size], output_weight, labels[start : start + chunk_size],
                temperature, logit_softcap, with_entropy)
        if needs_grad and start + chunk_size < hidden.shape[0]:
            picked, entropy = checkpoint(_project_chunk, *args, use_reentrant=False)
        else:
            picked, entropy = _project_chunk(*args)
        logps.append(picked)
        entropies.append(entropy)
    if not logps:
        empty = _at_least_float32(hidden.new_zeros(0))
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(entropies) if with_entropy else None)
