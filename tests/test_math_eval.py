"""Math evaluation metrics and the pass@k estimator."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import pytest

from posttrain.data import encode_prompts
from posttrain.errors import DataError
from posttrain.evals import evaluate_math, pass_at_k, pass_k_values
from posttrain.models import tiny_model, tiny_tokenizer
from posttrain.rollout import Generation, HFEngine, RolloutEngine, SamplingParams


class ScriptedEngine:
    """Returns fixed completions: ``script[prompt_index][sample_index] = (text, n_tokens, finish_reason)``."""

    def __init__(self, script):
        self.script = script
        self.calls: list[SamplingParams] = []

    def generate(self, prompt_ids, params):
        self.calls.append(params)
        generations = []
        for prompt_index, prompt in enumerate(prompt_ids):
            for sample_index in range(params.n):
                text, length, finish_reason = self.script[prompt_index][sample_index]
                generations.append(
                    Generation(
                        prompt_index=prompt_index,
                        sample_index=sample_index,
                        prompt_ids=prompt,
                        token_ids=list(range(length)),
                        logprobs=[-1.0] * length,
                        text=text,
                        finish_reason=finish_reason,
                    )
                )
        return generations


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(i < c for i in subset) for subset in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # binomials of this size overflow floats; the product form does not
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_pass_k_values():
    assert pass_k_values(1) == [1]
    assert pass_k_values(8) == [1, 2, 4, 8]
    assert pass_k_values(6) == [1, 2, 4, 6]


SCRIPT = [
    # prompt 0, reference 8: correct, correct ('#### 8.0'), wrong, unparseable
    [
        ("4+4 = 8", 5, "eos"),
        ("so\n#### 8.0", 7, "eos"),
        ("it is \\boxed{9}", 9, "eos"),
        ("no idea", 3, "length"),
    ],
    # prompt 1, reference 1/2: boxed fraction right, decimal right, all others wrong
    [("\\boxed{\\frac{1}{2}}", 4, "eos"), ("0.5", 2, "eos"), ("1", 1, "eos"), ("2", 1, "length")],
    # prompt 2, reference 1,000 (a full solution): nothing correct
    [("999", 6, "eos"), ("1001", 6, "eos"), ("?", 2, "length"), ("", 0, "length")],
]
REFERENCES = ["8", "1/2", "Steps.\n#### 1,000"]


def test_metrics_are_exact(tmp_path):
    engine = ScriptedEngine(SCRIPT)
    assert isinstance(engine, RolloutEngine)
    prompts_text = ["p0", "p1", "p2"]
    result = evaluate_math(
        engine,
        [[1, 2], [3], [4, 5, 6]],
        REFERENCES,
        k=4,
        params=SamplingParams(temperature=0.7, max_new_tokens=16, seed=0),
        prompts_text=prompts_text,
        out_dir=tmp_path / "eval",
    )
    assert engine.calls[0].n == 4 and engine.calls[0].temperature == 0.7
    correct = [2, 2, 0]
    assert result.accuracy == pytest.approx(4 / 12)
    for k in (1, 2, 4):
        assert result.pass_at_k[k] == pytest.approx(
            sum(float(brute_force_pass_at_k(4, c, k)) for c in correct) / 3
        )
    assert set(result.pass_at_k) == {1, 2, 4}
    assert result.pass_at_k[1] == pytest.approx(result.accuracy)
    assert result.parse_failure_rate == pytest.approx(3 / 12)  # 'no idea', '?', ''
    assert result.mean_length == pytest.approx((5 + 7 + 9 + 3 + 4 + 2 + 1 + 1 + 6 + 6 + 2 + 0) / 12)
    assert result.truncated_fraction == pytest.approx(4 / 12)
    assert (result.num_prompts, result.num_samples) == (3, 12)

    metrics = result.to_dict()
    assert metrics["accuracy"] == result.accuracy
    assert [key for key in metrics if key.startswith("pass@")] == ["pass@1", "pass@2", "pass@4"]
    assert metrics["num_samples"] == 12

    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    assert rows[1] == {
        "prompt_index": 0,
        "sample_index": 1,
        "prompt": "p0",
        "completion": "so\n#### 8.0",
        "extracted": "8.0",
        "reference": "8",
        "correct": True,
        "finish_reason": "eos",
        "length": 7,
    }
    assert [row["correct"] for row in rows] == [True, True, False, False, True, True] + [False] * 6
    assert rows[8]["reference"] == "1000"
    assert rows[3]["extracted"] is None


def test_greedy_single_sample_accuracy():
    engine = ScriptedEngine(SCRIPT)
    result = evaluate_math(engine, [[1], [2], [3]], REFERENCES, params=SamplingParams(temperature=0))
    assert engine.calls[0].n == 1
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.pass_at_k == {1: pytest.approx(2 / 3)}
    assert result.num_samples == 3


def test_more_samples_than_k_estimate_pass_at_k_from_all_of_them():
    engine = ScriptedEngine(SCRIPT)
    result = evaluate_math(engine, [[1], [2], [3]], REFERENCES, k=2, params=SamplingParams(n=4))
    assert engine.calls[0].n == 4
    assert result.pass_at_k[2] == pytest.approx((2 * pass_at_k(4, 2, 2) + pass_at_k(4, 0, 2)) / 3)


@pytest.mark.parametrize(
    "prompts, references, kwargs, message",
    [
        ([[1], [2]], ["1"], {}, "2 prompts but 1 reference"),
        ([[1]], [None], {}, "reference answer is missing"),
        ([[1]], ["  "], {}, "reference answer is missing"),
        ([[1]], ["1"], {"prompts_text": ["a", "b"]}, "prompt texts"),
        ([], [], {}, "no prompts"),
        ([[1]], ["1"], {"k": 0}, "k = 0"),
    ],
)
def test_bad_inputs_are_data_errors(prompts, references, kwargs, message):
    with pytest.raises(DataError, match=message):
        evaluate_math(ScriptedEngine(SCRIPT), prompts, references, params=SamplingParams(), **kwargs)


def test_with_the_hf_engine_metrics_agree_with_the_written_samples(tmp_path):
    tokenizer = tiny_tokenizer()
    questions = ["1+1?", "2+5?", "10-3?"]
    prompt_ids = encode_prompts([{"prompt": [{"role": "user", "content": q}]} for q in questions], tokenizer)
    engine = HFEngine(tiny_model(), tokenizer, batch_size=4)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=0)
    result = evaluate_math(
        engine, prompt_ids, ["2", "7", "7"], k=2, params=params, prompts_text=questions, out_dir=tmp_path
    )
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert result.num_samples == len(rows) == 6
    assert result.accuracy == pytest.approx(sum(row["correct"] for row in rows) / 6)
    assert result.mean_length == pytest.approx(sum(row["length"] for row in rows) / 6)
    assert result.parse_failure_rate == pytest.approx(sum(row["extracted"] is None for row in rows) / 6)
    assert all(0 < row["length"] <= 12 for row in rows)
    assert [row["prompt"] for row in rows] == [q for q in questions for _ in range(2)]
