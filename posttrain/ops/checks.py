"""Argument checks shared by the ops: plain :class:`ValueError` about arguments, never config key names
(config validation owns those)."""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(value: str, choices: Iterable[str], what: str) -> None:
    """Raise ``ValueError("unknown <what> <value>; use one of: ...")`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; use one of: {', '.join(choices)}")
