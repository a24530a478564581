"""MetaRM: a scalar regression model that predicts the rule reward of a generated critique (RM-NLHF, Wang et al.
2026, arXiv 2601.07349; methods.md §4.3, §4.5).

Where a judge task has no reference critique, the process bonus cannot be measured; the MetaRM estimates the rule
reward ``R = o + 0.5·q ∈ {0, 1, 1.5}`` from the conversation, both responses and the generated critique, and the
GRM's reward becomes ``o·(1 + w·max(0, s − 1))`` (:func:`metarm_bonus`). It is cold-started on the base GRM's
critiques of critique-bearing tasks (:mod:`posttrain.judges.metarm_data`, then ``posttrain train`` with
``reward_model.objective: regression``) and, online, takes one MSE pass per RL step over that step's rollouts of
critique-bearing tasks (:meth:`MetaRM.update`), so it follows the drifting policy.

One input format for cold start and online updates (:func:`metarm_text`)::

    <conv_his>[Question]
    {question}

    [Response A]
    {A}

    [Response B]
    {B}</conv_his>

    <critics>{critique}</critics>
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from posttrain.data import padded_batch
from posttrain.data.regression import encode_texts
from posttrain.errors import DataError
from posttrain.models import load_tokenizer
from posttrain.models.reward import load_reward_model, sequence_scores
from posttrain.models.state_files import load_state_file
from posttrain.models.vocabulary import check_same_tokenizer
from posttrain.ops import regression_loss


def metarm_text(question: str, response_a: str, response_b: str, critique: str) -> str:
    """The MetaRM input (module docstring)."""
    return (f"<conv_his>[Question]\n{question}\n\n[Response A]\n{response_a}\n\n[Response B]\n{response_b}"
            f"</conv_his>\n\n<critics>{critique}</critics>")


def metarm_bonus(score: float) -> float:
    """``max(0, s − 1)``: the predicted process bonus above a right outcome's reward of 1 (methods.md §4.3)."""
    return max(0.0, score - 1.0)


def _check_labels(texts: Sequence[str], labels: Sequence[float]) -> None:
    """One finite label per text, or a :class:`~posttrain.errors.DataError` (a silent broadcast would train on
    the wrong targets)."""
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels", where="MetaRM.update",
                        fix="give one rule reward per MetaRM input")
    bad = next((i for i, y in enumerate(labels) if not math.isfinite(float(y))), None)
    if bad is not None:
        raise DataError(f"label {bad} is {labels[bad]!r}, not a finite number", where="MetaRM.update",
                        fix="give each input its rule reward o + 0.5·q (0, 1 or 1.5)")


class MetaRM:
    """A saved one-label reward model used as MetaRM: scoring, online MSE updates, checkpointing."""

    def __init__(self, model, tokenizer, *, online_lr: float = 5e-6, batch_size: int = 8, max_length: int = 1024,
                 max_grad_norm: float = 1.0):
        self.model, self.tokenizer = model, tokenizer
        self.online_lr, self.batch_size, self.max_length, self.max_grad_norm = (online_lr, batch_size, max_length,
                                                                                max_grad_norm)
        self.optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def load(cls, path: str, policy_tokenizer=None, device: str = "auto", **options) -> MetaRM:
        """A saved scalar reward model (a fresh head is refused); with ``policy_tokenizer``, one built on another
        base model (another vocabulary) is refused too."""
        tokenizer = load_tokenizer(path)
        if policy_tokenizer is not None:
            check_same_tokenizer(policy_tokenizer, tokenizer, f"the MetaRM at {path} and the policy",
                                 fix="train the MetaRM from the policy's base model (a MetaRM checkpoint from "
                                 "another base model reads other tokens)")
        model = load_reward_model(path, dtype="float32", device=device, pad_token_id=tokenizer.pad_token_id,
                                  require_head=True)
        return cls(model, tokenizer, **options)

    def _batches(self, texts: Sequence[str]):
        rows, _ = encode_texts(texts, self.tokenizer, self.max_length)
        device = next(self.model.parameters()).device
        for start in range(0, len(rows), self.batch_size):
            yield start, padded_batch(rows[start : start + self.batch_size], self.tokenizer.pad_token_id, device)

    def score(self, texts: Sequence[str]) -> list[float]:
        """The MetaRM's predictions, without gradients."""
        self.model.eval()
        scores: list[float] = []
        with torch.no_grad():
            for _, inputs in self._batches(texts):
                scores += sequence_scores(self.model, inputs).float().tolist()
        return scores

    def update(self, texts: Sequence[str], labels: Sequence[float]) -> dict[str, float]:
        """One epoch of MSE over ``(texts, labels)`` in mini-batches of ``batch_size`` (AdamW at ``online_lr``,
        gradient norm clipped); returns the epoch's mean squared error (each mini-batch's error measured just before
        its own step: the MSE before the update when one mini-batch holds all) and the number of examples."""
        _check_labels(texts, labels)
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                               lr=self.online_lr)
        self.model.train()
        target = torch.tensor(list(labels), dtype=torch.float32)
        squared = 0.0
        for start, inputs in self._batches(texts):
            scores = sequence_scores(self.model, inputs)
            batch_labels = target[start : start + len(scores)].to(scores.device)
            loss = regression_loss(scores, batch_labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            squared += float(loss.detach()) * len(scores)
        self.model.eval()
        return {"metarm/update_mse": squared / max(len(texts), 1), "metarm/updated_examples": float(len(texts))}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        if state["optimizer"] is not None:
            self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad],
                                               lr=self.online_lr)
            self.optimizer.load_state_dict(state["optimizer"])

    def save(self, directory: Path) -> None:
        """Weights and optimizer into ``directory/metarm.pt`` (a checkpoint of the online updates)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), Path(directory) / "metarm.pt")

    def restore(self, directory: Path) -> None:
        """What :meth:`save` wrote, when it exists."""
        path = Path(directory) / "metarm.pt"
        if path.is_file():
            self.load_state_dict(load_state_file(path, fix="restore the run from an earlier checkpoint"))
