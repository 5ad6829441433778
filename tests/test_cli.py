"""The command line as a new user meets it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from support_cli import run, watch_args

from transports.emulator import Emulator


def orderfsm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(*args, **(env or {}))


def test_demo_json_reaches_done_after_falling_back_to_polling() -> None:
    result = orderfsm("demo", "--json", "--step", "0.3")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    statuses = [(r["status"], r["source"]) for r in lines if "status" in r and "final" not in r]
    assert [s for s, _ in statuses] == ["new", "paid", "done"]
    failed = next(
        i
        for i, r in enumerate(lines)
        if r.get("transport") == "websocket" and r["health"] == "failed"
    )
    polling = next(i for i, r in enumerate(lines) if r.get("transport") == "polling")
    done = next(i for i, r in enumerate(lines) if r.get("status") == "done")
    assert failed < polling < done
    assert statuses[-1] == ("done", "polling")
    final = lines[-1]
    assert final["final"] is True and final["status"] == "done"
    assert final["details"]["items"][0]["sku"] == "com.example.sword"


def test_demo_runs_on_trio_too() -> None:
    result = orderfsm("demo", "--backend", "trio", "--step", "0.2")
    assert result.returncode == 0, result.stderr
    assert "DONE" in result.stdout and "via polling" in result.stdout


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=5, ping_interval=2.0) as emulator:
        yield emulator


def _watch(emu: Emulator, order_id: int, token: str, *extra: str) -> list[str]:
    return watch_args(emu, order_id, "--token-env", "ORDERFSM_TEST_TOKEN", *extra)


@pytest.mark.parametrize(
    ("final", "code"), [("done", 0), ("canceled", 3), ("expired", 4), (None, 5)]
)
def test_watch_exit_codes_and_json_lines(emu: Emulator, final: str | None, code: int) -> None:
    import anyio

    async def prepare() -> tuple[int, str]:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        if final is not None:
            steps = [(0.5, "paid"), (0.3, final)] if final != "expired" else [(0.5, final)]
            await emu.run_script(order_id, steps)
        return order_id, user.token

    order_id, token = anyio.run(prepare)
    result = orderfsm(
        *_watch(emu, order_id, token, "--timeout", "2" if final is None else "30"),
        "--expired-grace",  # an expired order is given no time for a late payment here
        "0.5",
        env={"ORDERFSM_TEST_TOKEN": token},
    )
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for line in lines[:-1]:  # status changes and the transports' health, as plain lines show
        assert set(line) in (
            {"order_id", "status", "source", "at"},
            {"order_id", "transport", "health", "reason", "at"},
        )
    assert any("transport" in line for line in lines)
    if final is not None:
        assert lines[-1]["final"] is True and lines[-1]["status"] == final
        assert lines[-1]["details"]["order_id"] == order_id
    else:
        assert lines[-1]["final"] is False and lines[-1]["error"] == "TrackingTimeout"
