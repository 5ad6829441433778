"""No secret in any log line, message or command line.

The demo and a watch run at DEBUG, with every transport and real signed (and
forged) webhooks; everything they print and log is scanned for the token,
the webhook secret, the ``Authorization`` values that went by, and anything
shaped like a JWT.  While the watch runs, its command line (what every local
user sees in ``ps``) is read from ``/proc``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support_cli import run, start, watch_args

from transports.emulator import Emulator

SECRET = "secrets-test-webhook-secret-4242"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
AUTHORIZATION = re.compile(r"(Bearer|Signature)\s+\S{8,}")


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=47, ping_interval=2.0, secret=SECRET) as emulator:
        yield emulator


def assert_no_secret(text: str, *secrets: str) -> None:
    assert text, "nothing was logged or printed: the scan would prove nothing"
    for secret in secrets:
        assert secret not in text, f"a secret leaked: {secret[:12]}..."
    assert not JWT.search(text), JWT.search(text)
    assert not AUTHORIZATION.search(text), AUTHORIZATION.search(text)


@pytest.mark.parametrize("mode", [["--json"], ["--backend", "trio"]])
def test_the_demo_at_debug_logs_no_token(mode: list[str]) -> None:
    result = run("--log-level", "debug", "demo", "--step", "0.2", *mode)
    assert result.returncode == 0, result.stderr
    assert "event=websocket.connecting" in result.stderr  # it did log at DEBUG
    assert "event=get_order.answer" in result.stderr
    assert_no_secret(result.stdout + result.stderr)


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_watch_with_webhooks_at_debug_leaks_nothing(emu: Emulator, backend: str) -> None:
    async def prepare() -> tuple[int, str]:
        user = await emu.create_user()
        return await emu.create_order(user), user.token

    order_id, token = anyio.run(prepare)
    args = watch_args(
        emu,
        order_id,
        "--token-env",
        "T",
        "--transports",
        "websocket,polling,webhook",
        "--webhook-secret-env",
        "S",
        "--backend",
        backend,
    )
    process = start(["--log-level", "debug", *args], T=token, S=SECRET)
    try:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["note"].removeprefix("webhooks: ")
        seen_by_ps = command_line(process.pid)

        async def pay_with_webhooks() -> None:
            await emu.configure_webhooks(url)
            await emu.send_webhook(order_id, "order_paid", bad_signature=True)  # forged
            await emu.set_status(order_id, "paid")  # a signed order_paid
            await emu.set_status(order_id, "done")

        anyio.run(pay_with_webhooks)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        anyio.run(emu.configure_webhooks, None)
    assert process.returncode == 0, err
    assert "watch" in seen_by_ps and "--token-env T" in seen_by_ps
    assert token not in seen_by_ps and SECRET not in seen_by_ps
    attempts = anyio.run(emu.webhook_deliveries, [order_id])
    assert {a.signature_valid for a in attempts} == {True, False}  # both went through
    assert {a.status for a in attempts} == {204, 400}
    assert_no_secret(out + err, token, SECRET, *(a.signature for a in attempts))
    assert "event=get_order.answer" in err and "event=order.settled" in err
