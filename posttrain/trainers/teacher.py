"""The teacher side of on-policy distillation, shared by ``method: distill`` and ``method: srpo``: the teacher
models (another model, a frozen snapshot of the starting weights, the moving average of the student), the
teacher's final hidden states on the completion tokens, the per-rollout feedback contexts of SDPO's self-teacher
and the token-level divergence (:func:`posttrain.ops.hidden_divergence`) with its per-token weights.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.data import encode_prompts
from posttrain.errors import ConfigError, DataError
from posttrain.models import disabled_adapter, is_peft_model, load_model, load_tokenizer
from posttrain.models.vocabulary import check_same_output_size, check_same_tokenizer
from posttrain.ops import TokenDistill, causal_lm_parts, entropy_weights, hidden_divergence
from posttrain.rollout import Generation
from posttrain.trainers.checkpoint import load_model_weights, unwrap
from posttrain.trainers.distributed import Processes
from posttrain.trainers.feedback import feedback_counts, rollout_feedback, teacher_record
from posttrain.trainers.parallel import resolve_strategy
from posttrain.trainers.rollouts import RolloutRows

TEACHER_FIX = "distill from a teacher of the same model family and tokenizer"
EMA_TEACHER_DIR = "ema_teacher"  # in a checkpoint: the moving-average teacher's weights (context_weights: ema)


@dataclass
class FeedbackContexts:
    """The teacher prompts of a step's rollouts (token ids, one per rollout), whether each rollout is distilled,
    the feedback sources each was shown and the step's feedback counts."""

    prompt_ids: list[list[int]]
    distilled: list[bool]
    stats: dict[str, float]
    kinds: list[tuple[str, ...]]


class DistillTeacher:
    """The teacher of ``config.distill`` for a student ``model``."""

    def __init__(self, config: RunConfig, model, tokenizer, processes: Processes):
        cfg = config.distill
        self.vocab_size = causal_lm_parts(model)[1].weight.shape[0]
        if cfg.top_k_divergence > self.vocab_size:
            raise ConfigError(f"distill.top_k_divergence = {cfg.top_k_divergence} exceeds the model's vocabulary of "
                              f"{self.vocab_size} tokens", where="distill.top_k_divergence",
                              fix="use 0 (the full vocabulary) or a k no larger than the vocabulary")
        self.cfg, self.chunk_size, self.processes, self.tokenizer = cfg, config.train.chunk_size, processes, tokenizer
        self.model = self._other_model(model, tokenizer)
        self.snapshot = self._snapshot(model)
        self.average = self._average(model, resolve_strategy(config.dist.strategy, processes.world_size))

    def _other_model(self, model, tokenizer):
        """The other model (teacher ``model``), or None."""
        cfg = self.cfg
        if cfg.teacher != "model":
            return None
        check_same_tokenizer(tokenizer, load_tokenizer(cfg.teacher_model), "distill.teacher_model", TEACHER_FIX)
        teacher = load_model(cfg.teacher_model, dtype=next(model.parameters()).dtype, device=str(self.processes.device))
        check_same_output_size(model, teacher, "distill.teacher_model", TEACHER_FIX)
        return teacher.eval().requires_grad_(False)

    def _snapshot(self, model):
        """A frozen copy of the starting weights when a teacher or G-OPD's π_ref needs them (None with LoRA: the
        adapter-disabled model is the starting model)."""
        cfg = self.cfg
        in_context = cfg.teacher in ("self_context", "self_feedback", "self_revision")
        needed = (cfg.teacher == "snapshot" or (in_context and cfg.context_weights == "initial")
                  or (cfg.objective == "reward" and cfg.gopd_lambda != 1.0))
        if not needed or is_peft_model(model):
            return None
        return copy.deepcopy(model).eval().requires_grad_(False)

    def _average(self, model, strategy: str):
        """The moving-average teacher (``context_weights: ema``), starting from the starting weights, or None."""
        if not self.ema:
            return None
        if strategy == "fsdp":
            raise ConfigError("distill.context_weights=ema is not available under FSDP (the average is kept "
                              "unsharded)", where="distill.context_weights",
                              fix="launch without --use_fsdp, or use context_weights=live or initial")
        return copy.deepcopy(unwrap(model)).eval().requires_grad_(False)

    @property
    def ema(self) -> bool:
        """Whether the context teacher is the moving average of the student (``context_weights: ema``)."""
        return self.cfg.context_weights == "ema"  # the config allows it for the context teachers only

    @torch.no_grad()
    def update_average(self, model) -> None:
        """After a training step: θ_T ← (1 − α)·θ_T + α·θ with α = ``teacher_update_rate`` (``ema`` only)."""
        if not self.ema:
            return
        rate = self.cfg.teacher_update_rate
        for average, current in zip(self.average.parameters(), unwrap(model).parameters(), strict=True):
            average.lerp_(current.detach().to(average.dtype), rate)

    def save_average(self, directory: Path) -> None:
        """The moving-average teacher's weights into the checkpoint being written (``ema`` only, main process)."""
        if self.ema and self.processes.is_main:
            self.average.save_pretrained(Path(directory) / EMA_TEACHER_DIR, safe_serialization=True)

    def load_average(self, directory: Path) -> None:
        """What :meth:`save_average` wrote, on every process (``ema`` only)."""
        if self.ema:
            load_model_weights(self.average, Path(directory) / EMA_TEACHER_DIR)

    @contextlib.contextmanager
    def starting_weights(self, model):
        """The model with its starting weights: the snapshot, or the LoRA model with its adapters off."""
        if self.snapshot is not None:
            yield self.snapshot
        else:
            with disabled_adapter(model) as base:
                yield base

    def frozen_models(self) -> list[torch.nn.Module]:
        return [] if self.model is None else [self.model]  # the moving average is not frozen: it is never sharded

    # -- feedback contexts ------------------------------------------------------------------------
    def feedback_contexts(self, records: Sequence[dict], groups: Sequence[int], generations: Sequence[Generation],
                          rewards: Sequence[float] | None, routed: Sequence[bool] | None = None) -> FeedbackContexts:
        """SDPO's teacher prompt of each rollout (:mod:`posttrain.trainers.feedback`): ``records[i]`` is rollout
        ``i``'s record, rollouts with the same ``groups`` value are siblings. Only rollouts with ``routed[i]``
        (default: all) are distilled and counted; the others keep the student's prompt."""
        cfg = self.cfg.feedback
        routed = [True] * len(generations) if routed is None else list(routed)
        feedback = rollout_feedback(groups, [g.text for g in generations], rewards,
                                    [r.get(cfg.field) for r in records], cfg)
        distilled = [keep and (bool(item.kinds) or cfg.no_feedback == "prompt")
                     for keep, item in zip(routed, feedback, strict=True)]
        prompts = encode_prompts([teacher_record(r, g.text, item, cfg) if keep else r
                                  for r, g, item, keep in zip(records, generations, feedback, routed, strict=True)],
                                 self.tokenizer)
        counted = [item for item, keep in zip(feedback, routed, strict=True) if keep]
        return FeedbackContexts(prompts, distilled, feedback_counts(counted, [d for d in distilled if d]),
                                [item.kinds if keep else () for item, keep in zip(feedback, routed, strict=True)])

    def check_feedback_records(self, records: Sequence[dict], source: str) -> None:
        """A :class:`DataError` when ``feedback.sources`` has ``field`` and no record has that field."""
        cfg = self.cfg.feedback
        if "field" in cfg.sources and not any(r.get(cfg.field) not in (None, "") for r in records):
            raise DataError(f"{source}: no record has a {cfg.field!r} field for distill.feedback.sources=[field]",
                            where=f"{source}:{cfg.field}",
                            fix="give the records their feedback text in that field, set distill.feedback.field, or "
                                "drop field from distill.feedback.sources")

    # -- hidden states and the divergence ---------------------------------------------------------
    def targets(self, module, rows: RolloutRows) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states at the positions that predict completion tokens ``[N, H]``, and those tokens."""
        device = self.processes.device
        input_ids, mask = rows.input_ids.to(device), rows.target_mask.to(device).bool()
        body = causal_lm_parts(module)[0]
        hidden = body(input_ids=input_ids, position_ids=rows.position_ids.to(device), use_cache=False).last_hidden_state
        return hidden[:, :-1][mask], input_ids[:, 1:][mask]

    def hidden(self, model, rows: RolloutRows) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The teacher's final hidden states on ``rows``' completion tokens and its output weight (None: ``self``,
        whose targets are the student's own logits)."""
        cfg = self.cfg
        if cfg.teacher == "self":
            return None, None
        with torch.no_grad():
            if cfg.teacher == "model":
                return self.targets(self.model, rows)[0], causal_lm_parts(self.model)[1].weight
            if self.average is not None:
                return self.targets(self.average, rows)[0], causal_lm_parts(self.average)[1].weight
            if cfg.teacher != "snapshot" and cfg.context_weights == "live":
                return self.targets(model, rows)[0], causal_lm_parts(model)[1].weight.detach()
            with self.starting_weights(model) as start:
                return self.targets(start, rows)[0], causal_lm_parts(start)[1].weight.detach()

    def divergence(self, model, hidden: torch.Tensor, labels: torch.Tensor, teacher_rows: RolloutRows) -> TokenDistill:
        """Per-token values of the student's hidden states ``hidden`` against the teacher on ``teacher_rows``."""
        cfg = self.cfg
        teacher_hidden, teacher_weight = self.hidden(model, teacher_rows)
        _, head, softcap = causal_lm_parts(model)
        return hidden_divergence(hidden, head.weight, labels, teacher_hidden, teacher_weight, kind=cfg.divergence,
                                 beta=cfg.beta, teacher_temperature=cfg.teacher_temperature,
                                 top_k=cfg.top_k_divergence, clip=cfg.clip, chunk_size=self.chunk_size,
                                 logit_softcap=softcap)

    def token_weights(self, tokens: TokenDistill, distilled: torch.Tensor) -> torch.Tensor:
        """``distilled`` (1 on the tokens distilled, 0 elsewhere) times the entropy weight
        (:func:`posttrain.ops.entropy_weights`) of each token's teacher target."""
        weights = entropy_weights(tokens.teacher_entropy, self.cfg.entropy_weighting, self.cfg.entropy_tau,
                                  self.vocab_size)
        return distilled.to(weights) * weights


def row_token_flags(target_mask: torch.Tensor, rows: Sequence[bool]) -> torch.Tensor:
    """``[N]`` — for each target token of ``target_mask`` (row-major, as ``hidden[:, :-1][mask]``), its row's
    flag."""
    row_of_token = target_mask.bool().nonzero()[:, 0]
    return torch.tensor(rows, dtype=torch.float32, device=target_mask.device)[row_of_token]
