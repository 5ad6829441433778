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

# The pure layer: the core, the journal's decisions, the error tree, the transport contract
# and what kind of function the application handed over.
PURE = [
    *sorted((ROOT / "orderfsm" / "core").glob("*.py")),
    *sorted((ROOT / "orderfsm" / "journal").glob("*.py")),
    ROOT / "orderfsm" / "errors.py",
    ROOT / "orderfsm" / "interface.py",
    ROOT / "orderfsm" / "callables.py",
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
    "orderfsm.callables",
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


# --- no import cycles, lazy imports included ----------------------------------------

PACKAGES = ("orderfsm", "transports")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
}


def import_edges(name: str, path: Path) -> set[str]:
    """The modules of ours that ``name`` imports, at module level or inside a function.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module,
    else ``a.b``.  A package's ``__init__`` importing its parent is not implied:
    only what is written counts.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in MODULES else base)
    return {t for t in targets if t in MODULES and t != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_not_even_a_lazy_one() -> None:
    """Even lazily: a cycle means two modules that cannot be understood apart."""
    graph = {name: import_edges(name, path) for name, path in MODULES.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# --- optional extras stay optional -------------------------------------------------------

OPTIONAL = ("prometheus_client", "opentelemetry", "rich")


def test_importing_orderfsm_imports_no_optional_extra() -> None:
    """The extras (``orderfsm[prometheus]``, ``[otel]``, ``[cli]``) load only when asked for."""
    import subprocess

    code = (
        "import sys, orderfsm, orderfsm.metrics, orderfsm.cli, orderfsm.supervisor.tracker;"
        "orderfsm.cli.build_parser();"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(OPTIONAL)!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# --- web frameworks: only orderfsm.contrib imports them ------------------------------

FRAMEWORKS = {"django", "flask", "werkzeug", "fastapi", "starlette", "uvicorn", "gunicorn"}


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_only_the_contrib_modules_import_a_framework(name: str) -> None:
    used = {m.split(".")[0] for m in imported_modules(MODULES[name])} & FRAMEWORKS
    if name.startswith("orderfsm.contrib."):
        own = name.split(".")[2]
        assert used <= {own, "werkzeug" if own == "flask" else own}, f"{name} imports {used}"
    else:
        assert not used, f"{name} imports {used}"
