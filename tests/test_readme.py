"""The README's promises: its test command is CI's, and its examples run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = [b.strip() for b in code_blocks("sh")]
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


EXAMPLES = code_blocks("python")


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_python_examples_run_and_print_what_they_say(block: str, tmp_path: Path) -> None:
    """Each example runs as a new user would run it, in an empty folder."""
    expected = [line.split("# ", 1)[1] for line in block.splitlines() if line.startswith("# ")]
    result = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    if expected:
        assert result.stdout.strip().splitlines() == expected


def test_readme_diagram_is_the_generated_one() -> None:
    from orderfsm.core.graph import mermaid

    assert mermaid() in "\n".join(code_blocks("mermaid"))
