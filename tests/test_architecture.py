"""The structure the code keeps, read from its own imports and definitions (nothing is run):

- layers point one way: ``broden.adapters`` imports nothing else of ours, the rest of
  ``broden`` does not import ``broden.dissect``;
- no library module imports a command-line module (``cli``, ``*.cli.*``, ``__main__``):
  the commands are found through entry points;
- no import cycles between modules (imports inside functions count too);
- nothing imports the repository's folders by their folder names (``adapters``,
  ``dissect``, ``data_manifests``): installed, they are ``broden.adapters``, ...;
- no module over 700 lines, no library function with more than 12 parameters (command
  functions are exempt: each option is a parameter there).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

#: repository folder → installed package
FOLDERS = {"broden": "broden", "adapters": "broden.adapters", "dissect": "broden.dissect"}
MAX_LINES = 700
MAX_PARAMETERS = 12


def modules() -> dict[str, Path]:
    """Installed module name → file, for every module of the three packages."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def is_cli(module: str) -> bool:
    last = module.rsplit(".", 1)[-1]
    return last in ("cli", "__main__") or ".cli." in module + "."


def layer(module: str) -> str:
    for package in ("broden.adapters", "broden.dissect"):
        if module == package or module.startswith(package + "."):
            return package
    return "broden"


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported module or name, line) of every import in ``path``, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def project_target(name: str) -> str | None:
    """The project module an import refers to (the longest known prefix), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def edges() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {m: {} for m in MODULES}
    for module, path in MODULES.items():
        for name, line in imported(module, path):
            target = project_target(name)
            if target is not None and target != module and target not in graph[module]:
                graph[module][target] = line
    return graph


GRAPH = edges()


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(REPO)}:{line}"


def test_layers_point_one_way() -> None:
    wrong = []
    order = {"broden.adapters": 0, "broden": 1, "broden.dissect": 2}
    for module, targets in GRAPH.items():
        for target, line in targets.items():
            if order[layer(target)] > order[layer(module)]:
                wrong.append(f"{where(module, line)}: {module} imports the higher layer {target}")
    assert wrong == []


def test_no_library_module_imports_a_cli_module() -> None:
    wrong = [
        f"{where(module, line)}: {module} imports {target}"
        for module, targets in GRAPH.items()
        if not is_cli(module)
        for target, line in targets.items()
        if is_cli(target)
    ]
    assert wrong == []


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert cycles == []


@pytest.mark.parametrize("folder", ["adapters", "dissect", "data_manifests"])
def test_nothing_imports_a_folder_by_its_folder_name(folder: str) -> None:
    files = [p for d in ("broden", "adapters", "dissect", "tests", "bench", "examples")
             for p in sorted((REPO / d).rglob("*.py"))]  # fmt: skip
    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            if any(n == folder or n.startswith(folder + ".") for n in names):
                wrong.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert wrong == [], f"import broden.{folder} instead of {folder}"


def test_modules_are_short_and_functions_take_a_settings_object() -> None:
    long, wide = [], []
    for module, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            long.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        if is_cli(module):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                n -= 1 if a.args and a.args[0].arg in ("self", "cls") else 0
                if n > MAX_PARAMETERS:
                    wide.append(f"{where(module, node.lineno)}: {node.name} takes {n}")
    assert long == [] and wide == []


def test_the_graph_sees_the_real_imports() -> None:
    """The checks above cannot pass vacuously: known edges are found."""
    assert "broden.adapters.errors" in GRAPH["broden.errors"]
    assert "broden.store" in GRAPH["broden.dissect.data"]
    assert "broden.cli.common" in GRAPH["broden.dissect.cli"]
    assert is_cli("broden.cli") and is_cli("broden.dissect.experiments.cli")
    assert not is_cli("broden.dissect.report.page")
