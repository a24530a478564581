"""Runs that cannot be corrupted: safe loading, run names, locking, resume rules, non-finite steps, damaged
checkpoints, a full disk, and data that changed under a resumed run."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.config import load_config
from posttrain.errors import CheckpointError, ConfigError, DataError, RunStateError
from posttrain.trainers import checkpoint as ckpt
from posttrain.trainers import run_log
from posttrain.trainers.run import train
from posttrain.trainers.run_lock import RunLock
from tests.helpers import PicklePayload, read_jsonl, run_cli, tiny_config, tiny_overrides, train_steps


def _finished_run(tmp_path, name="run", **extra):
    values = {"train.max_steps": 4, "train.save_every": 2, "train.keep_checkpoints": 3, **extra}
    return train(tiny_config(tmp_path, name, **values)).run_dir


# -- security ----------------------------------------------------------------------------------------------


def test_a_pickled_payload_in_a_checkpoint_is_refused_and_never_runs(tmp_path):
    run_dir = _finished_run(tmp_path)
    step = ckpt.list_checkpoints(run_dir)[-1]
    marker = tmp_path / "payload-ran"
    with (step / "scheduler.pt").open("wb") as handle:
        pickle.dump({"state": PicklePayload(marker)}, handle)
    ckpt.write_manifest(step)  # the attacker rewrites the manifest too: only safe loading stops it
    with pytest.raises(CheckpointError, match="scheduler.pt"):
        train(tiny_config(tmp_path, "victim", **{"train.max_steps": 6, "train.resume": str(step)}))
    assert not marker.exists()


def test_rng_optimizer_and_scheduler_states_load_with_weights_only(tmp_path):
    step = ckpt.list_checkpoints(_finished_run(tmp_path))[-1]
    for name in ("optimizer.pt", "scheduler.pt", "rng-rank0.pt"):
        torch.load(step / name, weights_only=True)


@pytest.mark.parametrize("name", ["..", ".", "../../x", "/x", "a/b", ".hidden", "-flag", "", "a b"])
def test_a_run_name_that_is_not_one_safe_folder_name_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="name"):
        load_config(None, [f"name={name!r}" if name else "name=''", f"output_dir={tmp_path}"])
    assert not list(tmp_path.iterdir())


def test_usual_run_names_are_accepted(tmp_path):
    for name in ("run", "grpo-s1", "sft_v2.1", "exp+lora"):
        assert load_config(None, [f"name={name}"]).name == name


# -- one process per run -----------------------------------------------------------------------------------

HOLDER = "import sys, time; from posttrain.trainers.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); " \
         "print('held', flush=True); time.sleep(600)"


def test_a_second_process_on_a_run_is_refused_and_kill_9_frees_the_run(tmp_path):
    run_dir = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunStateError, match=f"in use by process {holder.pid}"):
            RunLock(run_dir).acquire()
        with pytest.raises(RunStateError, match="in use"):  # the whole run is refused before it writes anything
            train(tiny_config(tmp_path, "locked"))
        assert not (run_dir / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(run_dir):  # no stale lock after kill -9
        pass
    assert train(tiny_config(tmp_path, "locked", **{"train.max_steps": 1})).steps == 1


# -- resume rules ------------------------------------------------------------------------------------------


def test_resuming_with_changed_optimization_settings_lists_every_change(tmp_path):
    _finished_run(tmp_path, "same")
    changed = {"train.max_steps": 6, "optim.lr": 5e-4, "sft.loss": "dft"}
    with pytest.raises(ConfigError) as raised:
        train(tiny_config(tmp_path, "same", **changed))
    message = str(raised.value)
    assert "optim.lr: 0.001 -> 0.0005" in message and "sft.loss: 'nll' -> 'dft'" in message
    assert "max_steps" not in message  # allowed to change
    assert len(read_jsonl(tmp_path / "same" / "metrics.jsonl")) == 4  # nothing was appended


def test_resuming_with_allowed_changes_continues_and_records_them(tmp_path):
    run_dir = _finished_run(tmp_path, "longer")
    train(tiny_config(tmp_path, "longer", **{"train.max_steps": 6, "train.save_every": 3, "train.log_every": 2,
                                              "train.keep_checkpoints": 3}))
    history = read_jsonl(run_dir / "history.jsonl")
    assert [h["event"] for h in history] == ["start", "finish", "resume", "finish"]
    assert history[2]["step"] == 4 and history[2]["changes"]["train.max_steps"] == {"old": 4, "new": 6}
    assert [h["step"] for h in history if h["event"] == "finish"] == [4, 6]
    assert sorted(train_steps(run_dir)) == [1, 2, 3, 4, 6]


def test_data_that_changed_under_a_resumed_run_is_named(tmp_path):
    data = tmp_path / "train.jsonl"
    records = [{"prompt": f"What is {i} + 1?", "completion": f"{i + 1}"} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    _finished_run(tmp_path, "data", **{"data.train": f"{{path: {data}}}"})
    data.write_text("".join(json.dumps(r) + "\n" for r in records[:20]))
    with pytest.raises(DataError, match=r"train.jsonl shrank from \d+ to \d+ bytes"):
        train(tiny_config(tmp_path, "data", **{"data.train": f"{{path: {data}}}", "train.max_steps": 6,
                                               "train.save_every": 2, "train.keep_checkpoints": 3}))


# -- non-finite training -----------------------------------------------------------------------------------


def test_infinite_or_nan_settings_are_refused():
    for override in ("optim.lr=.inf", "optim.lr=.nan", "optim.eps=.inf", "optim.max_grad_norm=.nan"):
        with pytest.raises(ConfigError, match="finite"):
            load_config(None, [override])


def _poison_weights(tmp_path):
    """A copy of the tiny model with NaN in one weight (as a bit-flipped checkpoint would have)."""
    from posttrain.models import load_model, load_tokenizer

    model, tokenizer = load_model("tiny-random", dtype="float32"), load_tokenizer("tiny-random")
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = float("nan")
    out = tmp_path / "poisoned"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_nan_loss_never_reaches_the_weights_and_stops_the_run_with_an_error(tmp_path):
    model_dir = _poison_weights(tmp_path)
    with pytest.raises(RunStateError, match="3 optimizer updates in a row"):
        train(tiny_config(tmp_path, "nan", **{"model.name": str(model_dir), "train.max_steps": 10}))
    lines = (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    report = (tmp_path / "nan" / "report.html").read_text()  # the failed run's report says how far it got
    assert "logged up to step 3 of 10" in report
    for line in lines:  # strict JSON: no bare NaN
        record = json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
        assert record["loss"] is None and "loss" in record["nonfinite"] and record["skipped_updates"] == 1
    assert not ckpt.list_checkpoints(tmp_path / "nan")


def test_a_diverged_run_exits_non_zero_from_the_command_line(tmp_path):
    model_dir = _poison_weights(tmp_path)
    done = run_cli("train", "-", *tiny_overrides(tmp_path, "nan-cli", **{"model.name": str(model_dir),
                                                                        "train.max_nonfinite_steps": 2}))
    assert done.returncode == 2 and "training diverged: 2 optimizer updates in a row" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_single_non_finite_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    from posttrain.trainers.sft import SFTMethod

    original = SFTMethod.loss
    calls = {"n": 0}

    def loss_nan_at_second_step(self, model, batch, totals):
        calls["n"] += 1
        loss, stats = original(self, model, batch, totals)
        return (loss * float("nan"), stats) if calls["n"] == 2 else (loss, stats)

    monkeypatch.setattr(SFTMethod, "loss", loss_nan_at_second_step)
    run_dir = train(tiny_config(tmp_path, "blip", **{"train.max_steps": 4, "train.micro_batch_tokens": 0})).run_dir
    steps = train_steps(run_dir)
    assert [steps[s]["skipped_updates"] for s in (1, 2, 3, 4)] == [0, 1, 0, 0]
    assert steps[2]["grad_norm"] is None and steps[2]["nonfinite"] == ["grad_norm"] and steps[3]["grad_norm"] > 0
    final = ckpt.list_checkpoints(run_dir)[-1]
    optimizer_steps = {int(s["step"]) for s in torch.load(final / "optimizer.pt", weights_only=True)["state"].values()}
    assert optimizer_steps == {3}  # four steps, one update skipped: AdamW stepped three times
    from safetensors.torch import load_file

    assert all(torch.isfinite(w).all() for w in load_file(final / "model" / "model.safetensors").values())


def test_strict_record_turns_non_finite_values_into_null():
    record = run_log.strict_record({"step": 1, "loss": float("inf"), "x": 1.0, "g": float("nan")})
    assert record == {"step": 1, "loss": None, "x": 1.0, "g": None, "nonfinite": ["loss", "g"]}


# -- damaged checkpoints -----------------------------------------------------------------------------------


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    run_dir = _finished_run(tmp_path, "cut")
    newest = ckpt.list_checkpoints(run_dir)[-1]
    _truncate(newest / "model" / "model.safetensors")
    result = train(tiny_config(tmp_path, "cut", **{"train.max_steps": 4, "train.save_every": 2,
                                                  "train.keep_checkpoints": 3}))
    assert result.steps == 4
    assert "skipping damaged checkpoint" in capsys.readouterr().out
    resumed, finished = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()[-2:]]
    assert resumed["event"] == "resume" and resumed["step"] == 2 and finished == {**finished, "event": "finish", "step": 4}


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_an_explicitly_chosen_damaged_checkpoint_is_named(tmp_path, damaged):
    newest = ckpt.list_checkpoints(_finished_run(tmp_path, "bad"))[-1]
    _truncate(newest / damaged)
    with pytest.raises(CheckpointError, match=damaged.split("/")[-1]):
        train(tiny_config(tmp_path, "other", **{"train.max_steps": 6, "train.resume": str(newest)}))


def test_a_flipped_bit_is_caught_by_the_manifest(tmp_path):
    newest = ckpt.list_checkpoints(_finished_run(tmp_path, "flip"))[-1]
    weights = newest / "optimizer.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="optimizer.pt is corrupt"):
        ckpt.verify_checkpoint(newest)


# -- a full disk -------------------------------------------------------------------------------------------


def _safetensors_full_disk():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("disk_full", [
    lambda file: OSError(errno.ENOSPC, "No space left on device", str(file)),
    lambda file: _safetensors_full_disk(),  # safetensors keeps the OS error only in its message
], ids=["os-error", "safetensors-error"])
def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, disk_full):
    run_dir = _finished_run(tmp_path, "full")
    before = [p.name for p in ckpt.list_checkpoints(run_dir)]
    real_save = torch.save

    def full_disk(obj, file, *args, **kwargs):
        if str(file).endswith("optimizer.pt"):
            raise disk_full(file)
        return real_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(RunStateError, match=f"no space left on {run_dir / 'checkpoints'}"):
        train(tiny_config(tmp_path, "full", **{"train.max_steps": 6, "train.save_every": 2,
                                               "train.keep_checkpoints": 3}))
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == before
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    ckpt.verify_checkpoint(ckpt.list_checkpoints(run_dir)[-1])


def test_a_full_disk_while_logging_says_so(tmp_path, monkeypatch):
    log = run_log.RunLog(tmp_path, total_steps=2, start_step=0)
    real_open = type(log.path).open

    def full_disk(path, *args, **kwargs):
        if path.name == "metrics.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(type(log.path), "open", full_disk)
    try:
        with pytest.raises(RunStateError, match="no space left on .* while writing metrics.jsonl"):
            log.log(1, {"loss": 1.0})
    finally:
        log.close()


def test_other_os_errors_are_not_reported_as_a_full_disk():
    from posttrain.errors import disk_space_checked

    with pytest.raises(PermissionError), disk_space_checked("/somewhere", "x"):
        raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(ValueError), disk_space_checked("/somewhere", "x"):
        raise ValueError("not a disk problem")


@pytest.mark.parametrize("message", [
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write failed",
    # torch.save when the archive's end-of-file record came up short (seen on a disk that filled mid-save)
    "[enforce fail at inline_container.cc:672] . unexpected pos 757629376 vs 757629268"])
def test_a_bare_write_failure_counts_as_a_full_disk_only_when_the_disk_is_nearly_full(tmp_path, monkeypatch,
                                                                                      message):
    import shutil
    from types import SimpleNamespace

    from posttrain import errors

    write_failed = RuntimeError(message)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=2**20))
    with pytest.raises(RunStateError, match=f"no space left on {tmp_path} while writing x"), \
            errors.disk_space_checked(tmp_path, "x"):
        raise write_failed
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10**11))
    with pytest.raises(RuntimeError, match="enforce fail"), errors.disk_space_checked(tmp_path, "x"):
        raise write_failed


def test_the_lock_file_names_its_holder(tmp_path):
    with RunLock(tmp_path / "r") as lock:
        pid, _host = lock.path.read_text().split()
        assert int(pid) == os.getpid()


def test_settings_added_since_a_checkpoint_count_as_their_defaults_inside_recorded_sections():
    from posttrain.trainers.resume import config_changes, setting_defaults

    defaults = setting_defaults()
    assert defaults["distill.feedback.sources"] == ["sibling"] and defaults["data.sample_block"] == 1
    old = {"method": "distill", "data": {"max_length": 64}, "distill": {"teacher": "self"}}
    new = {"method": "distill", "data": {"max_length": 64, "sample_block": 1},
           "distill": {"teacher": "self", "feedback": {"sources": ["sibling"]}, "entropy_weighting": "none"}}
    assert config_changes(old, new) == {}  # an older version wrote this checkpoint: same optimization
    changed = {**new, "data": {"max_length": 64, "sample_block": 2}}
    assert config_changes(old, changed) == {"data.sample_block": (1, 2)}  # a non-default value is a change
    switched_on = {"method": "distill", "distill": None}  # a section the checkpoint had off stays a change
    assert "distill.teacher" in config_changes(switched_on, new)


def test_a_new_default_in_a_section_the_method_never_reads_does_not_block_resuming():
    from posttrain.trainers.resume import check_config

    old = {"method": "grpo", "rl": {"beta": 0.0}, "distill": {"feedback": {"template": "{prompt} {attempt} {feedback}"}},
           "preference": {"beta": 0.1}}
    new = {"method": "grpo", "rl": {"beta": 0.0}, "distill": {"feedback": {"template": "{prompt} {feedback}"}},
           "preference": {"beta": 0.2}}
    assert set(check_config(old, new, Path("ckpt"))) == {"distill.feedback.template", "preference.beta"}  # logged
    srpo = {**new, "method": "srpo"}  # SRPO reads distill: the same change refuses the resume
    with pytest.raises(ConfigError, match="distill.feedback.template"):
        check_config({**old, "method": "srpo"}, srpo, Path("ckpt"))
    with pytest.raises(ConfigError, match="rl.beta"):
        check_config(old, {**new, "rl": {"beta": 0.1}}, Path("ckpt"))
    with pytest.raises(ConfigError, match="method"):  # another method: every section counts again
        check_config(old, {**new, "method": "distill"}, Path("ckpt"))
