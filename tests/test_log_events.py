"""The README tells operators to alert on each log record's ``event`` name, not on its
wording: every record the library logs has one, and every name is in the README's
Logs table.  Read from the source (no record is missed for want of a fault that
provokes it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def logging_calls() -> Iterator[tuple[str, ast.Call]]:
    for package in ("orderfsm", "transports"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS
                    and isinstance(node.func.value, ast.Name)
                    and "log" in node.func.value.id
                ):
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", node


def event_of(call: ast.Call) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
            for key, value in zip(keyword.value.keys, keyword.value.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "event":
                    return value
    return None


def test_every_log_record_names_its_event() -> None:
    unnamed = [where for where, call in logging_calls() if event_of(call) is None]
    assert unnamed == []


def test_every_event_name_is_in_the_readme_logs_table() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Logs")
    table = readme[start : readme.index("\n#", start + len("### Logs"))]
    names = set()
    for _, call in logging_calls():
        event = event_of(call)
        if isinstance(event, ast.Constant):
            names.add(event.value)
    assert len(names) > 30  # the scan found the library's records
    assert sorted(name for name in names if f"`{name}`" not in table) == []
