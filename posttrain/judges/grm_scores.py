"""Scores of a GRM judgment on its judge task: the parts the GRM rewards (:mod:`posttrain.rewards.grm`) and the
MetaRM cold-start data (:mod:`posttrain.judges.metarm_data`) are made of.

* :func:`solve_score` — S2J's ``s`` (Sun et al. 2025, arXiv 2509.22099; methods.md §5.2): 1 when the ``<solve>``
  section's final answer matches the record's ``reference`` (:func:`posttrain.grading.grade`, exact rationals or
  math-verify); on subjective records (no reference) ``1[RM(q, solve) ≥ RM(q, winning response)]`` under a scalar
  reward model.
* :func:`rule_rewards` — RM-NLHF's rule reward (Wang et al. 2026, arXiv 2601.07349; methods.md §4.3)
  ``R = o + w·q`` with ``q = 1[sim(generated critique, record critique) ≥ threshold]``, counted only when
  ``o = 1``; ``sim`` is a :mod:`posttrain.judges.similarity` backend, called once for a whole batch.
* :func:`metarm_calibration` — the MetaRM's fit to one batch's rule rewards (MSE, Pearson correlation), then,
  online, one MSE pass over them (methods.md §4.5).

The models these use (a :class:`ScalarRewardModel`, a similarity backend, a :class:`~posttrain.judges.metarm.MetaRM`)
are objects their caller owns (a run's reward): nothing is kept per process.
"""

from __future__ import annotations

from collections.abc import Sequence

from posttrain.data import tokenize_sft
from posttrain.errors import DataError
from posttrain.grading import grade
from posttrain.judges.grm import GRMOutput, outcome, parsed
from posttrain.judges.metarm import MetaRM, metarm_text
from posttrain.judges.similarity import SimilarityBackend, pearson, quantize
from posttrain.models import load_tokenizer
from posttrain.models.reward import load_reward_model, score_sequences


class ScalarRewardModel:
    """A saved scalar reward model by name, loaded on first use: its scores of responses to a question."""

    def __init__(self, name: str, max_length: int = 4096):
        self.name, self.max_length = name, max_length
        self._loaded = None

    def scores(self, question: str, responses: Sequence[str]) -> list[float]:
        """The model's scores of ``responses`` to ``question`` (chat-templated as in SFT)."""
        if self._loaded is None:
            self._loaded = (load_reward_model(self.name, require_head=True).eval(), load_tokenizer(self.name))
        model, tokenizer = self._loaded
        records = [{"prompt": [{"role": "user", "content": question}],
                    "completion": [{"role": "assistant", "content": text}], "_where": "s2j solve"}
                   for text in responses]
        tokenized = tokenize_sft(records, tokenizer, self.max_length)
        return score_sequences(model, [example.input_ids for example in tokenized])


def solve_score(solution: str, record: dict, reward_model: ScalarRewardModel | None = None) -> float:
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
    own, best = reward_model.scores(record["question"], [solution, winner])
    return 1.0 if own >= best else 0.0


def rule_rewards(outputs: Sequence[GRMOutput], records: Sequence[dict], similarity: SimilarityBackend,
                 threshold: float | None, weight: float) -> list[float]:
    """``o + w·q`` of well-formed outputs of critique-bearing records (module docstring); the similarity of all
    right verdicts' critiques in one backend call."""
    judged = [outcome(output, record) for output, record in zip(outputs, records, strict=True)]
    right = [index for index, value in enumerate(judged) if value == 1.0]
    limit = similarity.default_threshold if threshold is None else threshold
    if right:
        scores = similarity.scores([outputs[i].arguments or "" for i in right], [records[i]["critique"] for i in right])
        for index, score in zip(right, scores, strict=True):
            judged[index] += weight * quantize(score, limit)
    return judged


def metarm_input(output: GRMOutput, record: dict) -> str:
    """The MetaRM's input for a judgment of a judge task: the task's question and responses, and the critique."""
    return metarm_text(record["question"], record["response_a"], record["response_b"], output.critique or "")


def metarm_calibration(completions: Sequence[str], records: Sequence[dict], values: Sequence[float], metarm: MetaRM,
                       template: str = "grm", online: bool = True) -> dict[str, float]:
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
    scores = metarm.score(texts)
    metrics = {"rollouts": float(len(texts)),
               "mse": sum((s - y) ** 2 for s, y in zip(scores, labels, strict=True)) / len(texts)}
    if len(set(labels)) > 1:
        metrics["pearson"] = pearson(scores, labels)
    if online:
        metrics.update({key.removeprefix("metarm/"): value for key, value in metarm.update(texts, labels).items()})
    return metrics
