"""Imports point one way: core <- transports <- supervisor <- CLI.

Read from the source with ``ast`` so that a stray import fails here even if
nothing executes it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The pure layer: the core, the journal's decisions, the error tree and the transport contract.
PURE = [
    *sorted((ROOT / "orderfsm" / "core").glob("*.py")),
    *sorted((ROOT / "orderfsm" / "journal").glob("*.py")),
    ROOT / "orderfsm" / "errors.py",
    ROOT / "orderfsm" / "interface.py",
]
PURE_MAY_IMPORT = {"__future__", "attrs", "transitions", "orderfsm"}
PURE_STDLIB_FORBIDDEN = {
    "asyncio", "socket", "ssl", "selectors", "threading", "subprocess", "time", "datetime",
    "random", "urllib", "http", "sqlite3", "os", "io",
}  # fmt: skip
# What transports may use from the orderfsm package.
TRANSPORTS_MAY_IMPORT = {
    "orderfsm.core",
    "orderfsm.errors",
    "orderfsm.interface",
    "orderfsm.journal",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pure_core_imports_no_io_and_no_transports(path: Path) -> None:
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names:
            assert top not in PURE_STDLIB_FORBIDDEN, f"{path.name} imports {name}"
            continue
        assert top in PURE_MAY_IMPORT, f"{path.name} imports {name}"
        if top == "orderfsm":
            assert name.startswith(("orderfsm.core", "orderfsm.errors", "orderfsm.journal")), (
                f"{path.name} imports {name}"
            )


TRANSPORT_FILES = sorted((ROOT / "transports").rglob("*.py"))


@pytest.mark.parametrize("path", TRANSPORT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_transports_depend_only_on_the_core_and_the_contract(path: Path) -> None:
    for name in imported_modules(path):
        if name.split(".")[0] == "orderfsm":
            assert any(
                name == allowed or name.startswith(allowed + ".")
                for allowed in TRANSPORTS_MAY_IMPORT
            ), f"{path.relative_to(ROOT)} imports {name}"
