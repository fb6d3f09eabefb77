"""The test tree's own layout, read from the source: what tests share lives in tests/helpers/ (no module under
tests/ imports a test module or conftest), the test folders mirror the package's, and the user's plain networks
load with torch alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "lightning_micro"
# folders of tests that are not a package floor: the shared helpers, and the docs' code blocks
NOT_A_FLOOR = {"helpers", "docs"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved, function-local ones included."""
    package = module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:  # relative: level 1 is this module's package, 2 the one above
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
            found.add(module)
            # `from tests import test_x` imports a module, not a name
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def is_helper(module: str) -> bool:
    return module == "tests.helpers" or module.startswith("tests.helpers.")


@pytest.mark.parametrize("path", sorted(TESTS.rglob("*.py")), ids=lambda p: str(p.relative_to(TESTS)))
def test_modules_under_tests_import_only_the_helpers_from_tests(path):
    imports = {m for m in imported_modules(path) if m == "tests" or m.startswith("tests.")}
    # `from tests.helpers import x` also lists `tests.helpers.x`; `from tests import helpers` lists `tests`
    bad = sorted(m for m in imports if not is_helper(m) and f"{m}.helpers" not in imports)
    assert bad == [], f"{path.relative_to(TESTS)} imports {bad}: move what it shares to tests/helpers/"


def test_test_folders_mirror_the_package():
    folders = {p.parent.name for p in TESTS.glob("*/test_*.py")} - NOT_A_FLOOR
    floors = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert folders <= floors, f"tests/{sorted(folders - floors)} name no lightning_micro/ subpackage"


def test_the_users_plain_networks_import_torch_alone():
    # an artifact whose spec names one of them loads where only torch and safetensors are installed
    imports = imported_modules(TESTS / "helpers" / "user_nets.py") - {"__future__", "__future__.annotations"}
    assert {m.split(".")[0] for m in imports} == {"torch"}, imports
