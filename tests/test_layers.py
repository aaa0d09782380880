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
    # Still to move out of modeling/: genotype file I/O (modeling/genotypes.py writes with
    # utils.checkpoint's atomic writes) and the error type (utils.errors). Nothing else of
    # utils/ may come in.
    "modeling": {"utils"},
}
MODELING_MAY_USE = {"utils.checkpoint.atomic_write", "utils.checkpoint.write_json",
                    "utils.errors.UserError"}


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
            if package == "modeling" and top == "utils" and name not in MODELING_MAY_USE:
                wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, "\n".join(wrong)
