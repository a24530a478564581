"""`posttrain bench dpo` runs both sides in their own processes and reports per-side figures and ratios.

Only the plumbing is tested here; benchmark figures come from `posttrain bench dpo --vs trl`.
"""

import pytest

from posttrain.bench.dpo import benchmark_pairs, run_dpo_benchmark
from posttrain.errors import PosttrainError
from posttrain.models import save_model, tiny_model, tiny_tokenizer


def test_dpo_benchmark_reports_both_sides_and_ratios(tmp_path):
    model_dir = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "tiny")
    result = run_dpo_benchmark(model=str(model_dir), steps=1, batch_size=2, max_length=512, repeats=1,
                               warmup_steps=1)
    for side in ("posttrain", "trl"):
        figures = result[side]
        assert figures["tokens_per_s"] > 0 and figures["seconds_per_step"] > 0 and figures["peak_rss_mb"] > 0
        assert figures["runs"][0]["steps"] == 2
        # one step at the starting weights: the sigmoid DPO loss is log 2 before any update
        assert figures["runs"][0]["final_loss"] == pytest.approx(0.6931, abs=0.05)
    assert result["ratio_tokens_per_s"] == pytest.approx(result["posttrain"]["tokens_per_s"] / result["trl"]["tokens_per_s"])
    assert result["settings"]["beta"] == 0.1


def test_benchmark_pairs_are_distinct_preference_pairs():
    pairs = benchmark_pairs(8)
    assert len(pairs) == 8 and all(p["chosen"] != p["rejected"] for p in pairs)
    assert set(pairs[0]) == {"prompt", "chosen", "rejected"}


def test_unknown_peer_is_a_clear_error():
    with pytest.raises(PosttrainError, match="unknown peer"):
        run_dpo_benchmark(vs="openrlhf")
