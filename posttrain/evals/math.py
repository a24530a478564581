"""Math evaluation: sample solutions, extract final answers, score them against references.

Metrics over ``P`` prompts with ``n`` samples each, of which ``c_i`` are correct for prompt ``i``:

- ``accuracy``: mean correctness over all ``P * n`` samples (= the mean of the unbiased pass@1);
- ``pass@k``: the mean over prompts of the unbiased estimator ``1 - C(n - c_i, k) / C(n, k)``
  (Chen et al., 2021, "Evaluating Large Language Models Trained on Code", eq. 1), for ``k`` = 1, 2,
  4, ... up to the requested ``k``, and ``k`` itself;
- ``parse_failure_rate``: the fraction of samples with no extractable final answer;
- ``mean_length``: mean completion length in tokens; ``truncated_fraction``: the fraction of samples
  that hit ``max_new_tokens`` before the end-of-sequence token;
- ``unparsed_references``: how many prompts' reference answers are not a number or a math expression
  (:func:`~posttrain.grading.is_math_answer`, e.g. ``Paris``): their samples can hardly be scored
  right. When no reference is one, the evaluation stops with a DataError before sampling.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import DataError, location
from posttrain.grading import answers_match, extract_answer, is_math_answer, reference_answer
from posttrain.rollout import Generation, RolloutEngine, SamplingParams


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n`` samples, of
    which ``c`` are correct, is correct: ``1 - C(n-c, k) / C(n, k)``.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which avoids the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def pass_k_values(k: int) -> list[int]:
    """The ``k`` values reported: powers of two up to ``k``, and ``k`` itself."""
    values = {k}
    power = 1
    while power <= k:
        values.add(power)
        power *= 2
    return sorted(values)


@dataclass
class MathEvalResult:
    """The metrics of one math evaluation (see the module docstring)."""

    accuracy: float
    pass_at_k: dict[int, float]
    parse_failure_rate: float
    mean_length: float
    truncated_fraction: float
    num_prompts: int
    num_samples: int
    unparsed_references: int = 0

    def to_dict(self) -> dict[str, float | int]:
        """Flat metrics, ``pass@k`` spelled out per k, ready to log."""
        metrics: dict[str, float | int] = {"accuracy": self.accuracy}
        metrics.update({f"pass@{k}": value for k, value in sorted(self.pass_at_k.items())})
        metrics.update(
            parse_failure_rate=self.parse_failure_rate,
            mean_length=self.mean_length,
            truncated_fraction=self.truncated_fraction,
            num_prompts=self.num_prompts,
            num_samples=self.num_samples,
            unparsed_references=self.unparsed_references,
        )
        return metrics


def _check_inputs(
    prompt_ids: list[list[int]], references: list, prompts_text: list[str] | None, k: int
) -> None:
    if not prompt_ids:
        raise DataError("no prompts to evaluate", fix="pass at least one prompt")
    if len(references) != len(prompt_ids):
        raise DataError(
            f"{len(prompt_ids)} prompts but {len(references)} reference answers",
            fix="give exactly one reference answer per prompt",
        )
    if prompts_text is not None and len(prompts_text) != len(prompt_ids):
        raise DataError(
            f"{len(prompt_ids)} prompts but {len(prompts_text)} prompt texts",
            fix="give one prompt text per prompt, or none",
        )
    for index, reference in enumerate(references):
        if reference is None or (isinstance(reference, str) and not reference.strip()):
            raise DataError(
                "the reference answer is missing",
                where=location(field=f"references[{index}]"),
                fix="give every evaluation record a reference answer",
            )
    if k < 1:
        raise DataError(f"k = {k} is invalid", where="k", fix="use k >= 1")


def evaluate_math(
    engine: RolloutEngine,
    prompt_ids: list[list[int]],
    references: list[str | int | float],
    *,
    k: int = 1,
    params: SamplingParams,
    prompts_text: list[str] | None = None,
    out_dir: Path | str | None = None,
) -> MathEvalResult:
    """Sample ``max(k, params.n)`` solutions per prompt and score their final answers.

    ``references`` are final answers (or full solutions ending in ``#### answer``); a DataError when none
    of them is a number or math expression. With ``out_dir``, every sample is written to
    ``out_dir/samples.jsonl``.
    """
    _check_inputs(prompt_ids, references, prompts_text, k)
    gold = [reference_answer(reference) for reference in references]
    unparsed = _count_unparsed(gold)
    samples_per_prompt = max(k, params.n)
    if samples_per_prompt != params.n:
        params = dataclasses.replace(params, n=samples_per_prompt)
    generations = engine.generate(prompt_ids, params)
    if len(generations) != len(prompt_ids) * samples_per_prompt:
        raise RuntimeError(
            f"the rollout engine returned {len(generations)} generations, "
            f"expected {len(prompt_ids)} prompts x {samples_per_prompt} samples"
        )
    rows = [score_generation(generation, gold[generation.prompt_index]) for generation in generations]

    correct_per_prompt = [0] * len(prompt_ids)
    for generation, row in zip(generations, rows, strict=True):
        correct_per_prompt[generation.prompt_index] += int(row["correct"])
    total = len(rows)
    result = MathEvalResult(
        accuracy=sum(correct_per_prompt) / total,
        pass_at_k={
            j: sum(pass_at_k(samples_per_prompt, c, j) for c in correct_per_prompt) / len(prompt_ids)
            for j in pass_k_values(k)
        },
        parse_failure_rate=sum(row["extracted"] is None for row in rows) / total,
        mean_length=sum(row["length"] for row in rows) / total,
        truncated_fraction=sum(row["finish_reason"] == "length" for row in rows) / total,
        num_prompts=len(prompt_ids),
        num_samples=total,
        unparsed_references=unparsed,
    )
    if out_dir is not None:
        _write_samples(Path(out_dir) / "samples.jsonl", generations, rows, prompts_text)
    return result


def _count_unparsed(gold: list[str]) -> int:
    """How many reference answers are not a number or math expression; a DataError when none is."""
    unparsed = [answer for answer in gold if not is_math_answer(answer)]
    if len(unparsed) == len(gold):
        raise DataError(
            f"none of the {len(gold)} reference answers is a number or a math expression (first: {gold[0]!r}), "
            "so the math evaluation cannot compare answers with them",
            where=location(field="references[0]"),
            fix="give each record's `reference` as its final answer (a number or LaTeX expression such as "
            "`\\frac{1}{2}`) or a GSM8K-style `answer` ending in `#### <answer>`; the math evaluation scores "
            "math answers only",
        )
    return len(unparsed)


def score_generation(generation: Generation, reference: str) -> dict:
    """One sample's row: its text, extracted final answer, whether it matches ``reference`` (a final answer, as
    :func:`~posttrain.grading.reference_answer` gives it), finish reason and length in tokens."""
    extracted = extract_answer(generation.text)
    return {
        "completion": generation.text,
        "extracted": extracted,
        "reference": reference,
        "correct": extracted is not None and answers_match(extracted, reference),
        "finish_reason": generation.finish_reason,
        "length": len(generation.token_ids),
    }


def _write_samples(
    path: Path, generations: list[Generation], rows: list[dict], prompts_text: list[str] | None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for generation, row in zip(generations, rows, strict=True):
            record = {
                "prompt_index": generation.prompt_index,
                "sample_index": generation.sample_index,
                "prompt": prompts_text[generation.prompt_index] if prompts_text is not None else None,
                **row,
            }
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
