"""Scores of a GRM judgment on its judge task: the parts the GRM rewards (:mod:`posttrain.rewards.grm`) and the
MetaRM cold-start data (:mod:`posttrain.judges.metarm_data`) are made of.

* :func:`solve_score` — S2J's ``s`` (Sun et al. 2025, arXiv 2509.22099; methods.md §5.2): 1 when the ``<solve>``
  section's final answer matches the record's ``reference`` (:func:`posttrain.grading.grade`, exact rationals or
  math-verify); on subjective records (no reference) ``1[RM(q, solve) ≥ RM(q, winning response)]`` under a scalar
  reward model.
* :func:`rule_reward` — RM-NLHF's rule reward (Wang et al. 2026, arXiv 2601.07349; methods.md §4.3)
  ``R = o + w·q`` with ``q = 1[sim(generated critique, record critique) ≥ threshold]``, counted only when
  ``o = 1``; ``sim`` is a :mod:`posttrain.judges.similarity` backend.
* :func:`metarm_calibration` — the MetaRM's fit to one batch's rule rewards (MSE, Pearson correlation), then,
  online, one MSE pass over them (methods.md §4.5).

The models these load (scalar reward models, similarity backends, MetaRMs) are kept once per process, so a
MetaRM's online updates persist between batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from posttrain.data import tokenize_sft
from posttrain.errors import DataError
from posttrain.grading import grade
from posttrain.judges.grm import GRMOutput, outcome, parsed
from posttrain.judges.metarm import MetaRM, metarm_text
from posttrain.judges.similarity import build_similarity, pearson
from posttrain.models import load_tokenizer
from posttrain.models.reward import load_reward_model, score_sequences

_SCORERS: dict[str, Any] = {}
_BACKENDS: dict[tuple, Any] = {}
_METARMS: dict[str, MetaRM] = {}


def solve_score(solution: str, record: dict, reward_model: str | None = None) -> float:
    """``s``: the solution's final answer against the record's reference; without a reference, whether the
    scalar ``reward_model`` scores the solution at least as high as the winning response."""
    reference = record.get("reference")
    if reference is not None and str(reference).strip():
        return 1.0 if grade(solution, reference)[1] else 0.0
    if reward_model is None:
        raise DataError("the s2j reward needs a `reference` answer on objective tasks, or a scalar reward model "
                        "for subjective ones", where=record.get("_where"),
                        fix="give the record a reference, or set args.reward_model to a trained reward model")
    winner = record["response_a"] if record["gold"] == "A" else record["response_b"]
    own, best = _scalar_scores(reward_model, record["question"], [solution, winner])
    return 1.0 if own >= best else 0.0


def _scalar_scores(name: str, question: str, responses: Sequence[str], max_length: int = 4096) -> list[float]:
    """A scalar reward model's scores of ``responses`` to ``question`` (chat-templated as in SFT)."""
    if name not in _SCORERS:
        _SCORERS[name] = (load_reward_model(name, require_head=True).eval(), load_tokenizer(name))
    model, tokenizer = _SCORERS[name]
    records = [{"prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": text}], "_where": "s2j solve"} for text in responses]
    tokenized = tokenize_sft(records, tokenizer, max_length)
    return score_sequences(model, [example.input_ids for example in tokenized])


def similarity_backend(backend: str, options: dict[str, Any] | None = None):
    """A :mod:`posttrain.judges.similarity` backend, built once per (name, options) and process."""
    options = dict(options or {})
    key = (backend, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _BACKENDS:
        _BACKENDS[key] = build_similarity(backend, **options)
    return _BACKENDS[key]


def rule_reward(output: GRMOutput, record: dict, backend: str, threshold: float | None,
                backend_args: dict | None, weight: float) -> float:
    """``o + w·q`` on a well-formed output of a critique-bearing record (module docstring)."""
    judged = outcome(output, record)
    if judged == 0.0:
        return 0.0
    scorer = similarity_backend(backend, backend_args)
    similarity = scorer.scores([output.critique or ""], [record["critique"]])[0]
    limit = scorer.default_threshold if threshold is None else threshold
    return judged + weight * (1.0 if similarity >= limit else 0.0)


def metarm_model(path: str, online_lr: float = 5e-6) -> MetaRM:
    """The MetaRM at ``path``, loaded once per process (its online updates persist between batches)."""
    if path not in _METARMS:
        _METARMS[path] = MetaRM.load(path, online_lr=online_lr)
    return _METARMS[path]


def load_metarm(path: str, policy_tokenizer, online_lr: float = 5e-6) -> None:
    """(Re)load the MetaRM at ``path`` for this process, refusing one built on another base model than the policy's."""
    _METARMS[path] = MetaRM.load(path, policy_tokenizer=policy_tokenizer, online_lr=online_lr)


def metarm_input(output: GRMOutput, record: dict) -> str:
    """The MetaRM's input for a judgment of a judge task: the task's question and responses, and the critique."""
    return metarm_text(record["question"], record["response_a"], record["response_b"], output.critique or "")


def metarm_calibration(completions: Sequence[str], records: Sequence[dict], values: Sequence[float], model: str,
                       template: str = "grm", online: bool = True, lr: float = 5e-6) -> dict[str, float]:
    """The MetaRM's fit to this batch's format-valid rollouts of critique-bearing records and their rule rewards
    ``values`` (measured before it trains on them: ``mse``, ``pearson``), then (``online``) one MSE pass."""
    texts, labels = [], []
    for completion, record, value in zip(completions, records, values, strict=True):
        output = parsed(completion, template)
        if record.get("critique") and output.valid:
            texts.append(metarm_input(output, record))
            labels.append(float(value))
    if not texts:
        return {}
    meta = metarm_model(model, lr)
    scores = meta.score(texts)
    metrics = {"rollouts": float(len(texts)),
               "mse": sum((s - y) ** 2 for s, y in zip(scores, labels, strict=True)) / len(texts)}
    if len(set(labels)) > 1:
        metrics["pearson"] = pearson(scores, labels)
    if online:
        metrics.update({key.removeprefix("metarm/"): value for key, value in meta.update(texts, labels).items()})
    return metrics
