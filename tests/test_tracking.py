"""Weights & Biases beside metrics.jsonl (``logging.report_to``), in W&B's offline mode: the history, the config,
the report artifact, a resumed run continuing the same W&B run, and a clear error without the package."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.errors import ConfigError, RunStateError
from posttrain.trainers import tracking
from posttrain.trainers.run import train
from posttrain.trainers.run_log import RunLog
from tests.helpers import read_jsonl, tiny_config

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``run-ID.wandb`` file (W&B ships no Python reader for it)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a header is padding
            position += BLOCK - position % BLOCK
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def offline_runs(wandb_dir: Path, run_id: str) -> list[list]:
    """The records of each offline W&B run with ``run_id`` under ``wandb_dir``, oldest first. W&B's service
    process writes them and completes the files when it stops, so it is stopped first (the next run starts
    another)."""
    wandb.teardown()
    # offline-run-TIME-ID, with -1, -2, ... added when a run of the same id started in the same second
    files = sorted((wandb_dir / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    return [wandb_records(path) for path in files]


def history(records: list) -> dict[int, dict]:
    rows = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or ".".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            rows[items["_step"]] = {k: v for k, v in items.items() if not k.startswith("_")}
    return rows


def of_kind(records: list, kind: str) -> list:
    return [getattr(record, kind) for record in records if record.WhichOneof("record_type") == kind]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, with every file it writes (runs, artifact staging, settings) under ``tmp_path``."""
    wandb_dir = tmp_path / "wandb-files"
    for name, value in {"WANDB_MODE": "offline", "WANDB_DIR": wandb_dir, "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                        "WANDB_DATA_DIR": tmp_path / "wandb-data", "WANDB_CONFIG_DIR": tmp_path / "wandb-config",
                        "WANDB_ARTIFACT_DIR": tmp_path / "wandb-artifacts", "WANDB_SILENT": "true",
                        "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(name, str(value))
    wandb_dir.mkdir()
    yield wandb_dir
    wandb.teardown()  # stop W&B's service process now rather than at interpreter exit


def test_report_to_names_trackers_as_trl_does():
    assert load_config(None, []).logging.report_to == ["tensorboard"]
    assert load_config(None, ["logging.report_to=wandb"]).logging.report_to == ["wandb"]
    assert load_config(None, ["logging.report_to=all"]).logging.report_to == ["tensorboard", "wandb"]
    assert load_config(None, ["logging.report_to=none"]).logging.report_to == []
    with pytest.raises(ConfigError, match="report_to"):
        load_config(None, ["logging.report_to=[mlflow]"])
    assert tracking.artifact_name("a+b.c_d") == "a-b.c_d-report"


def test_wandb_gets_the_metrics_config_and_report_and_a_resumed_run_continues_it(tmp_path, offline_wandb):
    settings = {"logging.report_to": "[tensorboard, wandb]", "train.max_steps": 2, "train.save_every": 2,
                "train.eval_at_start": True, "eval.kind": "math", "eval.n": 2, "eval.max_new_tokens": 4,
                "eval.batch_size": 2}
    run_dir = train(tiny_config(tmp_path, "tracked", **settings)).run_dir
    run_id = (run_dir / tracking.RUN_ID_FILE).read_text().strip()
    [records] = offline_runs(offline_wandb, run_id)
    logged: dict[int, dict] = {}  # a step's training and evaluation records, together as W&B keeps them
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        logged.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k not in ("step", "time")})
    rows = history(records)
    assert sorted(rows) == [0, 1, 2] == sorted(logged)
    for step, row in rows.items():  # the same keys at the same steps: training and evaluation
        assert row == pytest.approx(logged[step]), step
    assert "eval/accuracy" in rows[0] and "loss" in rows[2] and "eval/accuracy" in rows[2]
    [run] = of_kind(records, "run")
    assert run.run_id == run_id and run.display_name == "tracked" and run.project == "posttrain"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["method"] == "sft" and config["train"]["max_steps"] == 2
    assert config["logging"]["report_to"] == ["tensorboard", "wandb"]
    [artifact] = of_kind(records, "artifact")
    assert artifact.type == tracking.ARTIFACT_TYPE and artifact.name == "tracked-report"
    assert sorted(entry.path for entry in artifact.manifest.contents) == ["config.yaml", "metrics.jsonl",
                                                                           "report.html"]
    assert of_kind(records, "exit")[0].exit_code == 0
    assert list(run_dir.glob("events.out.tfevents.*"))

    train(tiny_config(tmp_path, "tracked", **{**settings, "train.max_steps": 3}))  # resumes at step 2
    assert (run_dir / tracking.RUN_ID_FILE).read_text().strip() == run_id
    _, resumed = offline_runs(offline_wandb, run_id)
    assert sorted(history(resumed)) == [3]
    assert of_kind(resumed, "run")[0].run_id == run_id


def test_a_fresh_start_opens_a_new_wandb_run_and_tensorboard_can_be_left_out(tmp_path, offline_wandb):
    config = tiny_config(tmp_path, "again", **{"logging.report_to": "wandb"})
    config.run_dir.mkdir(parents=True)
    run_ids = []
    for start_step in (0, 0, 5):  # a fresh start, another fresh start, a resume from step 5
        with tracking.wandb_run(config, is_main=True) as tracker:
            log = RunLog(config.run_dir, total_steps=6, start_step=start_step,
                         tensorboard="tensorboard" in config.logging.report_to, tracker=tracker)
            log.log(start_step + 1, {"loss": 1.5})
            log.close()
        run_ids.append((config.run_dir / tracking.RUN_ID_FILE).read_text().strip())
    assert run_ids[0] != run_ids[1] == run_ids[2]
    [fresh] = offline_runs(offline_wandb, run_ids[0])
    started, resumed = offline_runs(offline_wandb, run_ids[1])
    assert history(fresh) == history(started) == {1: {"loss": 1.5}} and history(resumed) == {6: {"loss": 1.5}}
    assert not list(config.run_dir.glob("events.out.tfevents.*"))


def test_a_failed_run_closes_its_wandb_run_with_an_error_code(tmp_path, offline_wandb):
    config = tiny_config(tmp_path, "broken", **{"logging.report_to": "wandb", "train.max_steps": 1})
    with pytest.raises(RuntimeError, match="stopped"):
        with tracking.wandb_run(config, is_main=True) as tracker:
            config.run_dir.mkdir(parents=True)
            tracker.start(resumed=False)
            tracker.log(1, {"loss": 2.5, "note": "text is not sent"})
            raise RuntimeError("stopped")
    run_id = (config.run_dir / tracking.RUN_ID_FILE).read_text().strip()
    [records] = offline_runs(offline_wandb, run_id)
    assert history(records) == {1: {"loss": 2.5}}
    assert of_kind(records, "exit")[0].exit_code == 1 and not of_kind(records, "artifact")


def test_wandb_that_cannot_start_says_how_to_log_in_or_log_offline(tmp_path, offline_wandb, monkeypatch):
    def refuse(**_):
        raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", refuse)
    config = tiny_config(tmp_path, "nologin", **{"logging.report_to": "wandb"})
    config.run_dir.mkdir(parents=True)
    with pytest.raises(RunStateError, match="could not start the run: api_key not configured") as error:
        with tracking.wandb_run(config, is_main=True) as tracker:
            RunLog(config.run_dir, total_steps=2, start_step=0, tracker=tracker)
    assert "wandb login" in error.value.fix and "logging.wandb_mode=offline" in error.value.fix
    assert not list(config.run_dir.glob("events.out.tfevents.*"))  # nothing else was opened


def test_wandb_missing_is_a_config_error_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    config = tiny_config(tmp_path, "nowandb", **{"logging.report_to": "[tensorboard, wandb]"})
    with pytest.raises(ConfigError, match=r"pip install wandb") as error:
        train(config)
    assert error.value.where == "logging.report_to"
    assert not (config.run_dir / "metrics.jsonl").exists()  # refused before any training
