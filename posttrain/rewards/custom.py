"""User reward functions loaded from a Python file: ``path: my_rewards.py:score`` in a recipe.

The file is executed as a module of its own (``importlib.util.spec_from_file_location``), not imported
from ``sys.path``, so it needs no package around it. The named attribute must be a callable in one of the two
forms of :mod:`posttrain.rewards.base`: batched, ``(prompts, completions, **columns) -> list[float | None]`` as in
TRL, or per sample, ``(prompt, completion, record, **args) -> float``.

In a recipe, a relative ``FILE.py`` is relative to the recipe's folder: :func:`posttrain.config.load_config`
has made it absolute (:mod:`posttrain.recipe_paths`), so ``base_dir`` only matters for paths given in code.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from posttrain.config import PATH_FORM, split_reward_path
from posttrain.errors import ConfigError, first_line


def load_reward_function(path: str, base_dir: str | Path | None = None, where: str | None = None) -> Callable:
    """The callable ``FUNCTION`` defined in ``FILE.py`` (relative files are read from ``base_dir``).

    Raises a ConfigError, naming the file, the function and ``where`` (the recipe field), when the file is
    missing or fails to run, or when it defines no callable of that name.
    """
    try:
        file, function = split_reward_path(path)
    except ValueError as error:
        raise ConfigError(str(error), where=where, fix=f"write the path as {PATH_FORM}") from None
    file_path = Path(file).expanduser()
    if not file_path.is_absolute() and base_dir is not None:
        file_path = Path(base_dir) / file_path
    if not file_path.is_file():
        raise ConfigError(
            f"reward file {file_path} does not exist (from {path!r})",
            where=where,
            fix=f"give the path of a Python file (relative paths start at {Path(base_dir or '.').resolve()})",
        )
    module = _run_file(file_path, where)
    if not hasattr(module, function):
        defined = sorted(
            name
            for name, value in vars(module).items()
            if callable(value)
            and not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
        )
        raise ConfigError(
            f"{file_path} defines no {function!r}",
            where=where,
            fix=f"define `def {function}(prompt, completion, record): ...` in {file_path.name}, or name one of "
            f"its functions: {', '.join(defined) or 'it defines none'}",
        )
    value = getattr(module, function)
    if not callable(value):
        raise ConfigError(
            f"{file_path}:{function} is a {type(value).__name__}, not a function",
            where=where,
            fix=f"make {function} a function (prompt, completion, record) -> float",
        )
    return value


def _run_file(file_path: Path, where: str | None) -> ModuleType:
    """Execute the file as a fresh module, registered in ``sys.modules`` while and after it runs."""
    resolved = file_path.resolve()
    digest = hashlib.sha1(str(resolved).encode("utf-8")).hexdigest()[:10]
    module_name = f"posttrain_user_rewards.{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {file_path} as Python", where=where, fix="give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ConfigError(
            f"running reward file {file_path} failed: {type(error).__name__}: {first_line(error)}",
            where=where,
            fix="fix the error in the file (run it with `python FILE.py` to see the traceback)",
        ) from error
    return module
