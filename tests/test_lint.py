"""The type and lint promises of the README: mypy strict and ruff, clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )


def test_mypy_strict_is_clean() -> None:
    result = run("mypy", "orderfsm", "transports", "benchmarks")
    assert result.returncode == 0, result.stdout


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "orderfsm", "transports", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout
