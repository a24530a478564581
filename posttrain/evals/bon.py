"""Best-of-N: accuracy as a function of N for several ways of picking one of N sampled solutions.

Selectors take one prompt's candidates (final answer, verifier verdict, self-certainty ``SC`` and LaSeR
score ``r_s``) and return the index of the chosen one:

``random``
    a uniformly random candidate (the expected accuracy of a single sample).
``majority``
    self-consistency (Wang et al., 2023): the most frequent extracted answer.
``self_certainty``
    Borda voting over self-certainty (Kang, Zhao & Song, NeurIPS 2025, ``voting_from_list.py``): candidates
    ranked by ``SC`` (rank 1 = most certain) get ``(N − r + 1)^p`` votes (``p = 0.5``), pooled per answer.
``laser``
    the candidate with the highest ``r_s`` (LaSeR, arXiv 2510.14943, best-of-N), whatever its answer.
``laser_weighted_majority``
    LaSeR's self-rewarding-weighted majority voting: each candidate votes for its answer with weight
    ``clip(r_s, 0, 1)``, the same transform LaSeR applies to ``r_s`` before using it as a reward (the paper
    gives no code for this vote; raw ``r_s`` could be negative and would then count against an answer).

Voting rules shared by the voting selectors: candidates without an extracted answer cast no vote; answers
are compared as extracted (normalized) strings; a tie in total votes goes to the answer with more
candidates, then to the answer seen first in candidate order; with no answer at all the first candidate is
chosen. The chosen answer is represented by its first candidate.
"""

from __future__ import annotations

import json
import random
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import field_validator

from posttrain.data import encode_prompts, prompt_text
from posttrain.errors import ConfigError, DataError
from posttrain.evals.run import prompt_records
from posttrain.grading import grade
from posttrain.judges.formats import get_template
from posttrain.judges.judge_model import JudgeModel, unit_score
from posttrain.models import load_model, load_tokenizer
from posttrain.models.self_scores import completion_scores, reserved_token
from posttrain.ops import laser_score
from posttrain.rollout import stop_token_ids
from posttrain.rollout.engines import tool_engine
from posttrain.rollout.options import SamplingOptions, comma_list, list_option

BORDA_POWER = 0.5
LASER_SELECTORS = ("laser", "laser_weighted_majority")


@dataclass(frozen=True)
class Candidate:
    """One sampled solution: its extracted answer (None when none was found), the verifier's verdict,
    its self-certainty, its LaSeR score and a judge's pointwise score in [0, 1] (−1 for a format failure)."""

    answer: str | None
    correct: bool
    self_certainty: float = 0.0
    laser_score: float = 0.0
    judge_score: float = 0.0


Selector = Callable[[Sequence[Candidate], random.Random], int]


def _vote(candidates: Sequence[Candidate], weights: Sequence[float]) -> int:
    """Index of the first candidate of the answer with the largest (total weight, count, earliness)."""
    tally: dict[str, list] = {}
    for index, (candidate, weight) in enumerate(zip(candidates, weights, strict=True)):
        if candidate.answer is None:
            continue
        entry = tally.setdefault(candidate.answer, [0.0, 0, index])
        entry[0] += weight
        entry[1] += 1
    if not tally:
        return 0
    return max(tally.values(), key=lambda entry: (entry[0], entry[1], -entry[2]))[2]


def select_random(candidates: Sequence[Candidate], rng: random.Random) -> int:
    """A uniformly random candidate."""
    return rng.randrange(len(candidates))


def select_majority(candidates: Sequence[Candidate], rng: random.Random) -> int:
    """The most frequent answer (module docstring for ties)."""
    return _vote(candidates, [1.0] * len(candidates))


def select_self_certainty(
    candidates: Sequence[Candidate], rng: random.Random, power: float = BORDA_POWER
) -> int:
    """Borda voting on self-certainty: the r-th most certain of N candidates casts ``(N − r + 1)^power``
    votes for its answer (equal certainties keep candidate order)."""
    count = len(candidates)
    order = sorted(range(count), key=lambda i: -candidates[i].self_certainty)
    weights = [0.0] * count
    for rank, index in enumerate(order, start=1):
        weights[index] = (count - rank + 1) ** power
    return _vote(candidates, weights)


def select_laser(candidates: Sequence[Candidate], rng: random.Random) -> int:
    """The candidate with the highest LaSeR score (the first one on ties)."""
    return max(range(len(candidates)), key=lambda i: (candidates[i].laser_score, -i))


def select_laser_weighted_majority(candidates: Sequence[Candidate], rng: random.Random) -> int:
    """Majority voting where each candidate's vote weighs ``clip(r_s, 0, 1)``."""
    return _vote(candidates, [min(max(c.laser_score, 0.0), 1.0) for c in candidates])


def select_judge(candidates: Sequence[Candidate], rng: random.Random) -> int:
    """The candidate a generative judge scored highest (pointwise, reference-free; the first one on ties)."""
    return max(range(len(candidates)), key=lambda i: (candidates[i].judge_score, -i))


SELECTORS: dict[str, Selector] = {
    "random": select_random,
    "majority": select_majority,
    "self_certainty": select_self_certainty,
    "laser": select_laser,
    "laser_weighted_majority": select_laser_weighted_majority,
    "judge": select_judge,
}


def _check_request(ns: Sequence[int], selectors: Sequence[str], draws: int) -> None:
    unknown = [name for name in selectors if name not in SELECTORS]
    if unknown or not selectors:
        raise ConfigError(
            f"unknown best-of-N selector(s): {', '.join(unknown) or '(none given)'}",
            where="select",
            fix=f"choose among: {', '.join(SELECTORS)}",
        )
    if not ns or min(ns) < 1 or draws < 1:
        raise ConfigError(
            f"N values {list(ns)} with {draws} draws", where="n", fix="give N values >= 1 and draws >= 1"
        )


def best_of_n_curve(
    pool: Sequence[Sequence[Candidate]],
    ns: Sequence[int],
    selectors: Sequence[str],
    draws: int = 20,
    seed: int = 0,
) -> dict[str, dict[int, float]]:
    """Expected best-of-N accuracy per selector and N from a pool of ``M ≥ max(ns)`` candidates per prompt.

    Each draw shuffles every prompt's pool and cuts it into ``⌊M/N⌋`` disjoint subsets of N; each subset is
    one best-of-N trial. The accuracy at N is the mean over prompts of the share of trials whose chosen
    candidate is correct, over ``draws`` draws. Every sample is used once per draw, so N = 1 gives exactly
    the pool's mean accuracy, and all selectors see the same subsets.
    """
    _check_request(ns, selectors, draws)
    if not pool:
        raise DataError("no prompts to evaluate", fix="pass at least one prompt")
    smallest = min(len(candidates) for candidates in pool)
    if smallest < max(ns):
        raise DataError(
            f"a prompt has only {smallest} samples, fewer than N = {max(ns)}",
            fix="sample at least max(N) solutions for every prompt",
        )
    rng = random.Random(seed)
    totals = {name: dict.fromkeys(ns, 0.0) for name in selectors}
    for _ in range(draws):
        for candidates in pool:
            order = rng.sample(range(len(candidates)), len(candidates))
            for n in ns:
                trials = len(candidates) // n
                for trial in range(trials):
                    subset = [candidates[i] for i in order[trial * n : (trial + 1) * n]]
                    for name in selectors:
                        chosen = subset[SELECTORS[name](subset, rng)]
                        totals[name][n] += chosen.correct / trials
    return {
        name: {n: total / (draws * len(pool)) for n, total in per_n.items()} for name, per_n in totals.items()
    }


class BonOptions(SamplingOptions):
    """``posttrain eval bon``: ``ns`` and ``selectors`` also as comma-separated strings; ``prompts`` (None: all),
    ``draws`` reshuffles, LaSeR's ``c_ref``, ``beta_v`` and reserved ``token``, the ``judge`` model and its
    pointwise ``judge_template`` for the judge selector."""

    model: str = "smollm2-135m"
    data: str = "task:arithmetic"
    ns: list[int] = [1, 2, 4, 8, 16]
    selectors: list[str] = ["random", "majority", "self_certainty", "laser", "laser_weighted_majority"]
    prompts: int | None = None
    draws: int = 20
    c_ref: float = -23.0
    beta_v: float = 0.1
    token: str | None = None
    judge: str | None = None
    judge_template: str = "pointwise"
    out_dir: Path | None = None

    _lists = list_option("selectors")

    @field_validator("ns", mode="before")
    @classmethod
    def _integers(cls, value):
        try:
            return [int(item) for item in comma_list(value)] if isinstance(value, str) else value
        except ValueError:
            raise ValueError(f"{value!r} is not a list of integers") from None

    @field_validator("ns")
    @classmethod
    def _sorted(cls, ns: list[int]) -> list[int]:
        return sorted(set(ns))


def run_bon_eval(options: BonOptions) -> dict:
    """``posttrain eval bon``: sample ``max(ns)`` solutions per prompt once, score them (one forward pass
    per batch gives both self-certainty and ``r_s``), and compute :func:`best_of_n_curve`.

    With ``out_dir``: ``bon.json`` (this result), ``bon.png`` (accuracy against N per selector) and
    ``samples.jsonl`` (every solution with its answer, verdict and scores).
    """
    _check_request(options.ns, options.selectors, options.draws)
    if "judge" in options.selectors and options.judge is None:
        raise ConfigError("the judge selector needs a judge model", where="--judge",
                          fix="pass --judge MODEL (the policy itself, or another model), or drop the judge selector")
    tokenizer = load_tokenizer(options.model)
    lm = load_model(options.model)
    records = prompt_records(options.data, options.prompts, options.seed)
    samples = max(options.ns)
    params = options.sampling(samples)
    prompt_ids = encode_prompts(records, tokenizer)
    engine = tool_engine(options.model, options.engine, batch_size=options.batch_size, tokenizer=tokenizer, lm=lm)
    generations = engine.generate(prompt_ids, params)
    certainty = laser = [0.0] * len(generations)
    needs_laser = any(name in LASER_SELECTORS for name in options.selectors)
    needs_certainty = "self_certainty" in options.selectors
    reserved_id = reserved_token(tokenizer, options.token) if needs_laser else None
    if needs_laser or needs_certainty:
        scores = completion_scores(
            lm,
            [g.prompt_ids for g in generations],
            [g.token_ids for g in generations],
            stop_token_ids(lm, tokenizer)[0],
            reserved_id,
            with_self_certainty=needs_certainty,
            batch_size=options.batch_size,
        )
        if needs_certainty:
            certainty = scores.self_certainty.tolist()
        if needs_laser:
            laser = laser_score(scores.reserved_logprobs, options.c_ref, options.beta_v).tolist()
    judged = [0.0] * len(generations)
    if "judge" in options.selectors:
        questions = [prompt_text(records[g.prompt_index]) for g in generations]
        judged = pointwise_judge_scores(options.judge, questions, [g.text for g in generations], options.judge_template)
    rows, pool = [], [[] for _ in records]
    for generation, sc, r_s, js in zip(generations, certainty, laser, judged, strict=True):
        answer, correct = grade(generation.text, records[generation.prompt_index]["reference"])
        pool[generation.prompt_index].append(Candidate(answer, correct, sc, r_s, js))
        rows.append(
            {
                "prompt_index": generation.prompt_index,
                "sample_index": generation.sample_index,
                "completion": generation.text,
                "extracted": answer,
                "correct": correct,
                "finish_reason": generation.finish_reason,
                "self_certainty": sc,
                "laser_score": r_s,
                "judge_score": js,
            }
        )
    curve = best_of_n_curve(pool, options.ns, options.selectors, draws=options.draws, seed=options.seed)
    result = {
        "model": options.model,
        "data": options.data,
        "num_prompts": len(records),
        "samples_per_prompt": samples,
        "draws": options.draws,
        "temperature": options.temperature,
        "mean_accuracy": sum(row["correct"] for row in rows) / len(rows),
        "reserved_token": tokenizer.convert_ids_to_tokens(reserved_id) if needs_laser else None,
        "c_ref": options.c_ref,
        "beta_v": options.beta_v,
        "judge": options.judge,
        "ns": list(options.ns),
        "accuracy": {name: {str(n): value for n, value in per_n.items()} for name, per_n in curve.items()},
    }
    if options.out_dir is not None:
        _write_outputs(Path(options.out_dir), result, rows)
    return result


def pointwise_judge_scores(judge: str, questions: Sequence[str], answers: Sequence[str],
                           template: str = "pointwise", max_new_tokens: int = 256) -> list[float]:
    """A judge model's greedy pointwise score of each answer mapped to [0, 1]; −1 where it gave no score."""
    chosen = get_template(template)
    if chosen.kind != "pointwise":
        raise ConfigError(f"the judge selector needs a pointwise template, got {chosen.name!r} ({chosen.kind})",
                          where="--judge-template", fix="use 'pointwise' or your own pointwise template")
    messages = [chosen.render(q, a) for q, a in zip(questions, answers, strict=True)]
    texts = JudgeModel(judge).texts(messages, max_new_tokens)
    scores = [chosen.parse(text) for text in texts]
    return [-1.0 if score is None else unit_score(chosen, score) for score in scores]


def _write_outputs(out_dir: Path, result: dict, rows: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bon.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "samples.jsonl").open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    plot_bon_curves(figure.add_subplot(), result, f"best-of-N: {result['model']} on {result['data']}")
    figure.tight_layout()
    figure.savefig(out_dir / "bon.png")


def plot_bon_curves(axes, result: dict, title: str) -> None:
    """Accuracy against N (log scale) for every selector of a ``bon.json`` result, on ``axes``."""
    for name, per_n in result["accuracy"].items():
        axes.plot([int(n) for n in per_n], list(per_n.values()), marker="o", label=name)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("N (samples per prompt)")
    axes.set_ylabel("accuracy")
    axes.set_title(textwrap.fill(title, 60), fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
