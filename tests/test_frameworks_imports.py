"""Importing orderfsm (and its transports, the CLI, the blocking tracker) never imports a web
framework: only ``orderfsm.contrib`` does, when the application asks for it."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("django", "flask", "werkzeug", "fastapi", "starlette", "uvicorn", "gunicorn")


def test_importing_orderfsm_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import orderfsm, orderfsm.blocking, orderfsm.cli, orderfsm.contrib\n"
        "import transports.webhook, transports.journal, transports.webhook.sync\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_each_fit_imports_its_own_framework() -> None:
    code = (
        "import sys\n"
        "import orderfsm.contrib.flask\n"
        "print(sorted(m for m in ('django', 'fastapi') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
