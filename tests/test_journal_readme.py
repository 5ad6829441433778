"""The README's transactional-handler example, on PostgreSQL too (``test_readme`` runs it on
SQLite, as printed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support_postgres import postgres_server

ROOT = Path(__file__).resolve().parent.parent


def test_the_grants_example_runs_on_postgresql(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if "transactional=grant" in b]
    expected = [line.split("# ", 1)[1] for line in block.splitlines() if line.startswith("# ")]
    env = {**os.environ, "JOURNAL": postgres_server().url()}
    result = subprocess.run(
        [sys.executable, "-c", block],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == expected
    assert not (tmp_path / "game.sqlite3").exists()  # it did use PostgreSQL
