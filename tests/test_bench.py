"""`posttrain bench sft` runs both sides in their own processes and reports per-side figures and ratios.

Only the plumbing is tested here; benchmark figures come from `posttrain bench sft --vs trl`.
"""

import pytest
import torch

from posttrain.bench.harness import host_info, summarize
from posttrain.bench.sft import SftBenchOptions, run_sft_benchmark
from posttrain.errors import PosttrainError
from posttrain.models import save_model, tiny_model, tiny_tokenizer


def test_sft_benchmark_reports_both_sides_and_ratios(tmp_path):
    model_dir = save_model(tiny_model(), tiny_tokenizer(), tmp_path / "tiny")
    result = run_sft_benchmark(SftBenchOptions(model=str(model_dir), steps=2, batch_size=2, max_length=384,
                                               repeats=1, warmup_steps=1))
    for side in ("posttrain", "trl"):
        figures = result[side]
        assert figures["tokens_per_s"] > 0 and figures["seconds_per_step"] > 0 and figures["peak_rss_mb"] > 0
        assert figures["runs"][0]["steps"] == 3
        assert figures["final_loss"] > 0
    assert result["ratio_tokens_per_s"] == pytest.approx(result["posttrain"]["tokens_per_s"] / result["trl"]["tokens_per_s"])
    assert result["ratio_peak_rss"] == pytest.approx(result["posttrain"]["peak_rss_mb"] / result["trl"]["peak_rss_mb"])
    assert result["settings"]["batch_size"] == 2
    assert result["host"]["cores"] >= 1 and result["host"]["cpu"]


def test_host_info_reads_the_model_and_the_precision_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\nflags\t\t: fpu avx2 avx512f avx512_bf16 sse4_2\n")
    info = host_info(cpuinfo)
    assert info["cpu"] == "Example CPU @ 2.0GHz" and info["flags"] == ["avx2", "avx512f", "avx512_bf16"]


def test_unknown_peer_is_a_clear_error():
    with pytest.raises(PosttrainError, match="unknown peer"):
        run_sft_benchmark(SftBenchOptions(vs="nemo"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_benchmarks_are_refused_without_cuda():
    with pytest.raises(PosttrainError, match="no CUDA device"):
        run_sft_benchmark(SftBenchOptions(device="cuda"))


def test_gpu_memory_is_summarized_when_both_sides_report_it():
    run = {"tokens_per_s": 1.0, "seconds_per_step": 1.0, "peak_rss_mb": 10.0}
    runs = {"posttrain": [{**run, "peak_cuda_mb": 300.0}], "trl": [{**run, "peak_cuda_mb": 600.0}]}
    assert summarize(runs, "posttrain", "trl", {})["ratio_peak_cuda"] == 0.5
    assert "ratio_peak_cuda" not in summarize({"posttrain": [run], "trl": [run]}, "posttrain", "trl", {})
