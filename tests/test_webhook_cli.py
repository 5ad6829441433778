"""``orderfsm webhook-server`` as a subprocess, fed by the emulator's webhook sender."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from support_journal import on_databases, url_for

from orderfsm.core import Status
from transports.emulator import Emulator, WebhookAttempt
from transports.http import open_http_client
from transports.journal import open_journal
from transports.journal.order_log import OrderLog
from transports.webhook import authorization_header

SECRET = "cli-secret"


@asynccontextmanager
async def webhook_server(
    store: str | Path, *options: str
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream, str]]:
    """The running command, its stdout and the URL it printed; killed if a test fails."""
    command = [sys.executable, "-m", "orderfsm", "webhook-server", "--secret", SECRET]
    command += ["--port", "0", "--store", str(store), *options]
    process = await anyio.open_process(command, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        reader = BufferedByteReceiveStream(process.stdout)
        yield process, reader, await read_line(reader)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def read_line(reader: BufferedByteReceiveStream) -> str:
    with anyio.fail_after(20):
        return (await reader.receive_until(b"\n", 1 << 20)).decode()


async def read_rest(reader: BufferedByteReceiveStream) -> bytes:
    rest = b""
    with anyio.fail_after(10):
        while True:
            try:
                rest += await reader.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return rest


async def stop(process: Process) -> int:
    process.send_signal(signal.SIGTERM)
    with anyio.fail_after(10):
        return await process.wait()


async def answered_attempts(emu: Emulator, count: int) -> list[WebhookAttempt]:
    with anyio.fail_after(10):
        while True:
            attempts = [a for a in await emu.webhook_deliveries() if a.status is not None]
            if len(attempts) >= count:
                return attempts
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_the_server_prints_its_url_then_one_line_per_accepted_notification(
    tmp_path: Path,
) -> None:
    store = tmp_path / "seen.sqlite"
    async with Emulator(secret=SECRET, webhook_retry_intervals=[0.05]) as emu:
        user = await emu.create_user()
        order_id = await emu.create_order(user)
        await emu.set_status(order_id, "paid", webhook=False)

        async with webhook_server(store) as (process, reader, url):
            assert url.startswith("http://127.0.0.1:") and url.endswith("/webhook")
            await emu.configure_webhooks(url)
            await emu.send_webhook(order_id, copies=2)
            line = json.loads(await read_line(reader))
            assert line["notification_type"] == "order_paid"
            assert line["order_id"] == order_id
            assert line["body"]["order"]["id"] == order_id
            assert [a.status for a in await answered_attempts(emu, 2)] == [204, 204]

            async with open_http_client() as http:
                forged = await http.request(
                    "POST", url, {"Authorization": "Signature " + "0" * 40}, b"{}"
                )
                assert forged.status == 400
                other = b'{"notification_type": "user_validation", "user": {"id": "u9"}}'
                headers = {"Authorization": authorization_header(other, SECRET)}
                assert (await http.request("POST", url, headers, other)).status == 204
            # The duplicate and the forgery printed nothing: the next line is the validation.
            assert json.loads(await read_line(reader))["notification_type"] == "user_validation"
            assert await stop(process) == 0

        # Restarted on the same store, a redelivery is answered without being printed again.
        async with webhook_server(store) as (process, reader, url):
            await emu.configure_webhooks(url)
            await emu.send_webhook(order_id)
            assert (await answered_attempts(emu, 3))[-1].status == 204
            assert await stop(process) == 0
            assert await read_rest(reader) == b""


@pytest.mark.anyio
@on_databases
async def test_no_record_orders_keeps_the_orders_status_out_of_the_journal(
    anyio_backend: str, backend: str, tmp_path: Path
) -> None:
    """Order 41 tracked by the fleet: ``--no-record-orders`` (a receiver whose role has
    no privilege on the orders' tables) writes no change of it, and still handles and
    records the delivery; without it the server writes the status in the claim's
    transaction, as trackers sharing the journal need."""
    body = b'{"notification_type": "order_paid", "order": {"id": 41}, "items": []}'
    found = {}
    for options in [(), ("--no-record-orders",)]:
        folder = tmp_path / str(len(options))
        folder.mkdir()
        store = url_for(backend, folder)
        async with open_journal(store) as journal:
            await OrderLog(journal).track(41, Status.PAID, None)
        async with webhook_server(store, *options, "--backend", anyio_backend) as served:
            process, reader, url = served
            async with open_http_client() as http:
                headers = {"Authorization": authorization_header(body, SECRET)}
                status = (await http.request("POST", url, headers, body)).status
            printed = json.loads(await read_line(reader))
            assert await stop(process) == 0
        async with open_journal(store) as journal:
            log = OrderLog(journal)
            rows = await log.orders([41])
            changes = await log.changes({41: 0}, everything=True)
            deliveries = await journal.deliveries()
        found[options] = (
            status,
            printed["order_id"],
            [(d.order_id, d.status) for d in deliveries],
            [(row.status, row.version) for row in rows.values()],
            [(c.status, c.source) for c in changes],
        )
    assert found[()] == (204, 41, [(41, 204)], [(Status.PAID, 1)], [(Status.PAID, "webhook")])
    assert found[("--no-record-orders",)] == (204, 41, [(41, 204)], [(None, 0)], [])


def test_the_command_needs_a_secret() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orderfsm", "webhook-server"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "--secret" in result.stderr
