"""The HTML run report: summary header, key plots first, constants as rows, run comparison."""

from __future__ import annotations

import base64
import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import yaml

from posttrain.errors import DataError, PosttrainError
from posttrain.report import read_run, write_report
from posttrain.report.layout import group_by_prefix
from posttrain.report.plots import extrapolating_interp
from posttrain.report.summary import constant_metrics, summarize_run, wall_minutes, wall_seconds

IMAGE = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
T0 = 1_700_000_000.0


def make_run(root: Path, name: str, records: list, config: dict | None, tail: str = "", *,
             starts: list[float] = (), summary: dict | None = None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines) + tail)
    if config is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if starts:
        (run_dir / "history.jsonl").write_text(
            "".join(json.dumps({"time": start, "event": "start", "step": 0}) + "\n" for start in starts))
    if summary is not None:
        (run_dir / "data_summary.json").write_text(json.dumps(summary))
    return run_dir


def images(page: str) -> list[str]:
    return [alt for alt, _ in IMAGE.findall(page)]


def section(page: str, heading: str) -> str:
    """The HTML between ``<h2>heading</h2>`` and the next ``<h2>``."""
    return page.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]


def rows(html_table: str, css: str | None = None) -> list[list[str]]:
    """The cells of each body row (only rows of class ``css`` when given)."""
    opening = f'<tr class="{css}">' if css else "<tr>"
    body = html_table.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", row)]
            for row in body.split(opening)[1:]]


def sft_config(**changes) -> dict:
    config = {"name": "a", "method": "sft", "seed": 0, "model": {"name": "tiny-random"},
              "optim": {"lr": 2e-4, "warmup": 1}, "sft": {"loss": "profit", "tau": 0.1},
              "data": {"train": {"task": "arithmetic", "n": 100}}, "train": {"max_steps": 4}}
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return config


def eval_record(step: int, time: float, accuracy: float, mean_length: float) -> dict:
    return {"step": step, "time": time, "eval/accuracy": accuracy, "eval/pass@1": accuracy,
            "eval/mean_length": mean_length, "eval/num_prompts": 8, "eval/parse_failure_rate": 0.0}


def sft_records(losses: list[float], rates: list[float], seconds: list[float], accuracy: tuple[float, float],
                start: float = T0) -> list[dict]:
    """Eval at step 0, one record per step 10 s apart, eval at the last step."""
    records = [eval_record(0, start + 10, accuracy[0], 50.0)]
    for index, (loss, rate, second) in enumerate(zip(losses, rates, seconds, strict=True)):
        records.append({"step": index + 1, "time": start + 20 + 10 * index, "loss": loss, "nll": loss * 2,
                        "masked_fraction": 0.1 + 0.01 * index, "lr": 1e-4 * (index + 1), "grad_norm": 1.0 / (1 + index),
                        "tokens_per_s": rate, "seconds_per_step": second, "epoch": 0, "skipped_updates": 0})
    records.append(eval_record(len(losses), start + 20 + 10 * len(losses), accuracy[1], 40.0))
    return records


@pytest.fixture
def sft_run(tmp_path):
    records = sft_records([2.0, 1.5, 1.2, 1.0], [100.0, 200.0, 100.0, 200.0], [1.0, 3.0, 1.0, 3.0], (0.25, 0.5))
    return make_run(tmp_path, "sft-run", records, sft_config(), starts=[T0],
                    summary={"source": "task:arithmetic:train", "examples": 100, "steps": 4})


def test_header_values_from_metrics(sft_run, tmp_path):
    run = read_run(sft_run, "sft-run")
    summary = summarize_run(run, constant_metrics([run]))
    assert summary.method == "sft (profit)" and summary.model == "tiny-random"
    assert summary.data == "task:arithmetic:train, 100 examples"
    assert (summary.last_step, summary.planned_steps, summary.finished) == (4, 4, True)
    assert summary.wall_seconds == pytest.approx(60.0)  # start of the session → last record
    # time-weighted: (100·1 + 200·3 + 100·1 + 200·3) / (1 + 3 + 1 + 3)
    assert summary.tokens_per_s == pytest.approx(175.0)
    changes = {change.metric: (change.first, change.last) for change in summary.evals}
    assert changes == {"eval/accuracy": (0.25, 0.5), "eval/pass@1": (0.25, 0.5), "eval/mean_length": (50.0, 40.0)}

    page = write_report([sft_run], tmp_path / "report.html").read_text()
    header = dict((cells[0], cells[1]) for cells in rows(section(page, "Summary")))
    assert header["method"] == "sft (profit)" and header["steps"] == "4 of 4"
    assert header["wall time"] == "1 min 00 s" and header["tokens/s"] == "175"
    assert header["eval/accuracy"] == "0.25 → 0.5 (+0.25)"
    assert header["eval/mean_length"] == "50 → 40 (-10)"
    assert "eval/num_prompts" not in header and "eval/parse_failure_rate" not in header


def test_constants_are_rows_not_plots(sft_run, tmp_path):
    page = write_report([sft_run], tmp_path / "report.html").read_text()
    constants = {cells[0]: cells[1] for cells in rows(section(page, "Constants"))}
    assert constants == {"eval/num_prompts": "8", "eval/parse_failure_rate": "0", "epoch": "0",
                         "skipped_updates": "0"}
    assert not set(constants) & set(images(page))


def test_time_is_the_clock_not_a_metric(sft_run, tmp_path):
    run = read_run(sft_run, "sft-run")
    assert "time" not in run.series and run.clock[0] == (0.0, T0 + 10)
    page = write_report([sft_run], tmp_path / "report.html").read_text()
    assert "time" not in images(page)
    assert '<td>time</td>' not in page  # nor a constant, nor a last value
    # the wall clock in minutes per step, for the plots' top axis
    minutes = wall_minutes(run)
    assert minutes[0] == pytest.approx((0.0, 10 / 60)) and minutes[-1] == pytest.approx((4.0, 50 / 60))


def test_key_plots_come_first_then_groups(sft_run, tmp_path):
    page = write_report([sft_run], tmp_path / "report.html").read_text()
    assert images(section(page, "Key metrics")) == ["loss", "eval/accuracy", "nll", "masked_fraction"]
    more = section(page, "More metrics")
    assert images(more) == ["eval/mean_length", "eval/pass@1", "grad_norm", "lr", "seconds_per_step",
                            "tokens_per_s"]
    assert more.index("<h3>eval/</h3>") < more.index("<h3>other</h3>")
    for _, encoded in IMAGE.findall(page):
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")


def test_rl_key_plots_include_laser_and_group_by_prefix(tmp_path):
    metrics = {"zeta": 1.0, "sv_f1": 0.5, "engine_logprob_gap": 0.1, "reward_std": 0.3, "entropy": 0.9,
               "reward": 0.4, "engine_corrected": 0.0, "loss": 1.0, "reward_math": 0.4, "kl": 0.01}
    records = [{"step": step, **{key: value + step for key, value in metrics.items()}} for step in (1, 2)]
    config = {"method": "grpo", "rl": {"loss": "dapo", "laser": {"enabled": True}}}
    page = write_report([make_run(tmp_path, "rl", records, config)], tmp_path / "report.html").read_text()
    assert images(section(page, "Key metrics")) == ["loss", "reward", "entropy", "kl", "sv_f1"]
    assert images(section(page, "More metrics")) == ["engine_corrected", "engine_logprob_gap", "reward_math",
                                                     "reward_std", "zeta"]
    assert "grpo (dapo, LaSeR)" in section(page, "Summary")


def test_prefix_groups():
    groups = group_by_prefix(["lr", "reward_std", "eval/a", "engine_x", "reward_math", "engine_y", "grad_norm"])
    assert groups == [("eval/", ["eval/a"]), ("engine_", ["engine_x", "engine_y"]),
                      ("reward_", ["reward_math", "reward_std"]), ("other", ["grad_norm", "lr"])]


def test_comparison_shows_exactly_the_differing_settings(sft_run, tmp_path):
    records = sft_records([2.2, 1.9, 1.7, 1.6], [150.0] * 4, [2.0] * 4, (0.25, 0.375))
    nll = make_run(tmp_path, "nll-run", records, sft_config(**{"name": "b", "sft.loss": "nll", "optim.lr": 1e-4,
                                                               "train.eval_every": 2}))
    page = write_report([sft_run, nll], tmp_path / "report.html").read_text()
    table, other_versions = section(page, "Comparison").split("<details>")
    settings = rows(table, "setting")
    assert settings == [["name", "a", "b"], ["optim.lr", "0.0002", "0.0001"], ["sft.loss", "profit", "nll"]]
    # a setting one config has nothing of (another posttrain version's schema) is folded below
    assert "1 setting(s) not in every run's config" in other_versions
    assert rows(other_versions) == [["train.eval_every", "–", "2"]]
    header = {cells[0]: cells[1:] for cells in rows(table)}
    assert header["method"] == ["sft (profit)", "sft (nll)"]
    assert header["eval/accuracy"] == ["0.25 → 0.5 (+0.25)", "0.25 → 0.375 (+0.125)"]
    assert header["tokens/s"] == ["175", "150"]
    assert header["steps"] == ["4 of 4", "4 of 4"]  # the second from train.max_steps (no data_summary.json)
    # both runs overlaid in one plot per metric; the full config folded below
    assert images(page).count("loss") == 1
    assert "Full config" in section(page, "Details")


def test_empty_and_short_metrics(tmp_path):
    empty = make_run(tmp_path, "empty", [], sft_config(), summary={"steps": 4})
    page = write_report([empty], tmp_path / "empty.html").read_text()
    assert images(page) == [] and "empty: no metrics logged yet" in page
    assert "No changing numeric metric logged" in page and "none logged" in section(page, "Summary")

    short = make_run(tmp_path, "short", [{"step": 1, "time": T0, "loss": 2.0}], None)
    page = write_report([short], tmp_path / "short.html").read_text()
    assert images(page) == []  # one value is a constant: a row
    assert rows(section(page, "Constants")) == [["loss", "2"]]
    header = dict((cells[0], cells[1]) for cells in rows(section(page, "Summary")))
    assert header["wall time"] == "0 s" and header["method"] == "–" and header["tokens/s"] == "–"


def test_failed_run(tmp_path):
    records = sft_records([2.0, 1.5], [100.0, 100.0], [1.0, 1.0], (0.25, 0.25))[:-1]  # no final eval
    failed = make_run(tmp_path, "failed", records, sft_config(), tail='{"step": 3, "loss": 1.',
                      summary={"steps": 10, "source": "x.jsonl", "examples": 7})
    page = write_report([failed], tmp_path / "report.html").read_text()
    header = dict((cells[0], cells[1]) for cells in rows(section(page, "Summary")))
    assert header["steps"] == "2 of 10 (incomplete)"
    assert header["eval/accuracy"] == "0.25 (once)"
    assert "failed: logged up to step 2 of 10" in page
    assert "failed: 1 line(s) of metrics.jsonl were not JSON objects" in page
    assert images(section(page, "Key metrics")) == ["loss", "nll", "masked_fraction"]


def test_wall_time_leaves_out_the_pause_before_a_resume(tmp_path):
    records = [{"step": 1, "time": T0 + 10, "loss": 1.0}, {"step": 2, "time": T0 + 20, "loss": 0.9},
               {"step": 3, "time": T0 + 1010, "loss": 0.8}]
    # an earlier attempt at T0 - 500 whose records were replaced, the start at T0, a resume at T0 + 1000
    run = read_run(make_run(tmp_path, "r", records, None, starts=[T0 - 500, T0, T0 + 1000]), "r")
    assert wall_seconds(run) == pytest.approx(30.0)
    assert [minutes for _, minutes in wall_minutes(run)] == pytest.approx([10 / 60, 20 / 60, 30 / 60])


def test_minutes_axis_mapping_extends_past_the_ends():
    steps, minutes = np.array([0.0, 1.0, 3.0]), np.array([0.5, 1.0, 2.0])
    assert extrapolating_interp([-1.0, 2.0, 5.0], steps, minutes) == pytest.approx([0.0, 1.5, 3.0])
    assert extrapolating_interp([0.0, 1.5, 3.0], minutes, steps) == pytest.approx([-1.0, 2.0, 5.0])


def test_first_plot_can_be_saved_for_viewing(sft_run, tmp_path):
    page = write_report([sft_run], tmp_path / "report.html").read_text()
    _, encoded = IMAGE.findall(page)[0]
    png = tmp_path / "first_plot.png"
    png.write_bytes(base64.b64decode(encoded))
    assert png.stat().st_size > 5_000


def test_run_reading(tmp_path):
    records = [{"step": 1, "time": T0, "loss": 2.0, "tokens_per_s": 150.0, "phase": "train"},
               {"step": 2, "loss": 1.5, "tokens_per_s": None, "nonfinite": ["tokens_per_s"]},
               {"step": 2, "eval/accuracy": 0.25}]
    run = read_run(make_run(tmp_path, "r", records, {"optim": {"lr": 2e-4}}), "r")
    assert run.series["loss"] == [(1.0, 2.0), (2.0, 1.5)]
    assert run.series["tokens_per_s"] == [(1.0, 150.0)] and run.series["eval/accuracy"] == [(2.0, 0.25)]
    assert run.final("loss") == 1.5 and run.final("masked_fraction") is None
    assert run.config["optim"]["lr"] == 2e-4 and run.clock == [(1.0, T0)]
    assert (run.skipped_lines, run.skipped_values) == (0, 2)  # "train" and the null


def test_records_without_step_use_their_position(tmp_path):
    run = read_run(make_run(tmp_path, "r", [{"loss": 3.0}, {"loss": 2.0}, "[1, 2]"], None), "r")
    assert run.series["loss"] == [(1.0, 3.0), (2.0, 2.0)]
    assert run.skipped_lines == 1 and run.config == {}


def test_single_run_without_config(tmp_path):
    run_dir = make_run(tmp_path, "only", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], None)
    page = write_report([run_dir], tmp_path / "report.html").read_text()
    assert images(page) == ["loss"] and "No config.yaml" in page


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


def test_number_and_duration_formats():
    from posttrain.report.html import format_duration, format_value

    assert [format_value(v) for v in (None, 3.0, 0.123456, 12345.6, -2.5e-7)] == ["–", "3", "0.1235", "12346",
                                                                                 "-2.5e-07"]
    assert [format_duration(s) for s in (None, 44.6, 200, 3725)] == ["–", "45 s", "3 min 20 s", "1 h 02 min"]


def test_a_comparison_does_not_replace_a_runs_own_report(tmp_path):
    from posttrain.report import default_report_path

    first, second = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    assert default_report_path([first]) == first / "report.html"
    assert default_report_path([first, second]) == tmp_path / "runs" / "compare-a+b.html"
    many = [tmp_path / "runs" / f"a-very-long-run-name-{index}" for index in range(5)]
    assert default_report_path(many) == tmp_path / "runs" / "compare-a-very-long-run-name-0+4-more.html"


def test_minute_ticks_do_not_bunch_where_steps_took_long():
    from posttrain.report.plots import spaced_ticks

    candidates = [0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    positions = [0.0, 0.1, 0.2, 0.3, 2.0, 4.0, 6.0]  # the first 15 minutes went by within 0.3 steps
    assert spaced_ticks(candidates, positions, span=6.0, count=6) == [0.0, 20.0, 25.0, 30.0]


def test_a_section_set_in_one_run_and_null_in_another_is_a_difference(tmp_path):
    plain = make_run(tmp_path, "plain", [{"step": 1, "loss": 1.0}], {"method": "grpo", "rl": {"judge": None}})
    judge = make_run(tmp_path, "judge", [{"step": 1, "loss": 1.0}],
                     {"method": "grpo", "rl": {"judge": {"template": "grm"}}})
    page = write_report([plain, judge], tmp_path / "report.html").read_text()
    assert "<details><summary>" not in section(page, "Comparison")
    assert rows(section(page, "Comparison"), "setting") == [["rl.judge", "None", "–"],
                                                            ["rl.judge.template", "–", "grm"]]


def test_the_starts_of_a_run_are_its_start_and_resume_lines_not_its_finish_lines(tmp_path):
    from posttrain.report.runs import read_starts

    history = tmp_path / "history.jsonl"
    events = [("start", 10.0), ("finish", 20.0), ("resume", 30.0), ("finish", 40.0)]
    history.write_text("".join(json.dumps({"time": t, "event": e, "step": 0}) + "\n" for e, t in events) + "cut li")
    assert read_starts(history) == [10.0, 30.0]
