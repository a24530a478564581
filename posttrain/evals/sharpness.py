"""Sharpness diagnostics: how a model M's next-token distributions differ from a reference R's on the same text.

Built to check the claims of policy "reheating" (TS-OPSD: distilling a model's own temperature-scaled
distribution ``softmax(z / T_h)`` back into it to raise its entropy after RL). M is typically the reheated
checkpoint and R the collapsed one. Both models score the *same* token sequences: completions sampled at
temperature 1 from R (``contexts="reference"``, the default) or from M, after prompts from a data file.

At every scored position ``t`` (the positions whose next token ``x_{t+1}`` is a completion token; prompt and
padding positions are masked out), with ``z_M``, ``z_R`` the logits there, ``p = softmax(z)``:

- entropy ``H = −Σ_v p_v log p_v`` at temperature 1 (:func:`posttrain.ops.token_entropy`), for M and R;
- sharpness, the max-probability ``max_v p_v``, for M and R;
- top-k overlap ``|topk(z_M) ∩ topk(z_R)| / k`` for k = 1, 5, 10 (are the top candidate sets preserved?);
- the layer-wise cosine similarity ``cos(h_M^l, h_R^l)`` of every entry of the decoder's ``hidden_states``
  (the embeddings, then each layer's output; in HF Llama-style models the *last* entry is taken after the
  final norm, i.e. it equals ``last_hidden_state``), and the norm ratio ``‖h_M^l‖ / ‖h_R^l‖``, which shows
  a pure rescaling that the cosine cannot see;
- the effective temperature ``T̂ = argmin_T KL(softmax(z_R / T) ‖ softmax(z_M))`` (:func:`fit_temperature`):
  the temperature at which R best imitates M. ``T̂ > 1`` means M is R made hotter; a reheat that only
  rescaled the logits by ``1/T_h`` would give ``T̂ = T_h`` everywhere.

Means are over all scored positions of all sequences; ``T̂`` is summarized by its median, quartiles and mean.
pass@1 and pass@k of both models come from :func:`posttrain.evals.math.evaluate_math` at temperature 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from posttrain.data import encode_prompts, pad_sequences, padded_batch
from posttrain.errors import DataError, check_choice
from posttrain.evals.math import evaluate_math
from posttrain.evals.run import prompt_records
from posttrain.models import load_model, load_tokenizer
from posttrain.models.vocabulary import check_same_output_size, check_same_tokenizer
from posttrain.ops import causal_lm_parts, soft_cap, token_entropy
from posttrain.rollout import Generation, HFEngine, RolloutEngine, SamplingParams, stop_token_ids
from posttrain.rollout.options import ToolOptions

CONTEXTS = ("reference", "model")
OVERLAP_KS = (1, 5, 10)
ONE_HOT_PROB = 1.0 - 1e-6  # a reference max-probability above this makes T̂ ill-defined: the position is skipped
LOGIT_FLOOR = 1e4  # logits more than this below a row's maximum (including −inf) are raised to it in the fit
WHERE = "sharpness --model/--reference"
VOCABULARY_FIX = "compare two checkpoints of the same model family (the same tokenizer and output vocabulary)"


# ---------------------------------------------------------------------------------- effective temperature


def _kl_at(reference: torch.Tensor, model_logp: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(z_R / T) ‖ q)`` per row, with ``T = exp(log_t)`` per row and ``model_logp = log q``."""
    scaled = reference * torch.exp(-log_t)[:, None]
    logp = scaled - torch.logsumexp(scaled, dim=-1, keepdim=True)
    return (logp.exp() * (logp - model_logp)).sum(-1)


def _kl_slope(reference: torch.Tensor, model_logp: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """``d KL / d log T`` per row.

    With ``s = 1/T`` and ``p = softmax(s z_R)``: ``dKL/ds = s·Var_p(z_R) − Cov_p(z_R, log q)``, and
    ``d s / d log T = −s``. Centred moments keep the difference accurate when the logits are nearly flat.
    """
    s = torch.exp(-log_t)[:, None]
    p = torch.softmax(reference * s, dim=-1)
    centred = reference - (p * reference).sum(-1, keepdim=True)
    centred_logq = model_logp - (p * model_logp).sum(-1, keepdim=True)
    variance = (p * centred * centred).sum(-1)
    covariance = (p * centred * centred_logq).sum(-1)
    return -s[:, 0] * (s[:, 0] * variance - covariance)


def fit_temperature(
    reference_logits: torch.Tensor,
    model_logits: torch.Tensor,
    low: float = 0.25,
    high: float = 8.0,
    grid: int = 40,
    steps: int = 24,
    chunk_size: int = 128,
) -> torch.Tensor:
    """The effective temperature ``T̂ = argmin_{T ∈ [low, high]} KL(softmax(z_R / T) ‖ softmax(z_M))`` per row.

    ``reference_logits`` and ``model_logits`` are ``[N, V]``; returns ``[N]`` float32 on their device.

    Fit, vectorized over rows and done ``chunk_size`` rows at a time in float64: the KL is evaluated on a
    grid of ``grid`` values of ``log T`` evenly spaced in ``[log low, log high]``; the best grid point and its
    two neighbours bracket the minimum, which is then located by ``steps`` bisections on the sign of the
    exact slope ``dKL/dlog T = −s·(s·Var_p(z_R) − Cov_p(z_R, log q))`` (``s = 1/T``, ``p = softmax(s z_R)``,
    ``q = softmax(z_M)``). The slope vanishes exactly where ``s·Var_p(z_R) = Cov_p(z_R, log q)``; when
    ``z_M = z_R / T₀ + c`` this gives ``T̂ = T₀`` exactly. A minimum outside ``[low, high]`` gives the bound.
    The bracket is ``2·log(high/low)/(grid−1)`` wide in ``log T``, so 24 bisections leave ~1e-8 error.

    Ill-defined rows are NaN: where R is numerically one-hot (its max-probability ``> 1 − 1e-6``, so every
    ``T < 1`` gives nearly the same distribution) or flat (all logits equal, so every ``T`` does). Logits more
    than ``1e4`` below their row's maximum (``−inf`` included) are raised to that floor, keeping the moments
    finite; such tokens have probability ``e^-1e4 = 0`` either way.
    """
    if reference_logits.shape != model_logits.shape or reference_logits.dim() != 2:
        raise ValueError(
            f"fit_temperature needs two [N, V] tensors of one shape, got {tuple(reference_logits.shape)} "
            f"and {tuple(model_logits.shape)}"
        )
    if not 0 < low < high:
        raise ValueError(f"fit_temperature needs 0 < low < high, got low={low}, high={high}")
    device = reference_logits.device
    log_grid = torch.linspace(math.log(low), math.log(high), grid, dtype=torch.float64, device=device)
    pieces = []
    for start in range(0, reference_logits.shape[0], chunk_size):
        reference = _floored(reference_logits[start : start + chunk_size].to(torch.float64))
        model_logp = torch.log_softmax(_floored(model_logits[start : start + chunk_size].to(torch.float64)), -1)
        rows = reference.shape[0]
        kl = torch.stack([_kl_at(reference, model_logp, value.expand(rows)) for value in log_grid], dim=1)
        best = kl.argmin(dim=1)
        lower = log_grid[(best - 1).clamp(min=0)]
        upper = log_grid[(best + 1).clamp(max=grid - 1)]
        for _ in range(steps):
            middle = (lower + upper) / 2
            rising = _kl_slope(reference, model_logp, middle) > 0
            upper = torch.where(rising, middle, upper)
            lower = torch.where(rising, lower, middle)
        fitted = torch.exp((lower + upper) / 2)
        fitted[_ill_defined(reference)] = float("nan")
        pieces.append(fitted.float())
    return torch.cat(pieces) if pieces else reference_logits.new_zeros(0, dtype=torch.float32)


def _floored(logits: torch.Tensor) -> torch.Tensor:
    return torch.maximum(logits, logits.amax(-1, keepdim=True) - LOGIT_FLOOR)


def _ill_defined(reference: torch.Tensor) -> torch.Tensor:
    """Rows whose distribution does not depend on ``T`` near 1: numerically one-hot, or flat."""
    max_prob = torch.exp(reference.amax(-1) - torch.logsumexp(reference, dim=-1))
    flat = reference.amax(-1) == reference.amin(-1)
    return (max_prob > ONE_HOT_PROB) | flat


# --------------------------------------------------------------------------------------- per position


def position_stats(
    model_logits: torch.Tensor, reference_logits: torch.Tensor, ks: Sequence[int] = OVERLAP_KS
) -> dict[str, torch.Tensor]:
    """Per-row statistics of two ``[N, V]`` logit blocks (rows = positions); every value is ``[N]`` float32.

    ``entropy_model`` / ``entropy_reference``: ``H(softmax(z))`` at temperature 1 (nats);
    ``max_prob_model`` / ``max_prob_reference``: ``max_v softmax(z)_v = exp(max z − logsumexp z)``;
    ``top{k}_overlap``: ``|topk(z_M) ∩ topk(z_R)| / k`` (k capped at V); ``temperature``: :func:`fit_temperature`
    of R towards M (NaN where it is ill-defined).
    """
    if model_logits.shape != reference_logits.shape:
        raise ValueError(
            f"logits of different shapes: {tuple(model_logits.shape)} and {tuple(reference_logits.shape)}"
        )
    stats = {
        "entropy_model": token_entropy(model_logits).float(),
        "entropy_reference": token_entropy(reference_logits).float(),
        "max_prob_model": _max_prob(model_logits),
        "max_prob_reference": _max_prob(reference_logits),
    }
    widest = min(max(ks), model_logits.shape[-1])
    top_model = model_logits.topk(widest, dim=-1).indices
    top_reference = reference_logits.topk(widest, dim=-1).indices
    for k in ks:
        k_used = min(k, widest)
        shared = (top_model[:, :k_used, None] == top_reference[:, None, :k_used]).any(-1).sum(-1)
        stats[f"top{k}_overlap"] = shared.float() / k_used
    stats["temperature"] = fit_temperature(reference_logits, model_logits)
    return stats


def _max_prob(logits: torch.Tensor) -> torch.Tensor:
    values = logits.float()
    return torch.exp(values.amax(-1) - torch.logsumexp(values, dim=-1))


def sharpness_stats(
    model,
    reference,
    input_ids: torch.Tensor,
    target_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    ks: Sequence[int] = OVERLAP_KS,
    chunk_size: int = 256,
) -> dict[str, torch.Tensor]:
    """Per-position statistics of M (``model``) against R (``reference``) on one batch of sequences.

    ``input_ids``, ``target_mask`` and ``attention_mask`` are ``[B, T]``; ``target_mask[b, t+1] = 1`` marks a
    completion token, so position ``t`` (whose logits predict it) is scored. Each model runs its decoder
    once without gradients and with ``output_hidden_states=True``; only the scored positions' final states
    are projected onto the vocabulary, ``chunk_size`` positions at a time, so at most a few
    ``[chunk_size, V]`` blocks exist at once. Returns, on the CPU, every :func:`position_stats` entry
    (``[N]`` over the ``N`` scored positions, row-major) plus ``layer_cosine`` and ``layer_norm_ratio``
    (``[N, L+1]``, one column per ``hidden_states`` entry; present only when both models have the same
    number and width of hidden states).
    Raises :class:`ModelError` when the output vocabularies differ in size.
    """
    check_same_output_size(model, reference, WHERE, VOCABULARY_FIX)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    scored = target_mask[:, 1:].bool()
    scored = torch.cat([scored, torch.zeros_like(scored[:, :1])], dim=1)  # position t scores token t+1
    states, heads = [], []
    for lm in (model, reference):
        body, head, softcap = causal_lm_parts(lm)
        device = head.weight.device
        was_training = lm.training
        lm.eval()
        try:
            with torch.no_grad():
                hidden = body(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    output_hidden_states=True,
                    use_cache=False,
                ).hidden_states
        finally:
            lm.train(was_training)
        where = scored.to(device)
        states.append([layer[where] for layer in hidden])  # each [N, H]
        heads.append((head, softcap))
    pieces: dict[str, list[torch.Tensor]] = {}
    count = states[0][-1].shape[0]
    for start in range(0, count, chunk_size):
        logits = [
            _project(layers[-1][start : start + chunk_size], head, softcap)
            for layers, (head, softcap) in zip(states, heads, strict=True)
        ]
        logits[1] = logits[1].to(logits[0].device)
        for key, value in position_stats(logits[0], logits[1], ks).items():
            pieces.setdefault(key, []).append(value.cpu())
    stats = {key: torch.cat(values) for key, values in pieces.items()}
    if count == 0:
        stats = {key: torch.zeros(0) for key in _position_keys(ks)}
    if len(states[0]) == len(states[1]) and all(
        a.shape == b.shape for a, b in zip(states[0], states[1], strict=True)
    ):
        stats["layer_cosine"], stats["layer_norm_ratio"] = _layer_similarity(states[0], states[1])
    return stats


def _position_keys(ks: Sequence[int]) -> list[str]:
    keys = ["entropy_model", "entropy_reference", "max_prob_model", "max_prob_reference"]
    return [*keys, *(f"top{k}_overlap" for k in ks), "temperature"]


def _project(hidden: torch.Tensor, head, softcap: float | None) -> torch.Tensor:
    with torch.no_grad():
        logits = head(hidden).float()
    return soft_cap(logits, softcap)


def _layer_similarity(
    model_states: list[torch.Tensor], reference_states: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position and layer: cosine of the two hidden states and the ratio of their norms → two ``[N, L+1]``."""
    cosines, ratios = [], []
    for mine, theirs in zip(model_states, reference_states, strict=True):
        a, b = mine.float(), theirs.float().to(mine.device)
        cosines.append(torch.nn.functional.cosine_similarity(a, b, dim=-1).cpu())
        ratios.append((a.norm(dim=-1) / b.norm(dim=-1).clamp(min=1e-12)).cpu())
    return torch.stack(cosines, dim=1), torch.stack(ratios, dim=1)


# ----------------------------------------------------------------------------------------- evaluation


class _RecordingEngine(RolloutEngine):
    """Passes ``generate`` through and keeps the generations, so the pass@k samples also serve as contexts."""

    def __init__(self, engine: RolloutEngine):
        self.engine = engine
        self.generations: list[Generation] = []

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[Generation]:
        self.generations = self.engine.generate(prompt_ids, params)
        return self.generations


def default_out_dir(model: str) -> Path:
    """``<model>/eval/sharpness`` when ``model`` is a directory, else ``runs/sharpness``."""
    return Path(model) / "eval" / "sharpness" if Path(model).is_dir() else Path("runs") / "sharpness"


def _summary(stats: dict[str, torch.Tensor], ks: Sequence[int]) -> dict:
    """Means over positions, ``T̂`` quartiles over the positions where it is defined, per-layer means."""
    summary = {
        key: stats[key].mean().item()
        for key in ("entropy_model", "entropy_reference", "max_prob_model", "max_prob_reference")
    }
    summary.update({f"top{k}_overlap": stats[f"top{k}_overlap"].mean().item() for k in ks})
    temperature = stats["temperature"].double()
    defined = temperature[~temperature.isnan()]
    quartiles = (
        torch.quantile(defined, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        if defined.numel()
        else [None] * 3
    )
    summary.update(
        temperature_median=quartiles[1],
        temperature_p25=quartiles[0],
        temperature_p75=quartiles[2],
        temperature_mean=defined.mean().item() if defined.numel() else None,
        temperature_positions=defined.numel(),
        temperature_skipped=temperature.numel() - defined.numel(),
    )
    for key in ("layer_cosine", "layer_norm_ratio"):
        summary[key] = stats[key].mean(0).tolist() if key in stats else None
    return summary


class SharpnessOptions(ToolOptions):
    """``posttrain eval sharpness`` (:func:`run_sharpness_eval`); ``n`` 0 or None: all prompts."""

    model: str
    reference: str
    data: str
    contexts: str = "reference"
    n: int | None = 32
    samples: int = 1
    max_new_tokens: int = 96
    k: int = 8
    seed: int = 0
    out_dir: Path | None = None
    batch_size: int = 16
    score_batch_size: int = 4


def run_sharpness_eval(options: SharpnessOptions) -> dict:
    """``posttrain eval sharpness``: compare M (``model``) with R (``reference``) on identical contexts.

    Loads the first ``n`` prompt records of ``data`` (a file or ``task:NAME``). Each model samples
    ``max(k, samples)`` completions per prompt at temperature 1 (seeded with ``seed``), scored by
    :func:`~posttrain.evals.math.evaluate_math` for pass@1 … pass@k (unbiased estimator over those samples).
    The first ``samples`` completions per prompt of the context model (R for ``contexts="reference"``, M for
    ``"model"``) are the contexts: both models score those same tokens with :func:`sharpness_stats`,
    ``score_batch_size`` sequences per forward. Writes ``sharpness.json`` to ``out_dir`` (default:
    :func:`default_out_dir` of ``model``) and returns the same object.
    Raises :class:`ModelError` when the tokenizers or the output vocabulary sizes differ.
    """
    model, reference, contexts, samples, k = (options.model, options.reference, options.contexts, options.samples,
                                              options.k)
    check_choice(contexts, CONTEXTS, "contexts", where="--contexts")
    if samples < 1 or k < 1:
        raise DataError(f"samples = {samples}, k = {k}", where="--samples/--k", fix="use samples >= 1 and k >= 1")
    tokenizers = {"model": load_tokenizer(model), "reference": load_tokenizer(reference)}
    check_same_tokenizer(tokenizers["model"], tokenizers["reference"], WHERE, VOCABULARY_FIX)
    models = {"model": load_model(model), "reference": load_model(reference)}
    check_same_output_size(models["model"], models["reference"], WHERE, VOCABULARY_FIX)
    tokenizer = tokenizers["reference"]
    records = prompt_records(options.data, options.n, options.seed)
    prompt_ids = encode_prompts(records, tokenizer)
    references = [str(record["reference"]) for record in records]
    params = SamplingParams(temperature=1.0, max_new_tokens=options.max_new_tokens, n=max(k, samples), seed=options.seed)
    result: dict = {
        "model": model,
        "reference": reference,
        "data": options.data,
        "contexts": contexts,
        "num_prompts": len(records),
        "samples": samples,
        "max_new_tokens": options.max_new_tokens,
        "k": k,
        "seed": options.seed,
    }
    generations = {}
    math_metrics = {}
    for role, lm in models.items():
        engine = _RecordingEngine(HFEngine(lm, tokenizers[role], batch_size=options.batch_size))
        metrics = evaluate_math(engine, prompt_ids, references, k=k, params=params).to_dict()
        math_metrics[role] = {key: value for key, value in metrics.items() if key not in ("num_prompts",)}
        generations[role] = engine.generations
    sequences = [
        (g.prompt_ids, g.token_ids) for g in generations[contexts] if g.sample_index < samples and g.token_ids
    ]
    if not sequences:
        raise DataError("no completion tokens to score", fix="raise --max-new-tokens or use other prompts")
    pad_id = tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else stop_token_ids(models["reference"], tokenizer)[0]
    pieces: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(sequences), options.score_batch_size):
        chunk = sequences[start : start + options.score_batch_size]
        batch = padded_batch([[*prompt, *completion] for prompt, completion in chunk], pad_id)
        target_mask = pad_sequences([[0] * len(prompt) + [1] * len(completion) for prompt, completion in chunk], 0)
        stats = sharpness_stats(
            models["model"], models["reference"], batch["input_ids"], target_mask,
            attention_mask=batch["attention_mask"]
        )
        for key, value in stats.items():
            pieces.setdefault(key, []).append(value)
    stats = {key: torch.cat(values) for key, values in pieces.items()}
    result.update(num_sequences=len(sequences), num_positions=stats["temperature"].numel())
    result.update(_summary(stats, OVERLAP_KS))
    for role, metrics in math_metrics.items():
        result.update({f"{role}_{key}": value for key, value in metrics.items()})
    out = Path(options.out_dir) if options.out_dir is not None else default_out_dir(model)
    out.mkdir(parents=True, exist_ok=True)
    result["out"] = str(out / "sharpness.json")
    (out / "sharpness.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result
