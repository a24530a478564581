"""Weights & Biases beside ``metrics.jsonl`` and TensorBoard (``logging.report_to: [tensorboard, wandb]``).

Only the main process talks to W&B. :func:`wandb_run` is opened around the whole run (before the model loads, so a
missing ``wandb`` package is reported at once); :class:`~posttrain.trainers.run_log.RunLog` starts it once it knows
whether the run resumes, and sends it every record it appends to ``metrics.jsonl`` (the same keys at the same step,
evaluations included). When the run has written its report, :meth:`WandbRun.finish` uploads ``config.yaml``,
``metrics.jsonl`` and ``report.html`` as one artifact of type :data:`ARTIFACT_TYPE` and closes the W&B run; a run
that fails is closed with exit code 1 and no artifact.

The W&B run is the resolved config's run: its id is kept in ``RUN/wandb_run_id`` and a resumed run continues it
(``resume="allow"``); a fresh start (no checkpoint) opens a new one, as it starts ``metrics.jsonl`` over. W&B keeps
a step's first values, so after a kill the steps logged past the resumed checkpoint keep their old values there
(``metrics.jsonl`` has the new ones). Settings: ``logging.wandb_project`` (else ``WANDB_PROJECT``, else
``posttrain``), ``logging.wandb_entity`` (else ``WANDB_ENTITY``), ``logging.wandb_mode`` (else ``WANDB_MODE``,
else online). W&B's files go to ``WANDB_DIR`` when set, else into the run directory (``RUN/wandb/``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from posttrain.config import RunConfig
from posttrain.errors import ConfigError, RunStateError, first_line

ARTIFACT_TYPE = "run-report"
RUN_ID_FILE = "wandb_run_id"
REPORT_FILES = ("config.yaml", "metrics.jsonl", "report.html")
DEFAULT_PROJECT = "posttrain"


def import_wandb():
    """The ``wandb`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("logging.report_to names wandb, but the wandb package is not installed",
                          where="logging.report_to",
                          fix="pip install wandb (or pip install 'posttrain[wandb]'), or remove wandb from "
                              "logging.report_to") from None
    return wandb


def artifact_name(run_name: str) -> str:
    """The report artifact's name: the run's name with what W&B refuses in a name (``+``) as ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", run_name) + "-report"


class WandbRun:
    """The W&B run of one posttrain run (see the module docstring)."""

    def __init__(self, config: RunConfig):
        self.wandb = import_wandb()
        self.config = config
        self.run = None

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def start(self, resumed: bool) -> None:
        """Open the W&B run: the one recorded in the run directory when ``resumed``, else a new one."""
        id_file = self.run_dir / RUN_ID_FILE
        run_id = id_file.read_text(encoding="utf-8").strip() if resumed and id_file.is_file() else ""
        run_id = run_id or secrets.token_hex(4)  # W&B ids: 8 lowercase letters and digits, as its own
        logging = self.config.logging
        try:
            self.run = self.wandb.init(
                project=logging.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                entity=logging.wandb_entity, mode=logging.wandb_mode, id=run_id, resume="allow",
                name=self.config.name, config=self.config.model_dump(mode="json"),
                dir=None if os.environ.get("WANDB_DIR") else str(self.run_dir))
        except Exception as error:  # noqa: BLE001 - wandb's own errors (login, network, settings) have no common base
            raise RunStateError(f"Weights & Biases could not start the run: {first_line(error)}",
                                where="logging.report_to",
                                fix="log in (`wandb login` or WANDB_API_KEY), or log offline (logging.wandb_mode="
                                    "offline, then `wandb sync`), or remove wandb from logging.report_to") from error
        id_file.write_text(run_id + "\n", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        """The numbers of one ``metrics.jsonl`` record, at its step (a non-finite value is sent as it is)."""
        numbers = {key: value for key, value in metrics.items()
                   if isinstance(value, int | float) and not isinstance(value, bool)}
        if numbers:
            self.run.log(numbers, step=step)

    def finish(self) -> None:
        """Upload the run's report files as one artifact and close the W&B run (if it was started)."""
        if self.run is None:
            return
        artifact = self.wandb.Artifact(artifact_name(self.config.name), type=ARTIFACT_TYPE,
                                       description=f"config, metrics and report of posttrain run {self.config.name}")
        for name in REPORT_FILES:
            if (self.run_dir / name).is_file():
                artifact.add_file(str(self.run_dir / name), name=name)
        self.run.log_artifact(artifact)
        self.close()

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


@contextlib.contextmanager
def wandb_run(config: RunConfig, is_main: bool) -> Iterator[WandbRun | None]:
    """A :class:`WandbRun` on the main process when ``logging.report_to`` names wandb (else ``None``); a run
    still open when the block raises is closed as failed."""
    if not is_main or "wandb" not in config.logging.report_to:
        yield None
        return
    tracker = WandbRun(config)
    try:
        yield tracker
    except BaseException:
        tracker.close(exit_code=1)
        raise
    tracker.close()

