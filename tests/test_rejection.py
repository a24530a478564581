"""Rejection sampling: the model's own correct, distinct samples become SFT records; counts are reported."""

from __future__ import annotations

import pytest

from posttrain.errors import DataError
from posttrain.evals.rejection import RejectionOptions, rejection_sample, run_rejection_sampling
from posttrain.models import tiny_tokenizer
from posttrain.rollout import Generation, SamplingParams

SAMPLES = {  # per prompt: the texts its samples return, in sample order
    0: ["3 + 5 = 8.\n#### 8", "3 + 5 = 9.\n#### 9", "3 + 5 = 8.\n#### 8", "So 8 in all.\n#### 8"],
    1: ["#### 1", "no answer", "#### 2", "#### 3"],
}


class FixedEngine:
    def generate(self, prompt_ids, params):
        assert params.n == 4
        return [Generation(index, sample, list(ids), [1, 2], [0.0, 0.0], SAMPLES[index][sample], "eos")
                for index, ids in enumerate(prompt_ids) for sample in reversed(range(params.n))]


def test_keeps_distinct_correct_samples_in_sampling_order_and_counts():
    records = [{"prompt": [{"role": "user", "content": "Tom has 3 and buys 5. How many?"}], "reference": "8"},
               {"prompt": "Sam has 9 and gives 2 away. How many?", "reference": "#### 7"}]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=4, seed=0)
    sft, summary = rejection_sample(FixedEngine(), records, tiny_tokenizer(), params, keep=2)
    assert [r["completion"][0]["content"] for r in sft] == [SAMPLES[0][0], SAMPLES[0][3]]  # the repeat is dropped
    assert all(r["prompt"] == records[0]["prompt"] and r["prompt_index"] == 0 for r in sft)
    assert summary == {"prompts": 2, "samples_per_prompt": 4, "samples": 8, "correct_rate": 3 / 8,
                       "prompts_with_a_correct_sample": 1, "records": 2}
    one, _ = rejection_sample(FixedEngine(), records, tiny_tokenizer(), params, keep=1)
    assert [r["completion"][0]["content"] for r in one] == [SAMPLES[0][0]]
    with pytest.raises(DataError, match="keeps nothing"):
        rejection_sample(FixedEngine(), records, tiny_tokenizer(), params, keep=0)


def test_a_model_that_solves_nothing_is_an_error_not_an_empty_file(tmp_path):
    options = RejectionOptions(model="tiny-random", data="task:arithmetic", n=2, k=2, max_new_tokens=4,
                               out_dir=tmp_path)
    with pytest.raises(DataError, match="none of the 4 samples"):
        run_rejection_sampling(options)
    assert not (tmp_path / "sft.jsonl").exists()
