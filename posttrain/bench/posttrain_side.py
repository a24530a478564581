"""The posttrain side of every benchmark: the benchmark's run config, then the user's ``--set key.sub=value``
overrides (posttrain's side only, e.g. ``train.memory=lean``), checked in the parent before any worker starts."""

from __future__ import annotations

from posttrain.config import apply_overrides, parse_override, validate_config


def check_posttrain_set(overrides: list[str] | None) -> list[str]:
    """``--set key.sub=value`` options for posttrain's side, checked for form."""
    for text in overrides or []:
        parse_override(text)
    return list(overrides or [])


def with_overrides(config: dict, settings: dict) -> dict:
    """``config`` (a RunConfig as a dict) with the ``posttrain_set`` overrides of the benchmark ``settings``."""
    return apply_overrides(config, settings.get("posttrain_set") or [])


def check_run_config(config: dict) -> None:
    """Validate the posttrain side's run config: a :class:`~posttrain.errors.ConfigError` naming an unknown key or
    a bad value of ``--set`` before either side runs."""
    validate_config(config, "--set")
