"""The packages form layers: entry scripts and bench/ on top, then config_utils/ and engine/,
then modeling/, dataloaders/ and utils/. No package imports one above it (imports inside
functions included), so there are no import cycles between packages."""
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
    # Still to move out of modeling/: checkpoint and genotype file I/O and the error type
    # (utils.checkpoint, utils.errors). Nothing else of utils/ may come in.
    "modeling": {"utils"},
}
MODELING_MAY_USE = {"utils.checkpoint", "utils.errors"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_one_above_it(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
            if package == "modeling" and top == "utils" and not any(
                    module == m or module.startswith(m + ".") for m in MODELING_MAY_USE):
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert not wrong, "\n".join(wrong)
