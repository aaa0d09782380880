"""The packages form layers: entry scripts and bench/ on top, then config_utils/ and engine/,
then modeling/, dataloaders/ and utils/. No package imports one above it (imports inside
functions included), so there are no import cycles between packages; modeling/ imports no
other package of the project at all."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("config_utils", "engine", "modeling", "dataloaders", "utils")
# What each package may import of the others.
ALLOWED = {
    "config_utils": {"modeling", "dataloaders", "utils"},
    "engine": {"modeling", "dataloaders", "utils"},
    "dataloaders": {"utils"},
    "utils": set(),
    "modeling": set(),
}


def imported_names(path: Path) -> set[str]:
    """Every module imported (`import a.b`) and every name imported from one (`from a.b
    import c` gives a.b.c), at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_one_above_it(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules that `path` imports when it is imported: its module-level import
    statements (not those inside functions), each resolved to the deepest project module."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_no_import_cycle_between_modules():
    paths = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = {name: top_level_imports(path, set(paths)) - {name} for name, path in paths.items()}
    state: dict[str, str] = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = trail[trail.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        state[name] = "open"
        for other in sorted(graph[name]):
            visit(other, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])
