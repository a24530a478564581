"""Where a run resumes from, and whether it may.

* **Which checkpoint.** ``train.resume=auto`` takes the newest checkpoint that verifies (see
  :func:`posttrain.trainers.checkpoint.verify_checkpoint`); a damaged one is skipped with a warning and the
  one before it is tried. An explicit ``train.resume=PATH`` is used as it is or refused.
* **Same optimization.** Every checkpoint records the resolved config that wrote it. Resuming with any
  other value of a setting that defines the optimization (learning rate, loss, method, data, model, …)
  is a :class:`ConfigError` listing each changed key with its old and new value. The settings in
  :data:`RESUMABLE` only change what is logged, evaluated or kept, how long the run lasts, or how the
  same gradient is computed, and may change; each start of a run is appended to ``history.jsonl`` with
  what changed, so ``config.yaml`` (the settings now in force) never hides what ran before.
  ``train.precision`` is not among them: another autocast dtype computes other gradients, and an fp16 run's
  loss scale continues from its checkpoint. The sections the run's method never reads
  (:func:`posttrain.config.unused_sections`: another method's section, ``rollout:`` off-policy) are not compared:
  a new default there does not change this run. A setting added after a checkpoint was written compares as the
  value that reproduces what the older version did: its default (a new setting's default keeps the old
  behaviour), or the value :data:`ADDED_DEFAULTS` names where the default changed behaviour.
* **Same data.** The training data files' fingerprints are recorded too; a file that changed is a
  :class:`DataError` naming it and how it changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from posttrain.config import RunConfig, unused_sections
from posttrain.data.fingerprint import describe_change, path_fingerprint
from posttrain.errors import CheckpointError, ConfigError, DataError
from posttrain.trainers import checkpoint as ckpt

HISTORY_FILE = "history.jsonl"

# Settings that may differ between a checkpoint and the run that resumes it: a key, or a section and
# everything under it. Everything else must be equal.
RESUMABLE = (
    "name", "output_dir", "model.device",
    "train.max_steps", "train.epochs", "train.log_every", "train.save_every", "train.save_final",
    "train.final_checkpoint", "train.keep_checkpoints", "train.eval_every", "train.eval_at_start", "train.resume",
    "train.max_nonfinite_steps",
    "train.chunk_size", "train.micro_batch_tokens", "train.gradient_checkpointing",  # the same gradient, computed otherwise
    "train.memory",  # only sets other keys, which are compared themselves (optim.update_in_backward must not change)
    "rl.rewards.timeout",
    "eval", "data.eval",
    "dist",  # how the processes share the work; a sharded checkpoint loads under any (check_processes)
    "logging",  # where the metrics also go
)
# how a step's examples are cut into passes per process: resumable when the checkpoint recorded the step's global
# number of examples, which check_processes then holds equal (e.g. half the processes with twice the batch_size)
SAME_GLOBAL_BATCH = ("train.batch_size", "train.grad_accum")


# Settings added after checkpoints of earlier versions were written, with the value that does what those
# versions did: a checkpoint whose recorded config lacks the key ran with that value.
ADDED_DEFAULTS = {"train.precision": "auto", "optim.update_in_backward": False}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_resumable(key: str, global_batch_checked: bool = False) -> bool:
    allowed_keys = RESUMABLE + (SAME_GLOBAL_BATCH if global_batch_checked else ())
    return any(key == allowed or key.startswith(allowed + ".") for allowed in allowed_keys)


def setting_defaults() -> dict[str, Any]:
    """Every setting's default as a dotted key, the settings of sections that are off by default included."""
    defaults: dict[str, Any] = {}
    for name, field in RunConfig.model_fields.items():
        for kind in (field.annotation, *get_args(field.annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                with contextlib.suppress(ValidationError):
                    defaults.update(flatten(kind().model_dump(mode="json"), name))
    return defaults


def added_settings(old: dict, new: dict) -> dict[str, Any]:
    """The settings of ``new`` that ``old`` (a checkpoint's recorded config) does not have, inside sections it does
    have, at the value the older version ran with: :data:`ADDED_DEFAULTS`, else the setting's default."""
    recorded = flatten(old)
    defaults = {**setting_defaults(), **ADDED_DEFAULTS}
    added = {}
    for key in flatten(new).keys() - recorded.keys():
        parts = key.split(".")
        if key in defaults and not any(".".join(parts[:i]) in recorded for i in range(1, len(parts))):
            added[key] = defaults[key]
    return added


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs, as ``(old, new)`` (a key missing on one side is ``None`` there; a
    setting added since ``old`` was written counts as :func:`added_settings` gives it)."""
    before, after = {**ADDED_DEFAULTS, **added_settings(old, new), **flatten(old)}, {**ADDED_DEFAULTS, **flatten(new)}
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)}


def check_config(old: dict | None, new: dict, checkpoint: Path,
                 global_batch_checked: bool = False) -> dict[str, tuple[Any, Any]]:
    """The allowed changes from ``old`` to ``new``; a :class:`ConfigError` listing the others if there are any.
    ``global_batch_checked``: :func:`check_processes` held the step's global examples equal."""
    if old is None:  # written before configs were recorded: nothing to compare
        return {}
    changes = config_changes(old, new)
    idle = unused_sections(new.get("method", "sft")) if old.get("method") == new.get("method") else ()
    refused = {key: change for key, change in changes.items()
               if not is_resumable(key, global_batch_checked) and key.split(".")[0] not in idle}
    if refused:
        lines = "\n  ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(
            f"the settings differ from those of the checkpoint {checkpoint} in what defines the optimization:\n  "
            f"{lines}",
            fix="resume with the original settings (they are in the checkpoint's trainer_state.json), start a new "
                "run with another name (name=...), or start this one over (train.resume=never)")
    return changes


def check_data(recorded: dict | None, checkpoint: Path) -> None:
    """A :class:`DataError` if a training data file differs from its fingerprint in the checkpoint."""
    for path, before in (recorded or {}).items():
        now = path_fingerprint(path)
        if now != before:
            raise DataError(
                f"the training data changed since checkpoint {checkpoint} was written: "
                f"{describe_change(path, before, now)}",
                fix="restore the data the run started with, or train on the new data as a new run (name=...) "
                    "or from scratch (train.resume=never)")


def check_processes(state: ckpt.TrainerState, checkpoint: Path, world_size: int, examples_per_step: int,
                    sharded: bool) -> None:
    """A :class:`ConfigError` when the checkpoint cannot continue on this launch: another global batch (examples a
    step over all processes), or a replicated checkpoint loaded into a sharded (FSDP) model. A sharded checkpoint
    loads on any number of processes, one included (re-sharded); the random streams then differ from a run that
    kept its processes, so only a resume on the same number continues exactly."""
    recorded = state.examples_per_step
    if recorded is not None and recorded != examples_per_step:
        raise ConfigError(
            f"the checkpoint {checkpoint} was written by {state.world_size} process(es) taking {recorded} examples a "
            f"step; this launch of {world_size} process(es) takes {examples_per_step}",
            fix=f"launch {state.world_size} process(es), or change train.batch_size / train.grad_accum so that "
                f"batch_size × grad_accum × processes = {recorded}")
    if sharded and not (Path(checkpoint) / ckpt.SHARDED).is_dir():
        raise ConfigError(
            f"the checkpoint {checkpoint} holds whole weights (written by {state.world_size} process(es) without "
            "FSDP) and this run shards the model (dist.strategy=fsdp)",
            fix="resume it with dist.strategy=ddp (or one process), or start a sharded run from its weights: "
                "model.name=CHECKPOINT/model")


def check_weights_only(state: ckpt.TrainerState, checkpoint: Path, total_steps: int) -> None:
    """A :class:`ConfigError` when a weights-only checkpoint (``train.final_checkpoint=weights``) would have to
    continue training: it has no optimizer state to continue from. At the run's end there is nothing to continue."""
    if state.weights_only and not state.stopped and state.step < total_steps:
        raise ConfigError(
            f"the checkpoint {checkpoint} holds only the weights (train.final_checkpoint=weights, written when the "
            f"run ended at step {state.step}); continuing to step {total_steps} needs the optimizer state it left out",
            fix=f"start a new run from its weights (model.name={Path(checkpoint) / 'model'} name=NEW_NAME), or train "
                "this one again from the start (train.resume=never)")


def data_fingerprints(paths: list[str]) -> dict[str, dict]:
    """Fingerprints of the local data paths among ``paths`` (hub names and tasks have none)."""
    found = {str(Path(p).expanduser().resolve()): path_fingerprint(p) for p in paths}
    return {path: fingerprint for path, fingerprint in found.items() if fingerprint is not None}


def resume_candidates(choice: str, run_dir: Path) -> list[Path]:
    """Checkpoints to try, best first: none (``never``), the run's own newest first (``auto``), or one path."""
    if choice == "never":
        return []
    if choice == "auto":
        return list(reversed(ckpt.list_checkpoints(run_dir)))
    path = Path(choice)
    if not path.is_dir():
        raise ConfigError(f"train.resume={choice!r} is not a checkpoint directory",
                          fix="use auto, never, or the path of a runs/NAME/checkpoints/step-N directory")
    return [path]


def restore_newest(candidates: list[Path], restore: Callable[[Path], ckpt.TrainerState],
                   warn: Callable[[str], None]) -> tuple[Path, ckpt.TrainerState] | None:
    """Restore the first candidate that loads; a damaged one is skipped with a warning while older ones remain.

    ``restore`` loads one checkpoint into the run (raising :class:`CheckpointError` when it is damaged)."""
    for index, path in enumerate(candidates):
        try:
            return path, restore(path)
        except CheckpointError as error:
            if index == len(candidates) - 1:
                raise
            warn(f"warning: skipping damaged checkpoint {path} ({error.what}); trying {candidates[index + 1]}")
    return None


def append_history(run_dir: Path, step: int, checkpoint: Path | None, changes: dict[str, tuple[Any, Any]]) -> None:
    """One line per start of the run: when, which process, from which checkpoint, and what settings changed."""
    record = {"time": round(time.time(), 3), "pid": os.getpid(), "event": "resume" if checkpoint else "start",
              "step": step, "checkpoint": str(checkpoint) if checkpoint else None,
              "changes": {key: {"old": old, "new": new} for key, (old, new) in changes.items()}}
    _append_event(run_dir, record)


def append_finish(run_dir: Path, step: int) -> None:
    """The line that says the run reached its end at ``step`` (its last evaluation and save done)."""
    _append_event(run_dir, {"time": round(time.time(), 3), "pid": os.getpid(), "event": "finish", "step": step})


def _append_event(run_dir: Path, record: dict) -> None:
    with (Path(run_dir) / HISTORY_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def finished(run_dir: Path) -> bool:
    """Whether the run's last start reached its end: ``history.jsonl``'s last readable line is a ``finish``."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return False
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            events.append(json.loads(line))
    return bool(events) and isinstance(events[-1], dict) and events[-1].get("event") == "finish"
