"""Atomic checkpoints that let a killed run continue exactly where it stopped.

``checkpoints/step-N/`` holds the model in HF format (``model/``; a LoRA run stores its adapter),
the optimizer and scheduler states, every process's RNG states, ``trainer_state.json`` with the step, the
data position, the resolved config and the training data's fingerprint, and ``manifest.json`` with
the size and SHA-256 of every other file; an fp16 run adds its loss scaler's state (``loss_scaler.pt``,
:mod:`posttrain.trainers.precision`). Each checkpoint is written into a temporary directory and
renamed into place, so a checkpoint directory either exists whole or not at all; a full disk while
writing leaves the previous checkpoints as they were.

A weights-only checkpoint (``train.final_checkpoint: weights``, the run's last one) keeps the model, tokenizer,
trainer state and manifest and nothing else; ``trainer_state.json`` says so (``weights_only``), and it restores
only a run that has nothing left to train.

Under FSDP every process instead writes its own shards of the model and optimizer state into ``sharded/``
(:mod:`posttrain.models.sharded`), and ``model/`` holds the model's config and tokenizer; ``posttrain model
export`` consolidates, and a resume on another number of processes re-shards.

Loading never executes code: tensors and plain containers only (``torch.load(weights_only=True)``,
safetensors, JSON), and every file is checked against the manifest first, so a truncated or
bit-flipped file is named in a :class:`CheckpointError` instead of failing somewhere inside torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from posttrain.data.fingerprint import file_sha256
from posttrain.errors import CheckpointError, disk_space_checked
from posttrain.models import sharded
from posttrain.models.state_files import load_state_file

STEP_PREFIX = "step-"
MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.json"
SHARDED = sharded.SHARDED_DIR  # model and optimizer shards (torch.distributed.checkpoint)
LOSS_SCALER_FILE = "loss_scaler.pt"
RESUME_FIX = "resume from another checkpoint (train.resume=PATH) or start over (train.resume=never)"


@dataclass
class TrainerState:
    step: int
    data: dict
    seed: int
    stopped: bool = False  # the method ended the run early (e.g. distill.target_entropy reached)
    config: dict | None = None  # the resolved config that wrote the checkpoint (None: written before it was kept)
    data_files: dict | None = None  # fingerprint of the training data files (posttrain.data.fingerprint)
    world_size: int = 1  # processes that wrote it
    examples_per_step: int | None = None  # examples of one step over all processes (None: not recorded)
    weights_only: bool = False  # no optimizer, scheduler, random or method state (train.final_checkpoint=weights)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(STEP_PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def rng_state() -> dict:
    """Every generator's state as tensors and plain containers (loadable with ``weights_only=True``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                       "has_gauss": has_gauss, "gauss": gauss},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def temporary_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f".tmp-{STEP_PREFIX}{step}"


def write_process_state(run_dir: Path, step: int, rank: int) -> None:
    """Every process writes its own RNG state into the checkpoint being assembled."""
    target = temporary_dir(run_dir, step)
    with _writing(target, step):
        target.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), target / f"rng-rank{rank}.pt")


@contextlib.contextmanager
def _writing(target: Path, step: int):
    """Remove the half-written temporary checkpoint when writing it fails; report a full disk clearly."""
    try:
        with disk_space_checked(target.parent, f"checkpoint step-{step}"):
            yield
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def write_shards(run_dir: Path, step: int, model, optimizer) -> None:
    """Every process (FSDP): its shards of the model and optimizer state (the model's alone when ``optimizer`` is
    None: a weights-only checkpoint) into the checkpoint being assembled."""
    target = temporary_dir(run_dir, step)
    with _writing(target, step):
        sharded.write_shards(target / SHARDED, unwrap(model), optimizer)


def write_checkpoint(run_dir: Path, state: TrainerState, model, tokenizer, optimizer, scheduler, keep: int,
                     precision=None, shards_written: bool = False) -> Path:
    """Main process: write model, optimizer (both already in ``sharded/`` when ``shards_written``), scheduler, the
    loss scaler of ``precision`` (a :class:`~posttrain.trainers.precision.Precision`; only when it scales), trainer
    state and manifest, then rename into place. With ``state.weights_only`` the model, tokenizer, trainer state and
    manifest only.

    Older checkpoints beyond the newest ``keep`` are deleted only after the new one is in place."""
    target = temporary_dir(run_dir, state.step)
    with _writing(target, state.step):
        target.mkdir(parents=True, exist_ok=True)
        inner = unwrap(model)
        if shards_written:  # what export needs to rebuild the model around the shards
            inner.config.save_pretrained(target / "model")
            if getattr(inner, "generation_config", None) is not None:
                inner.generation_config.save_pretrained(target / "model")
        else:
            inner.save_pretrained(target / "model", safe_serialization=True)
            if not state.weights_only:
                torch.save(optimizer.state_dict(), target / "optimizer.pt")
        if tokenizer is not None:
            tokenizer.save_pretrained(target / "model")
        if not state.weights_only:
            torch.save(scheduler.state_dict(), target / "scheduler.pt")
            if precision is not None and precision.state_dict():
                torch.save(precision.state_dict(), target / LOSS_SCALER_FILE)
        (target / STATE_FILE).write_text(json.dumps(
            {"step": state.step, "data": state.data, "seed": state.seed, "stopped": state.stopped,
             "config": state.config, "data_files": state.data_files, "world_size": state.world_size,
             "examples_per_step": state.examples_per_step, "weights_only": state.weights_only}))
        write_manifest(target)
    final = checkpoint_dir(run_dir) / f"{STEP_PREFIX}{state.step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(target, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> None:
    """``manifest.json``: size and SHA-256 of every file of the checkpoint, by relative path."""
    files = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _checkpoint_files(directory)}
    (directory / MANIFEST).write_text(json.dumps(files, indent=1))


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError` naming the first file that is missing, cut short or altered since the
    checkpoint was written. Checkpoints from before manifests were kept are only checked for completeness."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE})",
                              fix="point train.resume at a checkpoints/step-N directory")
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        return
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{manifest_file} is corrupt (not JSON)", fix=RESUME_FIX) from None
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint file {file} is missing", fix=RESUME_FIX)
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"checkpoint file {file} has {size} bytes, {expected['bytes']} were written "
                                  "(truncated or overwritten)", fix=RESUME_FIX)
        if file_sha256(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint file {file} is corrupt (its SHA-256 differs from the one recorded "
                                  "when it was written)", fix=RESUME_FIX)


def _model_weights_file(model_dir: Path) -> Path:
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (model_dir / name).is_file():
            return model_dir / name
    raise CheckpointError(f"checkpoint model directory {model_dir} has no safetensors weights", fix=RESUME_FIX)


def load_model_weights(model: torch.nn.Module, model_dir: Path) -> None:
    """Load saved weights into an already-built model (full weights, or a LoRA adapter)."""
    file = _model_weights_file(model_dir)
    try:
        weights = load_file(file)
    except Exception as error:  # safetensors raises its own error types for a damaged header or body
        raise CheckpointError(f"cannot read the weights {file}: {error}", fix=RESUME_FIX) from None
    inner = unwrap(model)
    if hasattr(inner, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(inner, weights)
        return
    missing, unexpected = inner.load_state_dict(weights, strict=False)
    tied = set(getattr(inner, "_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint weights in {model_dir} do not fit the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                             fix="resume with the same model and LoRA settings that wrote the checkpoint")
    if getattr(inner.config, "tie_word_embeddings", False):
        inner.tie_weights()


def read_trainer_state(path: Path) -> TrainerState:
    file = Path(path) / STATE_FILE
    try:
        raw = json.loads(file.read_text())
        return TrainerState(step=raw["step"], data=raw["data"], seed=raw["seed"], stopped=raw.get("stopped", False),
                            config=raw.get("config"), data_files=raw.get("data_files"),
                            world_size=raw.get("world_size", 1), examples_per_step=raw.get("examples_per_step"),
                            weights_only=bool(raw.get("weights_only", False)))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{file} is corrupt ({type(error).__name__}: {error})", fix=RESUME_FIX) from None


def read_checkpoint(path: Path, model, optimizer, scheduler, rank: int,
                    check: Callable[[TrainerState], None] | None = None, precision=None) -> TrainerState:
    """Verify the checkpoint, let ``check`` refuse its trainer state, then restore model, optimizer, scheduler, the
    loss scaler of ``precision`` (when it scales) and this process's RNG state; return the trainer state. A
    weights-only checkpoint restores the model alone (``check`` decides whether that is enough)."""
    path = Path(path)
    verify_checkpoint(path)
    state = read_trainer_state(path)
    if check is not None:
        check(state)
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():  # more processes than wrote it: those have no random state to continue
        rng_file = path / "rng-rank0.pt"
    in_shards = (path / SHARDED).is_dir()  # the optimizer state is there too (unless weights_only)
    if in_shards:
        sharded.read_shards(path / SHARDED, unwrap(model), None if state.weights_only else optimizer, RESUME_FIX)
    else:
        load_model_weights(model, path / "model")
    if state.weights_only:
        return state
    files = ([] if in_shards else [("optimizer.pt", optimizer)]) + [("scheduler.pt", scheduler)]
    for name, target in files:
        try:
            target.load_state_dict(load_state_file(path / name, RESUME_FIX))
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path / name} does not fit this run's {name[:-3]} ({error})",
                                  fix=RESUME_FIX) from None
    if precision is not None and precision.state_dict():
        scaler_file = path / LOSS_SCALER_FILE
        if not scaler_file.is_file():
            raise CheckpointError(f"{path} has no loss-scaler state ({LOSS_SCALER_FILE}) for this fp16 run",
                                  fix=RESUME_FIX)
        precision.load_state_dict(load_state_file(scaler_file, RESUME_FIX))
    set_rng_state(load_state_file(rng_file, RESUME_FIX))
    return state
