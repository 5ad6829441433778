"""Operating the webhook server: its stats and ``/metrics``, ``/healthz`` and ``/readyz``
(which needs a journal that writes, not only one that reads), a journal outage, and
secrets that stay out of ``ps`` and the logs (the webhook secret from the environment,
the database password from ``PGPASSWORD`` or ``.pgpass``)."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client.parser import text_string_to_metric_families
from support_journal import backlog_left, old_backlog
from support_postgres import NO_ORDERS, database_of_a_role, postgres_server
from support_webhook import answer_of

from orderfsm.core import Status
from orderfsm.journal import DAY, JournalSettings
from orderfsm.testing import eventually
from transports.http import open_http_client
from transports.journal import open_journal, readiness
from transports.journal import orders as orders_sql
from transports.journal.testing import TemporaryPostgres
from transports.webhook import (
    DELIVERY_OUTCOMES,
    Endpoint,
    SyncWebhookReceiver,
    WebhookReceiver,
    authorization_header,
    health_endpoints,
    serve_receiver,
)

pytestmark = pytest.mark.anyio

SECRET = "ops-test-webhook-secret-1357"
PAID = b'{"notification_type": "order_paid", "order": {"id": 77}, "items": []}'
UNKNOWN = b'{"notification_type": "something_new"}'


def signed(body: bytes) -> dict[str, str]:
    return {"Authorization": authorization_header(body, SECRET)}


FORGED = {"Authorization": "Signature " + "0" * 40}


@pytest.mark.parametrize("receiver_class", [WebhookReceiver, SyncWebhookReceiver])
async def test_receiver_stats_count_each_outcome_once(
    receiver_class: type[WebhookReceiver | SyncWebhookReceiver],
) -> None:
    """Counted alike by both receivers: the synchronous one (Django, Flask) counted no
    handler run and no journal call, so its metrics of both never moved."""
    ran: list[int] = []

    def handler(notification: object) -> None:  # either receiver calls a plain function
        ran.append(1)
        if len(ran) == 2:
            raise RuntimeError("the game's database is down")

    receiver = receiver_class(SECRET, handler, max_body_size=1000)
    try:
        answers = [
            await answer_of(receiver, signed(PAID), PAID),  # handled
            await answer_of(receiver, signed(PAID), PAID),  # a repeat: from the journal
            await answer_of(receiver, FORGED, PAID),  # forged
            await answer_of(receiver, signed(b"[]"), b"[]"),  # signed, not a notification
            await answer_of(receiver, signed(UNKNOWN), UNKNOWN),  # ignored
            await answer_of(receiver, {}, b"x" * 1001),  # too large
        ]
        other = PAID.replace(b"77", b"78")
        answers.append(await answer_of(receiver, signed(other), other))  # handler fails
        stats = receiver.stats()
    finally:
        if isinstance(receiver, WebhookReceiver):
            await receiver.aclose()
        else:
            receiver.close()
    assert answers == [204, 204, 400, 400, 204, 413, 500]
    assert set(stats.deliveries) == set(DELIVERY_OUTCOMES)
    assert {outcome: n for outcome, n in stats.deliveries.items() if n} == {
        "handled": 1,
        "duplicate": 1,
        "forged": 1,
        "invalid": 1,
        "ignored": 1,
        "too_large": 1,
        "failed": 1,
    }
    assert stats.answers == {"204": 3, "400": 2, "413": 1, "500": 1}
    assert stats.handler_runs == 2 and stats.handler_seconds > 0
    assert stats.journal_calls == 3 and stats.journal_failures == 0  # handled, repeat, failed
    assert stats.journal == "memory:"


def test_the_synchronous_receiver_counts_and_logs_a_journal_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As the async receiver does (below): a failure counted and its outage timed, and
    logged as ``journal.failed`` with the order, what the README says to alert on.  The
    synchronous receiver logged a bare message and counted neither."""
    postgres_server()  # skips without the binaries
    server = TemporaryPostgres()
    other = PAID.replace(b"77", b"79")
    try:
        with SyncWebhookReceiver(SECRET, lambda notification: None, store=server.url()) as receiver:
            assert receiver.handle(signed(PAID), PAID).status == 204
            server.stop()
            with caplog.at_level(logging.ERROR, logger="orderfsm.webhook"):
                assert receiver.handle(signed(other), other).status == 500  # retried later
            during = receiver.stats()
            server.start()
            deadline = time.monotonic() + 30
            while receiver.handle(signed(other), other).status != 204:  # as Xsolla retries
                assert time.monotonic() < deadline, "the journal did not come back"
                time.sleep(0.1)
            after = receiver.stats()
    finally:
        server.close()
    failed = [r for r in caplog.records if getattr(r, "event", None) == "journal.failed"]
    assert [getattr(r, "order_id", None) for r in failed] == [79]
    assert during.deliveries["journal_failed"] == 1 and during.journal_failures == 1
    assert during.journal_calls == 2 and during.journal_outage_seconds > 0
    assert after.journal_failures >= 1 and after.journal_calls > during.journal_calls
    assert after.journal_outage_seconds >= during.journal_outage_seconds
    assert after.handler_runs == 2 and after.handler_seconds > 0


async def test_a_journal_outage_is_counted_and_readiness_follows_it() -> None:
    """A real PostgreSQL server of its own, stopped and started under the receiver."""
    postgres_server()  # skips without the binaries
    server = TemporaryPostgres()
    try:
        receiver = WebhookReceiver(SECRET, store=server.url())
        ready = health_endpoints(receiver)["/readyz"]
        async with receiver:
            assert (await receiver.handle(signed(PAID), PAID)).status == 204
            up = await ready()
            await anyio.to_thread.run_sync(server.stop)
            down = await ready()
            other = PAID.replace(b"77", b"79")
            assert (await receiver.handle(signed(other), other)).status == 500  # retried later
            during = receiver.stats()
            await anyio.to_thread.run_sync(server.start)

            async def redelivered() -> bool:  # as Xsolla retries, until the pool reconnected
                return (await receiver.handle(signed(other), other)).status == 204

            await eventually(redelivered, timeout=30, interval=0.1)
            back = await ready()
            after = receiver.stats()
    finally:
        server.close()
    assert up.status == 200 and json.loads(up.body)["status"] == "ready"
    body = json.loads(down.body)
    assert down.status == 503 and body["status"] == "unavailable" and body["error"]
    assert body["journal"].startswith("postgresql://postgres@127.0.0.1")
    assert back.status == 200
    assert during.deliveries["journal_failed"] == 1 and during.journal_failures == 1
    assert during.journal_outage_seconds > 0  # still going on: counted up to now
    assert after.deliveries["handled"] == 2
    assert after.journal_outage_seconds >= during.journal_outage_seconds


async def test_health_endpoints_are_served_beside_the_webhook() -> None:
    receiver = WebhookReceiver(SECRET)
    endpoints = health_endpoints(receiver)
    async with serve_receiver(receiver, endpoints=endpoints) as url, open_http_client() as http:
        base = url.removesuffix("/webhook")
        alive = await http.request("GET", base + "/healthz")
        ready = await http.request("GET", base + "/readyz")
        nothing = await http.request("GET", base + "/nothing")
        webhook = await http.request("GET", url)
    assert alive.status == 200 and json.loads(alive.body) == {"status": "ok"}
    assert ready.status == 200 and json.loads(ready.body) == {
        "status": "ready",
        "journal": "memory:",
    }
    assert nothing.status == 404 and webhook.status == 405  # the webhook is POST only
    assert not any(receiver.stats().deliveries.values())  # probes are not deliveries


# --- the command ------------------------------------------------------------------------


@asynccontextmanager
async def webhook_server(
    *args: str, **env: str
) -> AsyncIterator[tuple[Process, BufferedByteReceiveStream, str]]:
    command = [sys.executable, "-m", "orderfsm", "--log-level", "debug", "webhook-server"]
    process = await anyio.open_process(
        [*command, "--port", "0", *args],
        env={**os.environ, **env},
    )
    try:
        assert process.stdout is not None
        reader = BufferedByteReceiveStream(process.stdout)
        with anyio.fail_after(30):
            url = (await reader.receive_until(b"\n", 1 << 20)).decode()
        yield process, reader, url
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def stop(process: Process) -> str:
    """SIGTERM, then everything the process wrote on stderr."""
    process.send_signal(signal.SIGTERM)
    assert process.stderr is not None
    err = b""
    with anyio.fail_after(15):
        async for chunk in process.stderr:
            err += chunk
        assert await process.wait() == 0
    return err.decode()


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_metrics_after_a_signed_a_duplicate_and_a_forged_delivery(
    tmp_path: Path, backend: str
) -> None:
    store = f"sqlite:///{tmp_path / 'journal.sqlite3'}"
    async with webhook_server(
        "--secret-env", "S", "--store", store, "--backend", backend, S=SECRET
    ) as (process, _, url):
        seen_by_ps = command_line(process.pid)
        base = url.removesuffix("/webhook")
        async with open_http_client() as http:
            statuses = [
                (await http.request("POST", url, signed(PAID), PAID)).status,
                (await http.request("POST", url, signed(PAID), PAID)).status,
                (await http.request("POST", url, FORGED, PAID)).status,
            ]
            scraped = await http.request("GET", base + "/metrics")
            alive = await http.request("GET", base + "/healthz")
            ready = await http.request("GET", base + "/readyz")
        err = await stop(process)
    assert statuses == [204, 204, 400]
    assert SECRET not in seen_by_ps and "--secret-env S" in seen_by_ps
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.body.decode())
        for s in family.samples
    }
    delivered = "orderfsm_webhook_deliveries_total"
    assert samples[(delivered, (("outcome", "handled"),))] == 1
    assert samples[(delivered, (("outcome", "duplicate"),))] == 1
    assert samples[(delivered, (("outcome", "forged"),))] == 1
    assert samples[(delivered, (("outcome", "journal_failed"),))] == 0
    assert samples[("orderfsm_webhook_answers_total", (("code", "204"),))] == 2
    assert samples[("orderfsm_webhook_answers_total", (("code", "400"),))] == 1
    assert samples[("orderfsm_webhook_handler_runs_total", ())] == 1
    assert json.loads(alive.body) == {"status": "ok"}
    assert json.loads(ready.body) == {"status": "ready", "journal": store}
    # At DEBUG every delivery was logged, and nothing secret with it.
    assert "event=webhook.answered" in err and "event=webhook.refused" in err
    assert "/healthz" not in err and "/metrics" not in err  # probes are not logged
    for leak in (SECRET, authorization_header(PAID, SECRET), "Signature 0000"):
        assert leak not in err


# --- readiness: a journal that answers reads but cannot write ---------------------------

DATABASES = itertools.count(1)


async def error_of(ready: Endpoint) -> str | None:
    """The 503's reason, or ``None`` when ready."""
    answer = await ready()
    if answer.status == 200:
        return None
    assert answer.status == 503
    return str(json.loads(answer.body)["error"])


async def test_readiness_says_no_once_postgresql_sessions_only_read() -> None:
    """A failover that leaves the instance on a read-only server: its sessions end, the
    pool reconnects, and every new session only reads (``default_transaction_read_only``
    on the database here; a standby's are read-only likewise).  Every delivery was
    answered 500 while ``/readyz`` said ready, so the load balancer kept sending them
    here.  Now it says 503 until writes work again."""
    server = postgres_server()  # skips without the binaries
    import psycopg

    name = f"readonly_{os.getpid()}_{next(DATABASES)}"
    admin = psycopg.connect(server.base, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")

    def fail_over(read_only: bool) -> None:
        setting = "SET default_transaction_read_only = on" if read_only else "RESET ALL"
        admin.execute(f"ALTER DATABASE {name} {setting}")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )

    try:
        receiver = WebhookReceiver(SECRET, store=f"{server.base.rsplit('/', 1)[0]}/{name}")
        ready = health_endpoints(receiver)["/readyz"]
        async with receiver:
            before = await error_of(ready)
            fail_over(read_only=True)

            async def read_only() -> bool:  # once the pool has reconnected
                return "read-only" in (await error_of(ready) or "")

            await eventually(read_only, timeout=30, interval=0.1)
            refused = (await receiver.handle(signed(PAID), PAID)).status
            fail_over(read_only=False)

            async def writable() -> bool:
                return await error_of(ready) is None

            await eventually(writable, timeout=30, interval=0.1)
            retried = (await receiver.handle(signed(PAID), PAID)).status
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
    assert before is None
    assert refused == 500  # our trouble: Xsolla retries
    assert retried == 204


@pytest.mark.parametrize("privilege", ["INSERT", "SELECT"])
async def test_readiness_says_no_once_a_privilege_is_taken_from_the_journal(
    privilege: str,
) -> None:
    """A DBA takes INSERT (or SELECT, which the claim's upsert needs to read the row it
    conflicts with) on the claims table back from the receivers' role (a role rotation
    half done): every delivery was answered 500 while ``/readyz`` said ready.  Now it
    says 503 and names what is missing, until the grant is back."""
    with database_of_a_role(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
    ) as (url, role, database):

        def claims(grant: bool) -> None:
            verb = (
                f"GRANT {privilege} ON orderfsm_claims TO {role}"
                if grant
                else f"REVOKE {privilege} ON orderfsm_claims FROM {role}"
            )
            database.execute(verb)

        receiver = WebhookReceiver(SECRET, store=url)
        ready = health_endpoints(receiver)["/readyz"]
        async with receiver:
            before = await error_of(ready)
            claims(grant=False)
            missing = await error_of(ready)
            refused = (await receiver.handle(signed(PAID), PAID)).status
            claims(grant=True)
            after = await error_of(ready)
            granted = (await receiver.handle(signed(PAID), PAID)).status
    assert before is None
    assert missing is not None and f"{privilege} on orderfsm_claims" in missing
    assert refused == 500  # our trouble: Xsolla retries
    assert after is None
    assert granted == 204


def paid(order_id: int) -> bytes:
    return PAID.replace(b"77", str(order_id).encode())


async def test_readiness_asks_for_the_orders_privileges_only_of_a_receiver_recording_them() -> None:
    """A receiver that records orders' statuses (``record_orders``, the default) writes
    them in each claim's transaction: under a role without one of the privileges that
    needs, every delivery of a status was answered 500 while ``/readyz`` said ready.
    Given what readiness asks for and no other write, a delivery of each receiver
    passes; each of the orders' privileges taken away in turn, the recording receiver's
    deliveries fail and its ``/readyz`` names the privilege, while one that does not
    record stays ready and answers 204: readiness agrees with the deliveries both ways.
    (The orders are tracked by the fleet: an untracked one's news waits in its delivery.)"""
    orders = [
        (f"{privilege} ON {table}", f"{privilege} on {table}")
        for table, privileges in readiness.POSTGRES_ORDER_WRITES.items()
        for privilege in privileges
    ]
    notify = f"EXECUTE ON FUNCTION {readiness.POSTGRES_NOTIFY}"
    exactly = [
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
        *(
            f"GRANT {privilege} ON {table} TO {{role}}"
            for table, privileges in readiness.POSTGRES_WRITES.items()
            for privilege in privileges
        ),
        *(f"GRANT {grant} TO {{role}}" for grant, _ in orders),
    ]
    order_ids = itertools.count(1000)
    found: dict[str, tuple[str | None, int, str | None, int]] = {}
    with database_of_a_role(*exactly) as (url, role, database):
        database.execute("BEGIN")
        tracked = [(order_id, Status.PAID, None) for order_id in range(1000, 1012)]
        orders_sql.track_many(
            database, "postgresql", tracked, time.time(), channel=orders_sql.channel_for("public")
        )
        database.execute("COMMIT")
        recording = WebhookReceiver(SECRET, store=url)
        not_recording = WebhookReceiver(SECRET, store=url, record_orders=False)
        ready, ready_without = (health_endpoints(r)["/readyz"] for r in (recording, not_recording))

        async def both(label: str) -> None:
            first, second = paid(next(order_ids)), paid(next(order_ids))
            found[label] = (
                await error_of(ready),
                (await recording.handle(signed(first), first)).status,
                await error_of(ready_without),
                (await not_recording.handle(signed(second), second)).status,
            )

        async with recording, not_recording:
            await both("granted")
            for grant, named in [*orders, (notify, f"EXECUTE on {readiness.POSTGRES_NOTIFY}")]:
                # pg_notify is PUBLIC's to run: taken from PUBLIC, as a DBA would
                whom = "PUBLIC" if grant == notify else role
                database.execute(f"REVOKE {grant} FROM {whom}")
                await both(named)
                database.execute(f"GRANT {grant} TO {whom}")
    assert found.pop("granted") == (None, 204, None, 204)
    assert len(found) == 5
    for named, (missing, status, missing_without, status_without) in found.items():
        assert missing is not None and named in missing, (named, missing)
        assert status == 500, named  # our trouble: Xsolla retries
        assert (missing_without, status_without) == (None, 204), named


async def test_a_receiver_not_recording_orders_needs_no_privilege_on_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``record_orders=False`` under a role with no privilege on the orders' tables (a
    webhook-only backend): its deliveries are claimed in batches as any are.  Every
    batch's statement locked the orders' rows, even none, so each failed ("permission
    denied for table orderfsm_orders", a warning per batch) and its deliveries went
    alone, a statement and a rollback more each."""
    with database_of_a_role(*NO_ORDERS) as (url, _, _):
        receiver = WebhookReceiver(SECRET, store=url, record_orders=False)
        statuses: list[int] = []

        async def deliver(order_id: int) -> None:
            body = paid(order_id)
            statuses.append((await receiver.handle(signed(body), body)).status)

        with caplog.at_level(logging.WARNING, logger="orderfsm.journal"):
            async with receiver, anyio.create_task_group() as deliveries:
                for order_id in range(2000, 2010):
                    deliveries.start_soon(deliver, order_id)
            stats = receiver.stats()
    assert statuses == [204] * 10
    assert stats.deliveries["handled"] == 10
    split = [r for r in caplog.records if getattr(r, "event", None) == "journal.batch_split"]
    assert [r.getMessage() for r in split] == []


async def test_a_receiver_without_the_orders_privileges_prunes_its_whole_backlog(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver with ``record_orders=False`` under a role without privileges on the
    orders' tables prunes every old claim and delivery, however many rounds that takes,
    and says once, as a warning naming them, that it prunes no order changes.  The
    changes' pass failed there each round, which failed the whole prune (an exception in
    the log, every hour) after its first round: the claims and deliveries went one round
    an hour, and a backlog was never caught up.  Here a round is 0.2 s and a chunk of
    100 deliveries takes 0.25 s (a trigger), so 800 take eight rounds."""
    import transports.journal.postgres as postgres_store
    from transports.journal import pruning

    monkeypatch.setattr(postgres_store, "PRUNE_CHUNK", 100)
    monkeypatch.setattr(pruning, "PRUNE_ROUND", 0.2)
    settings = JournalSettings()
    old = time.time() - settings.retention - DAY
    ended = {"journal.pruned", "journal.prune_failed"}

    def events(*names: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) in names]

    with database_of_a_role(*NO_ORDERS) as (url, _, database):
        old_backlog(database, 800, old)
        with caplog.at_level(logging.INFO, logger="orderfsm.journal"):
            async with open_journal(url, settings) as journal:
                receiver = WebhookReceiver(SECRET, store=journal, record_orders=False)
                body = paid(5000)  # not one of the backlog's (orders 1 to 800)
                answer = await receiver.handle(signed(body), body)  # starts the prune
                await eventually(lambda: events(*ended), timeout=30, interval=0.05)
                left = backlog_left(database, old)
                again = await journal.prune()  # the next prune: nothing old, nothing said
    assert answer.status == 204
    assert [r.getMessage() for r in events(*ended)] == [
        "pruned 800 claims, 800 deliveries and 0 order changes"
    ]
    assert left == 0 and again == (0, 0, 0)
    told = [r for r in caplog.records if r.levelno >= logging.WARNING]
    missing = "SELECT on orderfsm_changes, DELETE on orderfsm_changes, SELECT on orderfsm_orders"
    assert [(r.event, r.missing, r.exc_info) for r in told] == [  # type: ignore[attr-defined]
        ("journal.changes_not_pruned", missing, None)
    ]


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` no longer written by this user: read-only, or for root (who writes any
    file) immutable, which needs ``CAP_LINUX_IMMUTABLE`` and a filesystem that has the
    flag: the test skips where it is refused."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        yield
        return
    try:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        done = subprocess.CompletedProcess(["chattr"], 1, "", "no chattr command")
    if done.returncode != 0:
        pytest.skip(f"root writes any file, and making it immutable was refused: {done.stderr}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_readiness_says_no_for_a_sqlite_file_the_server_cannot_write(
    anyio_backend: str, tmp_path: Path
) -> None:
    """The file is not the server's to write (another user's, made by a command run as
    root, say), its directory is: SQLite opens it read-only without a word, so the
    server started, answered every delivery 500 ("attempt to write a readonly
    database") and said ready."""
    path = tmp_path / "journal.sqlite3"
    made = open_journal(str(path)).sync
    made.open()
    made.close()
    with unwritable(path):
        async with webhook_server(
            *("--secret-env", "S", "--store", str(path), "--backend", anyio_backend), S=SECRET
        ) as (process, _, url):
            async with open_http_client() as http:
                delivered = await http.request("POST", url, signed(PAID), PAID)
                ready = await http.request("GET", url.removesuffix("/webhook") + "/readyz")
            await stop(process)
    assert delivered.status == 500
    assert ready.status == 503, ready.body
    assert "readonly" in json.loads(ready.body)["error"]


@contextmanager
def small_filesystem(size: str = "8m") -> Iterator[Path]:
    """A tmpfs of its own, to fill.  Filling a disk needs a filesystem of the test's
    own, so where mounting is refused (no ``CAP_SYS_ADMIN``) the test skips."""
    folder = Path(tempfile.mkdtemp(prefix="orderfsm-disk-"))
    try:
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
        mounted = subprocess.run(mount, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        mounted = subprocess.CompletedProcess(mount, 1, "", "no mount command")
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"a small filesystem to fill could not be mounted: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)
        folder.rmdir()


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem has no space left."""
    with path.open("wb", buffering=0) as junk:
        try:
            while True:
                junk.write(bytes(65536))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


async def test_readiness_says_no_while_the_sqlite_journal_s_disk_is_full() -> None:
    """A full disk answered every delivery 500 ("database or disk is full") while a read,
    all readiness asked, still worked."""
    with small_filesystem() as folder:
        receiver = WebhookReceiver(SECRET, store=str(folder / "journal.sqlite3"))
        ready = health_endpoints(receiver)["/readyz"]
        async with receiver:
            before = await error_of(ready)
            fill(folder / "junk")
            full = await error_of(ready)
            refused = (await receiver.handle(signed(PAID), PAID)).status
            (folder / "junk").unlink()
            after = await error_of(ready)
            retried = (await receiver.handle(signed(PAID), PAID)).status
    assert before is None and after is None
    assert full is not None and "bytes free" in full
    assert (refused, retried) == (500, 204)


async def test_a_writer_holding_the_sqlite_lock_leaves_readiness_ready(tmp_path: Path) -> None:
    """Busy is not broken: another process's long write transaction holds the file's
    lock (every instance on the host waits for it alike), so the probe does not wait
    for it, and readiness neither fails nor flaps under load."""
    path = tmp_path / "journal.sqlite3"
    receiver = WebhookReceiver(SECRET, store=str(path))
    ready = health_endpoints(receiver)["/readyz"]
    async with receiver:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            busy = await error_of(ready)
            took = time.monotonic() - started
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert busy is None and took < 1.0


# --- the database password --------------------------------------------------------------

PASSWORD = "pg-pass-for-the-test-2468"


@pytest.fixture(scope="module")
def guarded_postgres() -> TemporaryPostgres:
    """A cluster of its own that asks TCP clients for a password."""
    postgres_server()  # skips without the binaries
    server = TemporaryPostgres()
    import psycopg

    with psycopg.connect(server.base, autocommit=True) as connection:
        connection.execute(f"ALTER USER postgres PASSWORD '{PASSWORD}'")
    hba = server.data / "pg_hba.conf"
    rules = re.sub(r"(host\s+\S+\s+\S+\s+\S+\s+)trust", r"\1scram-sha-256", hba.read_text())
    hba.write_text(rules)
    server.stop()
    server.start()
    yield server
    server.close()


def run_server_briefly(store: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``webhook-server`` at DEBUG with ``store``, asked for readiness, then stopped."""

    async def main() -> tuple[int, str, str, str, str]:
        async with webhook_server("--secret-env", "S", "--store", store, S=SECRET, **env) as (
            process,
            _,
            url,
        ):
            seen_by_ps = command_line(process.pid)
            async with open_http_client() as http:
                ready = await http.request("GET", url.removesuffix("/webhook") + "/readyz")
            err = await stop(process)
        return ready.status, ready.body.decode(), seen_by_ps, err, url

    status, body, seen_by_ps, err, url = anyio.run(main)
    return subprocess.CompletedProcess(seen_by_ps, status, body, err + url)


@pytest.mark.parametrize("way", ["PGPASSWORD", "pgpass"])
def test_the_database_password_from_libpq_s_own_places(
    guarded_postgres: TemporaryPostgres, way: str, tmp_path: Path
) -> None:
    store = f"postgresql://postgres@127.0.0.1:{guarded_postgres.port}/postgres"
    if way == "PGPASSWORD":
        env = {"PGPASSWORD": PASSWORD}
    else:
        pgpass = tmp_path / "pgpass"
        pgpass.write_text(f"127.0.0.1:{guarded_postgres.port}:*:postgres:{PASSWORD}\n")
        pgpass.chmod(0o600)  # libpq ignores a file others can read
        env = {"PGPASSFILE": str(pgpass)}
    ran = run_server_briefly(store, **env)
    assert ran.returncode == 200, ran.stdout
    assert json.loads(ran.stdout) == {"status": "ready", "journal": store}
    assert PASSWORD not in ran.args and PASSWORD not in ran.stderr


def test_a_password_in_the_url_is_never_shown(guarded_postgres: TemporaryPostgres) -> None:
    """Not recommended, but it works, and neither a failure nor the logs show it."""
    port = guarded_postgres.port
    good = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    ran = run_server_briefly(good)
    assert ran.returncode == 200
    assert (
        json.loads(ran.stdout)["journal"] == f"postgresql://postgres:***@127.0.0.1:{port}/postgres"
    )
    assert PASSWORD not in ran.stdout and PASSWORD not in ran.stderr
    wrong = f"postgresql://postgres:{PASSWORD}x@127.0.0.1:{port}/postgres"
    malformed = f"postgresql://postgres:{PASSWORD} x@[::1/postgres"  # libpq quotes these
    for store in (wrong, malformed):
        result = subprocess.run(
            [
                *(sys.executable, "-m", "orderfsm", "--log-level", "debug", "webhook-server"),
                *("--secret-env", "S", "--port", "0", "--store", store),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "S": SECRET},
        )
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert "postgres:***@" in result.stderr or "***" in result.stderr
        assert PASSWORD not in result.stderr + result.stdout
