"""PPO's value models (``ppo.value_model``): the values ``V_t`` of every response token of a rollout batch.

Per-token tensors are ``[B, T-1]``, aligned with the targets ``input_ids[:, 1:]`` like the policy's log-probs:
``V[:, t]`` is the one-label head on the hidden state at input position ``t``, the state in which target ``t`` is
chosen (OpenRLHF's and verl's critics read their value heads at the same positions). The head is the scalar head of
the reward models (:func:`posttrain.models.reward.head_scores`).

* :class:`ValueHead` (``value_head``) — a ``Linear(hidden, 1)`` head added to the policy model as its
  ``value_head`` submodule, on the policy's own last hidden states: it is trained with the policy's loss (the
  method adds ``vf_coef`` × the value loss), by the run's optimizer, and saved with the model's weights (a model
  loaded from such a checkpoint with ``from_pretrained`` reports ``value_head.weight`` as unused).
* :class:`SeparateCritic` (``separate``) — a one-label sequence classifier of its own
  (:func:`posttrain.models.reward.load_reward_model` on ``ppo.critic_model``, default the policy's model: its body
  starts as the policy's, its head new; a saved reward model keeps its head), trained by :meth:`SeparateCritic.fit`
  with its own AdamW (``ppo.critic_lr``, else ``optim``'s settings) and schedule, and checkpointed by the method.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch

from posttrain.config import RunConfig
from posttrain.errors import ConfigError
from posttrain.models import is_peft_model
from posttrain.models.reward import head_scores, load_reward_model, token_scores
from posttrain.models.state_files import load_state_file
from posttrain.ops import causal_lm_parts, value_loss_sum
from posttrain.trainers.checkpoint import RESUME_FIX, load_model_weights
from posttrain.trainers.distributed import Processes
from posttrain.trainers.optimizer import build_optimizer
from posttrain.trainers.precision import autocast
from posttrain.trainers.schedule import build_scheduler

VALUE_HEAD = "value_head"


class ValueHead:
    """A value head on the policy's trunk (the module docstring)."""

    shared = True

    def __init__(self, config: RunConfig, model: torch.nn.Module):
        if is_peft_model(model):
            raise ConfigError("ppo.value_model=value_head trains a head on the policy's trunk, which a LoRA run "
                              "saves only as its adapter", where="ppo.value_model",
                              fix="use ppo.value_model=separate with model.lora, or train without LoRA")
        if hasattr(model, VALUE_HEAD):
            raise ConfigError(f"the model already has a `{VALUE_HEAD}` attribute", where="ppo.value_model",
                              fix="use ppo.value_model=separate")
        weight = next(model.parameters())
        head = torch.nn.Linear(model.config.hidden_size, 1, bias=False, device=weight.device, dtype=weight.dtype)
        torch.nn.init.normal_(head.weight, std=getattr(model.config, "initializer_range", 0.02))
        model.add_module(VALUE_HEAD, head)
        self.precision = config.train.precision

    @staticmethod
    def from_hidden(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``V`` ``[B, T-1]`` from the policy forward's last hidden states ``[B, T, H]`` (with gradient)."""
        return head_scores(getattr(model, VALUE_HEAD), hidden[:, :-1])

    def values(self, model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """``V`` ``[B, T-1]`` of right-padded rows, without gradient (the values the rollouts are scored with)."""
        body = causal_lm_parts(model)[0]
        with torch.no_grad(), autocast(model, self.precision):
            hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            return self.from_hidden(model, hidden).detach()


class SeparateCritic:
    """A critic model with its own optimizer and schedule (the module docstring)."""

    shared = False

    def __init__(self, config: RunConfig, policy: torch.nn.Module, tokenizer, processes: Processes,
                 total_updates: int):
        if processes.world_size > 1:
            raise ConfigError(f"ppo.value_model=separate trains its critic on one process, and this run has "
                              f"{processes.world_size}", where="ppo.value_model",
                              fix="use ppo.value_model=value_head (trained with the policy by the run's engine), or "
                                  "run on one process")
        if config.train.precision == "fp16":
            raise ConfigError("the separate critic has no fp16 loss scale", where="train.precision",
                              fix="use train.precision=bf16 (or auto) with ppo.value_model=separate")
        ppo, optim = config.ppo, config.optim
        dtype = str(next(policy.parameters()).dtype).removeprefix("torch.")
        self.model = load_reward_model(ppo.critic_model or config.model.name, dtype=dtype,
                                       device=str(processes.device), pad_token_id=tokenizer.pad_token_id).train()
        if config.train.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        settings = optim.model_copy(update={"lr": ppo.critic_lr or optim.lr, "update_in_backward": False})
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.parameters, settings, seed=config.seed)
        self.scheduler = build_scheduler(self.optimizer, total_updates, optim.warmup_ratio, optim.schedule)
        self.precision, self.value_clip, self.max_grad_norm = config.train.precision, ppo.value_clip, optim.max_grad_norm

    def _values(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        with autocast(self.model, self.precision):
            return token_scores(self.model, {"input_ids": input_ids, "position_ids": position_ids})[:, :-1]

    def values(self, model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """``V`` ``[B, T-1]`` of right-padded rows, without gradient (``model``, the policy, is not used)."""
        with torch.no_grad():
            return self._values(input_ids, position_ids).detach()

    def fit(self, batches: list, tokens_total: float, updates: int) -> dict[str, float]:
        """``updates`` AdamW updates of the critic over all ``batches`` (each with ``old_values``, ``returns`` and
        ``completion_mask``), each minimizing the clipped value loss ÷ ``tokens_total`` (the step's response tokens):
        additive statistics (``value_loss`` per update, summed over updates). An update whose gradient norm is not
        finite is skipped (``critic_skipped``)."""
        sums: dict[str, float] = defaultdict(float)
        for _ in range(updates):
            for batch in batches:
                values = self._values(batch.input_ids, batch.position_ids)
                result = value_loss_sum(values, batch.old_values, batch.returns, batch.completion_mask, self.value_clip)
                loss = result.loss / tokens_total
                loss.backward()
                sums["value_loss"] += float(loss.detach())
                sums["value_clipped"] += float(result.clipped)
                sums["value_tokens"] += float(batch.completion_mask.sum())
            norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm or math.inf))
            if math.isfinite(norm):
                self.optimizer.step()
            else:
                sums["critic_skipped"] += 1
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            sums["critic_grad_norm"] += norm if math.isfinite(norm) else 0.0
        return dict(sums)

    def save(self, directory: Path) -> None:
        """The critic's weights (HF format), optimizer and schedule into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / "model", safe_serialization=True)
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), directory / "scheduler.pt")

    def load(self, directory: Path) -> None:
        """What :meth:`save` wrote."""
        load_model_weights(self.model, directory / "model")
        self.optimizer.load_state_dict(load_state_file(directory / "optimizer.pt", RESUME_FIX))
        self.scheduler.load_state_dict(load_state_file(directory / "scheduler.pt", RESUME_FIX))
