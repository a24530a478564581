"""The package layering (docs/design.md, "Layers"): imports between posttrain's packages point down only, so there
is no import cycle, counting the imports written inside functions; and no posttrain import hides inside a function
outside the CLI.

The graph is built from the source with ``ast``: every ``import``/``from`` statement anywhere in a module (relative
imports resolved) and every ``importlib.import_module("posttrain...")`` call. A node is a first-level subpackage or
top-level module of posttrain (``posttrain.judges``, ``posttrain.cli``); imports inside one node are not edges.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import posttrain

ROOT = Path(posttrain.__file__).parent

# Top to bottom: a node may import the nodes of lower layers only (not those of its own layer).
LAYERS = (
    ("cli",),
    ("cli_bench",),  # the `posttrain bench` sub-commands, registered by cli
    ("cli_eval",),  # the `posttrain eval` sub-commands (and options the others share), registered by cli
    ("bench",),  # `posttrain bench`: runs posttrain's trainers against a peer library
    ("trainers",),  # the loop, the methods, sweeps and pipelines
    ("rewards", "evals"),  # thin users of judges and grading; neither imports the other
    ("judges",),  # everything about judging
    ("grading", "rollout"),  # answer grading; generation engines (judges and evals generate)
    ("models", "report"),
    ("data", "ops", "config", "run_files"),  # run_files: reading a run directory's metrics and config
    ("recipe_paths",),  # how a recipe's paths resolve (used by config and pipelines)
    ("hub",),  # hub names: reachability and the local cache (used by data and models)
    ("errors",),
)
RANK = {f"posttrain.{name}": rank for rank, names in enumerate(LAYERS) for name in names}

# Where a posttrain import may stay inside a function: the CLI defers every command's imports for start-up speed.
DEFERRING_MODULES = {"posttrain/cli.py", "posttrain/cli_bench.py", "posttrain/cli_eval.py"}
# Any other deferred posttrain import must be listed here as "path:line", with a comment saying why.
ALLOWED_DEFERRED: set[str] = set()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. posttrain.judges.scorers
    target: str  # the imported module or name, e.g. posttrain.data.tasks
    where: str  # path:line, relative to the repository
    in_function: bool

    @property
    def edge(self) -> tuple[str, str]:
        return node(self.source), node(self.target)


def node(module: str) -> str:
    """``posttrain.X`` for any module at or below ``posttrain.X``; ``posttrain`` for the package itself."""
    return ".".join(module.split(".")[:2])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(statement: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(statement, ast.Import):
        return [alias.name for alias in statement.names]
    if isinstance(statement, ast.ImportFrom):
        if statement.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - statement.level + 1])
            prefix = f"{base}.{statement.module}" if statement.module else base
        else:
            prefix = statement.module or ""
        if prefix == "posttrain" or not statement.module:  # `from posttrain import errors`, `from . import x`
            return [f"{prefix}.{alias.name}" for alias in statement.names]
        return [prefix]
    if (isinstance(statement, ast.Call) and isinstance(statement.func, ast.Attribute | ast.Name)
            and getattr(statement.func, "attr", getattr(statement.func, "id", None)) in ("import_module", "__import__")
            and statement.args and isinstance(statement.args[0], ast.Constant)
            and isinstance(statement.args[0].value, str)):
        return [statement.args[0].value]
    return []


def _module_imports(path: Path) -> list[Import]:
    module, is_package = module_name(path), path.name == "__init__.py"
    where = path.relative_to(ROOT.parent).as_posix()
    found = []
    pending = [(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False)]
    while pending:
        tree, in_function = pending.pop()
        for child in ast.iter_child_nodes(tree):
            for target in _targets(child, module, is_package):
                if target == "posttrain" or target.startswith("posttrain."):
                    found.append(Import(module, target, f"{where}:{child.lineno}", in_function))
            pending.append((child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)))
    return found


def posttrain_imports() -> list[Import]:
    """Every import of a posttrain module in posttrain's source, with where it stands."""
    return [item for path in sorted(ROOT.rglob("*.py")) for item in _module_imports(path)]


def package_graph(imports: list[Import]) -> dict[str, dict[str, list[str]]]:
    """``graph[a][b]``: where node ``a`` imports node ``b``."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for item in imports:
        source, target = item.edge
        if source != target:
            graph[source][target].append(item.where)
    return graph


def find_cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of the graph as its nodes, first node repeated at the end; None when it has none."""
    state: dict[str, str] = {}  # visiting | done
    path: list[str] = []

    def visit(current: str) -> list[str] | None:
        state[current] = "visiting"
        path.append(current)
        for following in sorted(graph.get(current, {})):
            if state.get(following) == "visiting":
                return [*path[path.index(following):], following]
            if following not in state and (cycle := visit(following)):
                return cycle
        path.pop()
        state[current] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_graph_builder_sees_imports_inside_functions_and_relative_imports():
    graph = package_graph(posttrain_imports())
    assert "posttrain.trainers" in graph["posttrain.cli"]  # cli imports every command inside its function
    assert "posttrain.errors" in graph["posttrain.data"]  # data/tasks/__init__.py: from posttrain.errors import ...
    def targets(source: str, module: str, is_package: bool = False) -> list[str]:
        statement = ast.parse(source).body[0]
        return _targets(getattr(statement, "value", statement), module, is_package)

    assert targets("from ..readers import write_jsonl", "posttrain.data.tasks.judge_pairs") == ["posttrain.data.readers"]
    assert targets("from . import arithmetic", "posttrain.data.tasks", True) == ["posttrain.data.tasks.arithmetic"]
    assert targets("from posttrain import errors", "posttrain.cli") == ["posttrain.errors"]
    assert targets('importlib.import_module("posttrain.cli")', "posttrain.data") == ["posttrain.cli"]
    cycle = find_cycle({"a": {"b": ["x:1"]}, "b": {"c": ["y:2"]}, "c": {"a": ["z:3"]}})
    assert cycle == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": ["x:1"]}, "b": {}}) is None


def test_no_import_cycle_between_packages():
    graph = package_graph(posttrain_imports())
    cycle = find_cycle(graph)
    if cycle:
        hops = [f"  {a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("import cycle between posttrain's packages:\n" + "\n".join(hops))


def test_every_package_has_a_layer():
    nodes = {node(module_name(path)) for path in ROOT.rglob("*.py")} - {"posttrain"}
    missing = sorted(nodes - set(RANK))
    assert not missing, f"packages missing from LAYERS in tests/test_layers.py and docs/design.md: {missing}"


def test_imports_point_down_only():
    upward = []
    for item in posttrain_imports():
        source, target = item.edge
        if source != target and target != "posttrain" and not RANK[source] < RANK[target]:
            upward.append(f"  {item.where}: {source} imports {item.target} (layer {RANK[target]}, "
                          f"not below its own layer {RANK[source]})")
    assert not upward, "imports that do not point down the layers (docs/design.md):\n" + "\n".join(upward)


def test_no_posttrain_import_inside_a_function_outside_the_cli():
    deferred = [item.where for item in posttrain_imports()
                if item.in_function and item.where.split(":")[0] not in DEFERRING_MODULES
                and item.where not in ALLOWED_DEFERRED]
    assert not deferred, ("posttrain imports inside functions (move them to the module's top; a function-local import "
                          "may only defer an optional or heavy third-party dependency):\n  " + "\n  ".join(deferred))
