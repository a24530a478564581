"""The HTML run report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from posttrain.errors import DataError, PosttrainError
from posttrain.report import read_run, write_report

IMAGE = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def make_run(root: Path, name: str, records: list, config: dict | None, tail: str = "") -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


@pytest.fixture
def two_runs(tmp_path):
    sft = make_run(
        tmp_path,
        "sft-seed0",
        [
            {"step": 1, "loss": 2.0, "lr": 1e-4, "tokens_per_s": 150.0, "phase": "train"},
            {"step": 2, "loss": 1.5, "lr": 2e-4, "tokens_per_s": 160.0},
            {"step": 2, "eval/accuracy": 0.25, "eval/pass@4": 0.5},
            {"step": 3, "loss": 1.2, "lr": 2e-4, "tokens_per_s": float("nan")},
        ],
        {"method": "sft", "seed": 0, "optim": {"lr": 2e-4, "warmup": 1}, "data": {"path": "train.jsonl"}},
    )
    profit = make_run(
        tmp_path,
        "profit-seed0",
        [
            {"step": 1, "loss": 2.2, "lr": 1e-4, "masked_fraction": 0.3},
            {"step": 2, "loss": 1.9, "lr": 2e-4, "masked_fraction": 0.35, "eval/accuracy": 0.4},
        ],
        {
            "method": "sft",
            "seed": 0,
            "optim": {"lr": 2e-4, "warmup": 1},
            "data": {"path": "train.jsonl"},
            "loss": {"kind": "profit", "tau": 0.1},
        },
        tail='{"step": 3, "loss": 1.',  # a line cut short when the run was killed
    )
    return sft, profit


def test_report_has_one_plot_per_metric_and_both_runs(two_runs, tmp_path):
    out = write_report(list(two_runs), tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    page = out.read_text()
    images = IMAGE.findall(page)
    expected = ["loss", "lr", "tokens_per_s", "eval/accuracy", "eval/pass@4", "masked_fraction"]
    assert [alt for alt, _ in images] == expected
    for _, encoded in images:
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    assert page.count("<img") == len(expected)
    assert "sft-seed0" in page and "profit-seed0" in page
    # config: only the differing settings in the summary, everything in the folded full table
    summary, full = page.split("<details>")
    assert "loss.kind" in summary and "profit" in summary
    assert "optim.lr" not in summary and "optim.lr" in full
    # final metrics: the last value of each run
    assert "<td>loss</td><td>1.2</td><td>1.9</td>" in page
    assert "<td>masked_fraction</td><td>–</td><td>0.35</td>" in page
    # what was left out is said
    assert "profit-seed0: 1 line(s) of metrics.jsonl were not JSON objects" in page
    assert "sft-seed0: 2 non-numeric or non-finite value(s) not plotted" in page


def test_first_plot_can_be_saved_for_viewing(two_runs, tmp_path):
    page = write_report(list(two_runs), tmp_path / "report.html").read_text()
    _, encoded = IMAGE.findall(page)[0]
    png = tmp_path / "first_plot.png"
    png.write_bytes(base64.b64decode(encoded))
    assert png.stat().st_size > 5_000


def test_run_reading(two_runs):
    sft = read_run(two_runs[0], "sft")
    assert sft.series["loss"] == [(1.0, 2.0), (2.0, 1.5), (3.0, 1.2)]
    assert sft.series["tokens_per_s"] == [(1.0, 150.0), (2.0, 160.0)]
    assert sft.series["eval/accuracy"] == [(2.0, 0.25)]
    assert sft.final("loss") == 1.2 and sft.final("masked_fraction") is None
    assert sft.config["optim"]["lr"] == 2e-4
    assert (sft.skipped_lines, sft.skipped_values) == (0, 2)


def test_records_without_step_use_their_position(tmp_path):
    run = read_run(make_run(tmp_path, "r", [{"loss": 3.0}, {"loss": 2.0}, "[1, 2]"], None), "r")
    assert run.series["loss"] == [(1.0, 3.0), (2.0, 2.0)]
    assert run.skipped_lines == 1 and run.config == {}


def test_single_run_without_config(tmp_path):
    run_dir = make_run(tmp_path, "only", [{"step": 1, "loss": 1.0}], None)
    page = write_report([run_dir], tmp_path / "report.html").read_text()
    assert page.count("<img") == 1 and "No config.yaml" in page


def test_duplicate_run_names_are_told_apart(tmp_path):
    first = make_run(tmp_path / "a", "run", [{"step": 1, "loss": 1.0}], None)
    second = make_run(tmp_path / "b", "run", [{"step": 1, "loss": 2.0}], None)
    page = write_report([first, second], tmp_path / "report.html").read_text()
    assert str(first) in page and str(second) in page


def test_missing_metrics_is_an_error(tmp_path):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(PosttrainError, match="no metrics.jsonl"):
        write_report([empty], tmp_path / "report.html")
    with pytest.raises(DataError, match="no run directories"):
        write_report([], tmp_path / "report.html")


def test_bad_config_is_an_error(tmp_path):
    run_dir = make_run(tmp_path, "r", [{"step": 1, "loss": 1.0}], None)
    (run_dir / "config.yaml").write_text("a: [unclosed\n")
    with pytest.raises(DataError, match="config.yaml"):
        write_report([run_dir], tmp_path / "report.html")
