"""The floors of the package (docs/architecture.md), held by reading every module's imports with ``ast``.

An arrow only ever points down; a change that imports upward, closes a circle or hides one behind a
function-local import fails here instead of in a review.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_micro"
TRAINING_STACK = ("lightning", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf")

# floor -> the floors of the package it may import (itself included); read from the bottom up
MAY_IMPORT = {
    "core": {"core"},
    "models": {"models"},
    "data": {"data"},
    "artifact": {"artifact", "core", "models"},
    "report": {"report", "core"},
    "contract": {"contract", "artifact", "core"},
    "callbacks": {"callbacks", "contract", "artifact", "report", "core"},
    "run": {"run", "callbacks", "contract", "artifact", "report", "data", "models", "core"},
    "tools": {"tools", "run", "callbacks", "contract", "artifact", "report", "data", "models", "core"},
}
# floor -> third-party packages of the training stack it may not import
MAY_NOT_IMPORT = {
    "core": TRAINING_STACK,
    "models": TRAINING_STACK,
    "data": ("hydra", "omegaconf"),
    "artifact": TRAINING_STACK,
    "report": TRAINING_STACK,
    "contract": ("hydra", "omegaconf"),
    "callbacks": ("hydra", "omegaconf"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every import of the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path).split(".")
                package = package[: len(package) - node.level + (path.name == "__init__.py")]
                base = ".".join([*package, base] if base else package)
            # `from lightning_micro.core import transforms` imports the module lightning_micro.core.transforms
            submodules = [f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")]
            if len(submodules) < len(node.names):
                found.append((base, id(node) in top_level))
            found += [(name, id(node) in top_level) for name in submodules]
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
FLOORED = {name: path for name, path in MODULES.items() if floor_of(name) in MAY_IMPORT}


def package_imports(path: Path) -> list[tuple[str, bool]]:
    return [(name, top) for name, top in imports(path) if name.startswith("lightning_micro.") and name in MODULES
            or name == "lightning_micro"]


def test_every_module_has_a_floor():
    assert set(MODULES) - set(FLOORED) == {"lightning_micro"}, "a module outside the floors of docs/architecture.md"


@pytest.mark.parametrize("name", sorted(FLOORED))
def test_imports_point_down(name):
    floor = floor_of(name)
    upward = [target for target, _ in package_imports(MODULES[name])
              if target == "lightning_micro" or floor_of(target) not in MAY_IMPORT[floor]]
    assert not upward, f"{name} ({floor}/) imports {upward}; {floor}/ may import {sorted(MAY_IMPORT[floor])}"


@pytest.mark.parametrize("name", sorted(n for n in FLOORED if floor_of(n) in MAY_NOT_IMPORT))
def test_floor_keeps_out_the_training_stack(name):
    banned = MAY_NOT_IMPORT[floor_of(name)]
    found = [target for target, _ in imports(MODULES[name]) if target.split(".")[0] in banned]
    assert not found, f"{name} imports {found}, which its floor keeps out"


def test_callbacks_import_neither_zoo_nor_run():
    for name, path in FLOORED.items():
        if floor_of(name) == "callbacks":
            assert not [t for t, _ in package_imports(path) if floor_of(t) in ("models", "run", "tools", "data")], name


def test_no_function_local_import_of_the_package():
    local = [(name, target) for name, path in MODULES.items() for target, top in package_imports(path) if not top]
    assert not local, f"function-local imports of the package (a hidden circle, or a lazy name): {local}"


def test_no_import_circle():
    graph = {name: {t for t, _ in package_imports(path) if t != name} for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_root_imports_nothing_eagerly():
    """Importing lightning_micro is cheap: the root names its public objects as strings and loads them lazily."""
    out = subprocess.run([sys.executable, "-c", "import sys, lightning_micro; "
                          "print(sorted(m for m in sys.modules if m.startswith('lightning_micro') or m == 'torch'))"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['lightning_micro']"
