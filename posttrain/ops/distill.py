"""Token-level distillation divergences between a student and a (detached) teacher distribution.

With student ``p = softmax(z_S)`` and teacher ``q = softmax(z_T / T_teacher)`` (never receiving gradient),
per completion token:

* ``forward_kl`` — ``KL(q ‖ p) = Σ_v q_v (log q_v − log p_v)`` (mass-covering; the most direct way to raise the
  student's entropy toward a hotter teacher's);
* ``reverse_kl`` — ``KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)`` (mode-seeking; on-policy distillation / SDPO);
* ``jsd`` — the generalized Jensen–Shannon divergence of GKD (Agarwal et al. 2024, arXiv 2306.13649, eq. 1)
  with ``m = (1 − β)·p + β·q``: ``JSD_β = β·KL(q ‖ m) + (1 − β)·KL(p ‖ m)``; β = 0 is ``forward_kl`` and
  β = 1 is ``reverse_kl`` exactly (as TRL 1.16 ``GKDTrainer.generalized_jsd_loss`` codes it; tested equal).

``top_k > 0`` restricts both distributions to the teacher's ``k`` most likely tokens, each renormalized over
that support (the top-K approximation of SDPO / OPSD's ``top_k_loss``). ``clip`` caps each token's value
(``min(d_t, clip)``: a token above the cap adds the cap and no gradient), the per-token clipping OPSD added
because a few style tokens carried 6–15× the mean divergence (methods.md §7.3).

Values are computed a chunk of rows at a time; :func:`hidden_divergence` works from final hidden states and
recomputes each chunk's logits in backward, so neither the student's nor the teacher's ``[tokens, V]``
log-softmax exists whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from posttrain.ops.checks import check_choice
from posttrain.ops.logprobs import DEFAULT_CHUNK, _at_least_float32, soft_cap

DIVERGENCE_KINDS = ("forward_kl", "reverse_kl", "jsd")


def check_divergence_args(kind: str, beta: float, teacher_temperature: float, top_k: int,
                          vocab_size: int | None = None) -> None:
    """Raise :class:`ValueError` for an unknown kind, β outside [0, 1], T ≤ 0 or a top-k beyond the vocabulary."""
    check_choice(kind, DIVERGENCE_KINDS, "divergence kind")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta = {beta} is outside [0, 1]; "
                         "use 0 (forward KL) … 1 (reverse KL); GKD and OPSD use 0.5")
    if not (math.isfinite(teacher_temperature) and teacher_temperature > 0):
        raise ValueError(f"teacher temperature = {teacher_temperature} must be > 0; "
                         "use a temperature > 0 (TS-OPSD reheats with T > 1, e.g. 1.5 or 2.0)")
    if top_k < 0 or (vocab_size is not None and top_k > vocab_size):
        raise ValueError(f"top_k = {top_k} is outside [0, {vocab_size or 'vocabulary size'}]; "
                         "use 0 (the full vocabulary) or a k no larger than the vocabulary")


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "forward_kl",
                     beta: float = 0.5, top_k: int = 0) -> torch.Tensor:
    """Per-row divergence ``[N]`` between ``softmax(student_logits)`` and ``softmax(teacher_logits)``.

    ``teacher_logits`` are used as given (already divided by the teacher temperature) and detached.
    """
    student = _at_least_float32(student_logits)
    teacher = _at_least_float32(teacher_logits).detach()
    if top_k:
        support = teacher.topk(top_k, dim=-1).indices
        student, teacher = student.gather(-1, support), teacher.gather(-1, support)
    log_p = torch.log_softmax(student, dim=-1)
    log_q = torch.log_softmax(teacher, dim=-1)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0):
        return _kl(log_q, log_p)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1):
        return _kl(log_p, log_q)
    log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
    return beta * _kl(log_q, log_m) + (1 - beta) * _kl(log_p, log_m)


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``KL(a ‖ b) = Σ_v a_v (log a_v − log b_v)`` over the last dimension, from log-probabilities."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def distill_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                       kind: str = "forward_kl", beta: float = 0.5, teacher_temperature: float = 1.0,
                       top_k: int = 0, clip: float | None = None, chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean divergence over the tokens where ``mask`` is 1: ``Σ_t mask_t·d_t / Σ_t mask_t``.

    ``student_logits`` and ``teacher_logits`` are ``[..., V]`` with ``mask`` of shape ``[...]``; the teacher's
    logits are divided by ``teacher_temperature`` and receive no gradient. Only masked rows are evaluated, a
    chunk at a time.
    """
    check_divergence_args(kind, beta, teacher_temperature, top_k, student_logits.shape[-1])
    keep = mask.reshape(-1).bool()
    student = student_logits.reshape(-1, student_logits.shape[-1])[keep]
    teacher = teacher_logits.reshape(-1, teacher_logits.shape[-1])[keep].detach()
    pieces = []
    for start in range(0, student.shape[0], chunk_size):
        rows = token_divergence(student[start : start + chunk_size],
                                teacher[start : start + chunk_size] / teacher_temperature, kind, beta, top_k)
        pieces.append(rows if clip is None else rows.clamp(max=clip))
    if not pieces:
        return student_logits.new_zeros(()).float()
    return torch.cat(pieces).sum() / keep.sum().clamp(min=1)


@dataclass
class TokenDistill:
    """Per-token values of :func:`hidden_divergence`, one per row of the hidden states."""

    divergence: torch.Tensor  # d_t (clipped), with gradient
    entropy: torch.Tensor  # H(p_t) of the student at T = 1, detached
    student_logprob: torch.Tensor  # log p(label_t), with gradient
    teacher_logprob: torch.Tensor  # log q(label_t), detached
    teacher_entropy: torch.Tensor  # H(q_t) of the teacher after its temperature, detached


def _distill_chunk(hidden, weight, teacher_hidden, teacher_weight, labels, kind, beta, temperature, top_k, clip,
                   softcap):
    logits = soft_cap(_at_least_float32(hidden @ weight.t()), softcap)
    if teacher_hidden is None:  # the live self-teacher: this very forward's logits, detached
        teacher = logits.detach()
    else:
        teacher = soft_cap(_at_least_float32(teacher_hidden @ teacher_weight.t()).detach(), softcap)
    teacher = teacher / temperature
    divergence = token_divergence(logits, teacher, kind, beta, top_k)
    if clip is not None:
        divergence = divergence.clamp(max=clip)
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.detach().exp() * log_p.detach()).sum(-1)
    student_logprob = log_p.gather(-1, labels[:, None]).squeeze(-1)
    log_q = torch.log_softmax(teacher, dim=-1)
    teacher_logprob = log_q.gather(-1, labels[:, None]).squeeze(-1)
    teacher_entropy = -(log_q.exp() * log_q).sum(-1)
    return divergence, entropy, student_logprob, teacher_logprob, teacher_entropy


def hidden_divergence(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      teacher_hidden: torch.Tensor | None = None, teacher_weight: torch.Tensor | None = None,
                      kind: str = "forward_kl", beta: float = 0.5, teacher_temperature: float = 1.0,
                      top_k: int = 0, clip: float | None = None, chunk_size: int = DEFAULT_CHUNK,
                      logit_softcap: float | None = None) -> TokenDistill:
    """Per-token divergences from final hidden states ``[N, H]`` and the output projection ``[V, H]``.

    The student's logits are ``z = h Wᵀ``; the teacher's are ``z_T = h_T W_Tᵀ`` when ``teacher_hidden`` is
    given, else ``sg(z)`` — the student's own logits from the same forward (TS-OPSD's live self-teacher, one
    forward pass per step). Both are soft-capped when the model soft-caps. Chunks but the last are
    checkpointed, so backward recomputes their logits instead of storing ``[N, V]`` values. Also returns the
    student's entropy at T = 1 and ``log p``/``log q`` of ``labels`` (the sampled tokens), used by the
    policy-gradient variant and for logging.
    """
    check_divergence_args(kind, beta, teacher_temperature, top_k, weight.shape[0])
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        args = (hidden[rows], weight, None if teacher_hidden is None else teacher_hidden[rows], teacher_weight,
                labels[rows], kind, beta, teacher_temperature, top_k, clip, logit_softcap)
        if needs_grad and start + chunk_size < hidden.shape[0]:
            parts.append(checkpoint(_distill_chunk, *args, use_reentrant=False))
        else:
            parts.append(_distill_chunk(*args))
    if not parts:
        empty = _at_least_float32(hidden.new_zeros(0))
        return TokenDistill(empty, empty, empty, empty, empty)
    divergence, entropy, student_logprob, teacher_logprob, teacher_entropy = (
        torch.cat(p) for p in zip(*parts, strict=True))
    return TokenDistill(divergence, entropy, student_logprob, teacher_logprob.detach(), teacher_entropy.detach())


ENTROPY_WEIGHTINGS = ("none", "exp", "linear")


def entropy_weights(teacher_entropy: torch.Tensor, kind: str = "exp", tau: float = 1.0,
                    vocab_size: int | None = None) -> torch.Tensor:
    """Per-token weights of a distillation target by the teacher's entropy ``H_t = H(q_t)`` (detached):

    * ``exp`` — ``w_t = exp(−H_t / τ_H)``;
    * ``linear`` — ``w_t = max(0, 1 − H_t / log V)`` (``log V`` is the largest entropy over ``V`` tokens);
    * ``none`` — ``w_t = 1``.

    SRPO's entropy-aware weighting (Li et al. 2026, arXiv 2604.02288: "distillation targets with high teacher
    entropy get less weight"); the abstract gives no formula, these two are posttrain's choices (methods.md §7.9).
    """
    check_choice(kind, ENTROPY_WEIGHTINGS, "entropy weighting")
    entropy = teacher_entropy.detach().float()
    if kind == "none":
        return torch.ones_like(entropy)
    if kind == "exp":
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"entropy weighting tau = {tau} must be > 0; use e.g. 1.0 (nats)")
        return torch.exp(-entropy / tau)
    if vocab_size is None or vocab_size < 2:
        raise ValueError(f"linear entropy weighting needs the vocabulary size (got {vocab_size}); pass vocab_size >= 2")
    return (1 - entropy / math.log(vocab_size)).clamp(min=0.0)


def extrapolated_token_rewards(student_logprob: torch.Tensor, teacher_logprob: torch.Tensor,
                               reference_logprob: torch.Tensor | None, lam: float = 1.0) -> torch.Tensor:
    """G-OPD's token reward (Yang et al. 2026, arXiv 2602.12125; methods.md §7.4), detached:

    ``r_t = λ·(log π*(y_t) − log π_ref(y_t)) − (log π_θ(y_t) − log π_ref(y_t))``. λ = 1 is on-policy distillation
    (``log π* − log π_θ``, the π_ref terms cancel, so ``reference_logprob`` may be None), 0 < λ < 1 interpolates
    toward π_ref, λ > 1 extrapolates past the teacher (ExOPD).
    """
    if reference_logprob is None:
        if lam != 1.0:
            raise ValueError(f"G-OPD with lambda = {lam} needs the reference log-probabilities; "
                             "pass the reference model's log-probs or use 1.0")
        return (teacher_logprob - student_logprob).detach()
    return (lam * (teacher_logprob - reference_logprob) - (student_logprob - reference_logprob)).detach()
