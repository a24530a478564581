"""Where the paths written in recipes, pipeline files and command-line overrides point.

The rule, applied once when a recipe is loaded (:func:`posttrain.config.load_config`), so that the
``config.yaml`` of a run holds absolute paths and works from any directory:

- a relative path written in a YAML file (a recipe, or a pipeline's ``recipe``, ``set`` and ``overrides``)
  is relative to that file's folder;
- a relative path given on the command line (``key.sub=value``, ``--grid``) is relative to the working
  directory;
- ``output_dir`` is always relative to the working directory (it says where runs go, not what they read);
  ``${output_dir}`` in any string value stands for it as an absolute path: a recipe that reads what an
  earlier run or pipeline stage wrote says ``${output_dir}/<run>/<file>``.

Fields that hold a path: ``data.train.path`` and ``data.eval.path``, each reward's ``path``
(``file.py:function``), and the fields that hold a model or template *name or path*: ``model.name``,
``distill.teacher_model``, ``train.resume``, ``rl.judge.template`` and a reward's ``args.model``,
``args.reward_model`` and ``args.template``. A value becomes an absolute path when it exists relative to its
base folder or clearly is a path (:func:`posttrain.hub.looks_like_path`: ``./x``, ``a/b/c``, ``data.jsonl``);
anything else is a name and stays as written (``smollm2-135m``, a hub id such as ``owner/name``, ``auto``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from posttrain.hub import looks_like_path

OUTPUT_DIR_PLACEHOLDER = "${output_dir}"
REWARD_LISTS = (("rl", "rewards", "functions", "*"), ("distill", "rewards", "functions", "*"))
NAME_OR_PATH_FIELDS = (
    ("model", "name"),
    ("distill", "teacher_model"),
    ("train", "resume"),
    ("rl", "judge", "template"),
    ("data", "train", "path"),
    ("data", "eval", "path"),
    *((*rewards, "args", key) for rewards in REWARD_LISTS for key in ("model", "reward_model", "template")),
)
REWARD_FILE_FIELDS = tuple((*rewards, "path") for rewards in REWARD_LISTS)


def resolve_name_or_path(value: str, base: Path) -> str:
    """``value`` as an absolute path when it is one (relative ones against ``base``): when it is absolute or
    starts with ``~``, exists under ``base``, or looks like a path; otherwise (a name) ``value`` unchanged.
    Values holding ``${output_dir}`` are left for :func:`substitute_output_dir`."""
    if OUTPUT_DIR_PLACEHOLDER in value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base / path
    if candidate.exists() or looks_like_path(value):
        return str(candidate.resolve())
    return value


def resolve_reward_file(value: str, base: Path) -> str:
    """A reward ``path`` ``FILE.py:FUNCTION`` with ``FILE.py`` made absolute (relative to ``base``)."""
    file, sep, function = value.rpartition(":")
    if not sep or OUTPUT_DIR_PLACEHOLDER in file:
        return value  # malformed: validation names the expected form
    path = Path(file).expanduser()
    return f"{path if path.is_absolute() else (base / path).resolve()}:{function}"


def resolve_recipe_paths(raw: dict, base: Path) -> dict:
    """A copy of the raw recipe mapping ``raw`` whose path fields (see the module docstring) are resolved
    against the folder ``base``; fields that are absent or not strings are left for validation."""
    for keys in NAME_OR_PATH_FIELDS:
        raw = _map_field(raw, keys, lambda value: resolve_name_or_path(value, base))
    for keys in REWARD_FILE_FIELDS:
        raw = _map_field(raw, keys, lambda value: resolve_reward_file(value, base))
    return raw


def substitute_output_dir(value: Any, output_dir: str) -> Any:
    """``value`` (strings inside dicts and lists too) with ``${output_dir}`` replaced by ``output_dir`` made
    absolute against the working directory."""
    if isinstance(value, str):
        return value.replace(OUTPUT_DIR_PLACEHOLDER, str(Path(output_dir).expanduser().resolve()))
    if isinstance(value, dict):
        return {key: substitute_output_dir(item, output_dir) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute_output_dir(item, output_dir) for item in value]
    return value


def _map_field(node: Any, keys: tuple[str, ...], change: Callable[[str], str]) -> Any:
    """``node`` with ``change`` applied to the string at the key path ``keys`` (``*``: every list item)."""
    if not keys:
        return change(node) if isinstance(node, str) else node
    head, rest = keys[0], keys[1:]
    if head == "*":
        return [_map_field(item, rest, change) for item in node] if isinstance(node, list) else node
    if isinstance(node, dict) and head in node:
        return {**node, head: _map_field(node[head], rest, change)}
    return node
