"""Loading a run configuration: a YAML recipe whose keys mirror :class:`posttrain.config.run.RunConfig`,
``key.sub=value`` overrides, validation errors that name each bad key, and the ``config.yaml`` a run writes.

Paths (:mod:`posttrain.recipe_paths` has the details): a relative path written in a recipe is relative to
the recipe's folder, one given as a command-line override to the working directory; ``output_dir`` is
always relative to the working directory, and ``${output_dir}`` in any value stands for it (how a recipe
names a file an earlier run wrote, e.g. ``${output_dir}/grm-s2j/synth/sft.jsonl``). A model, teacher or
template name stays a name unless it is an existing path. :func:`load_config` resolves every path once,
so the ``config.yaml`` a run writes holds absolute paths and loads the same from any directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from posttrain.config.run import RunConfig
from posttrain.errors import ConfigError, location
from posttrain.recipe_paths import resolve_recipe_paths, substitute_output_dir


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.max_steps=20"`` → ``(["train", "max_steps"], 20)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {text!r} is not of the form key.sub=value",
            fix="write e.g. train.max_steps=20 or sft.loss=profit",
        )
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict, overrides: list[str], base: Path | None = None) -> dict:
    """Set each ``key.sub=value`` in a nested dict, creating sections as needed. With ``base``, the path
    fields in the values are resolved against that folder (see :mod:`posttrain.recipe_paths`)."""
    for text in overrides:
        keys, value = parse_override(text)
        if base is not None:
            value = _resolved_override(keys, value, base)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(keys)}: {key} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return raw


def _resolved_override(keys: list[str], value: Any, base: Path) -> Any:
    """An override's value with its path fields resolved against ``base``, as if it stood in a recipe there."""
    nested = value
    for key in reversed(keys):
        nested = {key: nested}
    nested = resolve_recipe_paths(nested, base)
    for key in keys:
        nested = nested[key]
    return nested


def _describe_validation_error(error: ValidationError, source: str) -> ConfigError:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{location(source, None, field)}: unknown key")
        else:
            got = f" (got {item.get('input')!r})" if item["loc"] else ""
            lines.append(f"{location(source, None, field)}: {item['msg']}{got}")
    return ConfigError(
        "invalid configuration:\n  " + "\n  ".join(lines),
        fix="correct or remove the keys named above; `posttrain train --help` lists the sections",
    )


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, overrides_dir: str | Path | None = None
) -> RunConfig:
    """Read a YAML recipe (or start from defaults), apply overrides and validate.

    Paths are resolved as the module docstring says: those in the recipe against its folder, those in
    ``overrides`` against ``overrides_dir`` (default: the working directory; a pipeline passes its own
    folder for the overrides written in it), then ``${output_dir}`` is replaced everywhere.
    """
    raw: dict = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        path = Path(path)
        raw = resolve_recipe_paths(_read_recipe(path), path.resolve().parent)
    raw = apply_overrides(raw, overrides or [], base=Path(overrides_dir or Path.cwd()).resolve())
    raw = substitute_output_dir(raw, str(raw.get("output_dir", RunConfig.model_fields["output_dir"].default)))
    return validate_config(raw, source)


def validate_config(raw: dict, source: str) -> RunConfig:
    """``raw`` validated as a :class:`RunConfig`; a :class:`ConfigError` naming each bad key (at ``source``)."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise _describe_validation_error(exc, source) from None


def _read_recipe(path: Path) -> dict:
    """The mapping a recipe file holds; a ConfigError when it is missing, not YAML, or not a mapping."""
    if not path.is_file():
        raise ConfigError(
            f"recipe {path} does not exist",
            fix="pass the path of a YAML recipe, e.g. posttrain/recipes/quickstart.yaml",
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = location(str(path), mark.line + 1 if mark else None)
        raise ConfigError(f"recipe is not valid YAML: {exc}", where=where) from None
    if not isinstance(raw, dict):
        raise ConfigError("a recipe must be a mapping of sections", where=str(path))
    return raw


def dump_config(config: RunConfig) -> str:
    """The resolved configuration as YAML (what ``config.yaml`` in a run directory holds)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
