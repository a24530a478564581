"""User-facing errors.

Every problem a user can fix (bad data, bad config, a missing model) is raised as a
:class:`PosttrainError`. Its message says what was wrong, where (``file:line:field`` when
there is a place), and how to fix it. The CLI prints it without a traceback and exits with 2.
"""

from __future__ import annotations

import contextlib
import errno
import shutil


class PosttrainError(Exception):
    """An error the user can act on; the message is complete on its own."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        parts = [f"{where}: {what}" if where else what]
        if fix:
            parts.append(f"How to fix: {fix}")
        super().__init__("\n".join(parts))


class ConfigError(PosttrainError):
    """A recipe or command-line override is invalid."""


class DataError(PosttrainError):
    """A dataset file or record is invalid."""


class ModelError(PosttrainError):
    """A model or tokenizer cannot be loaded or does not fit the request."""


def location(path: str | None = None, line: int | None = None, field: str | None = None) -> str:
    """Format a place as ``path:line:field``, leaving out the parts that are unknown."""
    return ":".join(str(part) for part in (path, line, field) if part is not None)


def check_choice(value: str, choices, what: str, where: str | None = None) -> None:
    """Raise :class:`ConfigError` ``unknown <what> <value>`` naming the valid ``choices`` unless ``value`` is one."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}", where=where, fix=f"use one of: {', '.join(choices)}")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library messages often run to a paragraph)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class UploadError(PosttrainError):
    """An upload (to the Hugging Face Hub) failed; what was prepared for it stays on disk for a retry."""


class CheckpointError(PosttrainError):
    """A checkpoint is incomplete, corrupt, or was written by a run with other settings."""


class RunStateError(PosttrainError):
    """A run cannot go on: its directory is in use, its training diverged, or its disk is full."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what writers that wrap the OS error in their own exception put in its message: Rust's io::Error (safetensors:
# "... No space left on device (os error 28)"), C++ writers (torch.save's "file write failed", or, when the
# last write of its zip archive comes up short, "unexpected pos N vs M")
DISK_FULL_MESSAGES = tuple(f"os error {code})" for code in DISK_FULL_ERRNOS) + (
    "No space left on device", "Disk quota exceeded")
WRITE_FAILED_MESSAGES = ("file write failed", "failed writing file", "unexpected pos")
NEARLY_FULL_BYTES = 64 * 2**20


def is_disk_full(error: BaseException, directory) -> bool:
    """Whether ``error``, raised while writing into ``directory``, means the disk (or quota) is full: an
    ``OSError`` with ``ENOSPC``/``EDQUOT``; an error of a writer that wraps one and keeps its text (safetensors'
    ``SafetensorError``); or a writer's bare "write failed" (``torch.save``) while less than 64 MiB is free."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno in DISK_FULL_ERRNOS
    message = str(error)
    if any(text in message for text in DISK_FULL_MESSAGES):
        return True
    if not any(text in message for text in WRITE_FAILED_MESSAGES):
        return False
    try:
        return shutil.disk_usage(directory).free < NEARLY_FULL_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def disk_space_checked(directory, writing: str):
    """Turn a full disk (:func:`is_disk_full`) while ``writing`` into ``directory`` into a :class:`RunStateError`
    that names the directory; every other error passes through unchanged."""
    try:
        yield
    except Exception as error:
        if isinstance(error, PosttrainError) or not is_disk_full(error, directory):
            raise
        raise RunStateError(f"no space left on {directory} while writing {writing}",
                            fix="free disk space (or point output_dir at a larger disk) and run the same command "
                                "again: it resumes from the last complete checkpoint") from error
