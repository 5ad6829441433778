"""Django and Flask apps under a real multi-process WSGI server (gunicorn, 2 sync workers)
sharing one journal, on PostgreSQL and on SQLite.

Every signed notification is sent 3 times at once; one worker is SIGKILLed
while they are answered (gunicorn starts another), and another dies by
itself inside the grant's transaction, after the grant was written, before
the commit.  Each notification must be granted exactly once, every delivery
answered 2xx in the end and none 4xx.  The Django app writes with the ORM
and checks, inside the handler, that it sees the claim uncommitted: the grant
and the claim are one transaction.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support_frameworks import (
    APPS,
    deliver,
    deliver_with_a_kill,
    gunicorn,
    post,
    serving,
    wait_for_workers,
)
from support_journal import connect, create_grants, track_orders, url_for
from support_webhook import order_paid, signed

from transports.journal import open_journal
from transports.webhook.receiver import DEFAULT_MAX_BODY

ORDERS = list(range(1001, 1013))
DIES_IN_ITS_TRANSACTION = 1005
PATH = "/xsolla/webhook"


def check_deliveries(answers: list[list[int | None]]) -> None:
    statuses = [status for copy in answers for status in copy]
    assert all(copy[-1] is not None and 200 <= copy[-1] < 300 for copy in answers), answers
    assert not [s for s in statuses if s is not None and 400 <= s < 500], statuses


def grants_per_order(url: str) -> list[tuple[int, int]]:
    """(order id, grants) of the app's grants table, by order id."""
    db = connect(url)
    try:
        rows = db.execute("SELECT order_id FROM grants").fetchall()
    finally:
        db.close()
    return sorted(Counter(int(row[0]) for row in rows).items())


def run_app(app: str, env: dict[str, str], tmp_path: Path) -> tuple[list[list[int | None]], int]:
    marker = tmp_path / "died"
    env = {**env, "GAME_DIE_AT_ORDER": str(DIES_IN_ITS_TRANSACTION), "GAME_DIE_MARKER": str(marker)}
    with serving(gunicorn(app), env, tmp_path, PATH) as server:
        bodies = [order_paid(order_id) for order_id in ORDERS]
        answers, killed = deliver_with_a_kill(server, PATH, bodies, copies=3)
        wait_for_workers(server, 2, killed)  # gunicorn replaced it
    assert marker.exists()  # a worker did die inside the grant's transaction
    check_deliveries(answers)
    return answers, killed


def migrate_django(env: dict[str, str]) -> None:
    """The Django game's tables in ``env["GAME_DB"]``."""
    database = env.get("GAME_ALIAS", "default")
    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--run-syncdb", "-v", "0",
         "--database", database],
        cwd=APPS, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_django_under_gunicorn_grants_each_order_once_with_the_orm(
    backend: str, tmp_path: Path
) -> None:
    url = url_for(backend, tmp_path)
    env = {"GAME_DB": url, "DJANGO_SETTINGS_MODULE": "djangogame.settings"}
    migrate_django(env)
    journal = open_journal(url).sync
    journal.open()
    try:
        track_orders(url, list(ORDERS), journal.store)  # the fleet's trackers follow them
    finally:
        journal.close()
    run_app("djangogame.wsgi:application", env, tmp_path)
    db = connect(url)
    try:
        rows = db.execute("SELECT order_id, sku, attempt FROM djangogame_grant").fetchall()
        told = db.execute("SELECT order_id, status FROM orderfsm_changes").fetchall()
    finally:
        db.close()
    assert sorted(Counter(row[0] for row in rows).items()) == [(o, 1) for o in ORDERS]
    # The attempt that died with its grant written left nothing, not even its claim: every
    # grant was written by a first attempt, seen from inside its uncommitted claim.
    assert {row[2] for row in rows} == {1}
    # The order's status for a fleet's trackers, written in the same transaction, once.
    assert sorted((int(o), s) for o, s in told) == [(o, "paid") for o in ORDERS]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_flask_under_gunicorn_grants_each_order_once(backend: str, tmp_path: Path) -> None:
    url = url_for(backend, tmp_path)
    create_grants(url)
    run_app("flaskgame:app", {"GAME_DB": url}, tmp_path)
    assert grants_per_order(url) == [(o, 1) for o in ORDERS]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_flask_preloaded_with_its_journal_opened_before_the_fork_grants_each_order_once(
    backend: str, tmp_path: Path
) -> None:
    """``receiver.open()`` at import (start-up problems raise there), the app preloaded by
    its master (gunicorn ``--preload``, uWSGI's default), then forked: each worker
    used the master's connections, so two workers talked on one PostgreSQL socket,
    read each other's replies, answered 500s and granted orders twice."""
    url = url_for(backend, tmp_path)
    create_grants(url)
    orders = range(5001, 5041)
    command = gunicorn("flaskgame:app")
    command.insert(command.index("--workers"), "--preload")
    env = {"GAME_DB": url, "GAME_OPEN_EARLY": "1"}
    with serving(command, env, tmp_path, PATH) as server:
        bodies = [order_paid(order_id) for order_id in orders for _ in range(3)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda body: deliver(server.port, PATH, body), bodies))
    check_deliveries(answers)
    assert grants_per_order(url) == [(o, 1) for o in orders]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_django_a_grant_rolled_back_behind_the_handlers_back_is_never_answered_2xx(
    backend: str, tmp_path: Path
) -> None:
    """The handler catches the ORM's ``IntegrityError`` (the player owns the skin already)
    and returns: Django has marked the block for rollback, and leaving the handler's
    savepoint rolled the grant back.  The 204 was stored (every duplicate got it,
    Xsolla was done) with nothing granted.  It must answer 5xx, so Xsolla retries,
    until a delivery whose grant stays is answered 2xx."""
    url = url_for(backend, tmp_path)
    env = {
        "GAME_DB": url,
        "DJANGO_SETTINGS_MODULE": "djangogame.settings",
        "GAME_HOOK": "djangogame.hooks.grant_owning",
    }
    migrate_django(env)
    db = connect(url)
    try:
        db.execute("INSERT INTO djangogame_owned (\"user\", sku) VALUES ('user-1', 'skin')")
        with serving(gunicorn("djangogame.wsgi:application", workers=1), env, tmp_path, PATH) as s:
            body = order_paid(2001)
            refused = [post(s.port, PATH, body, signed(body)) for _ in range(2)]
            granted_meanwhile = db.execute("SELECT count(*) FROM djangogame_grant").fetchone()
            db.execute("DELETE FROM djangogame_owned")  # now the skin is granted too
            retried = post(s.port, PATH, body, signed(body))
        rows = db.execute("SELECT order_id FROM djangogame_grant").fetchall()
    finally:
        db.close()
    assert refused == [500, 500]
    assert granted_meanwhile == (0,)
    assert retried == 204 and [int(row[0]) for row in rows] == [2001]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_django_a_game_database_other_than_default_is_out_of_atomic_requests_too(
    backend: str, tmp_path: Path
) -> None:
    """The journal and the game's tables in ``DATABASES["game"]``, ``ATOMIC_REQUESTS`` on for
    every database.  The view opted out of the request's transaction on ``"default"``
    alone, so Django wrapped it in one on ``"game"``, and the claim's durable block
    refused to nest in it: every delivery answered 500, the order never granted."""
    url = url_for(backend, tmp_path)
    env = {
        "GAME_DB": url,
        "GAME_ALIAS": "game",
        "GAME_DEFAULT_DB": str(tmp_path / "default.sqlite3"),
        "DJANGO_SETTINGS_MODULE": "djangogame.settings",
    }
    migrate_django(env)
    with serving(gunicorn("djangogame.wsgi:application", workers=1), env, tmp_path, PATH) as s:
        body = order_paid(4001)
        answers = [post(s.port, PATH, body, signed(body)) for _ in range(2)]
    db = connect(url)
    try:
        rows = db.execute("SELECT order_id FROM djangogame_grant").fetchall()
    finally:
        db.close()
    assert answers == [204, 204], answers
    assert [int(row[0]) for row in rows] == [4001]


def post_chunked(port: int, body: bytes, headers: dict[str, str], *, ended: bool) -> int | None:
    """``body`` in 8 KiB chunks (no ``Content-Length``, as a proxy streaming it sends it);
    without the last chunk unless ``ended``.  The status, or ``None`` without one in 10 s."""
    head = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        for start in range(0, len(body), 8192):
            chunk = body[start : start + 8192]
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if ended:
            connection.sendall(b"0\r\n\r\n")
        try:
            status_line = connection.makefile("rb").readline()
        except OSError:
            return None
    return int(status_line.split()[1]) if status_line else None


@pytest.mark.parametrize("app", ["django", "flask"])
def test_a_chunked_body_is_read_whole_and_an_endless_one_no_further_than_the_limit(
    app: str, tmp_path: Path
) -> None:
    """A chunked request has no length to refuse before reading it.  An unsigned one that
    does not end (or is gigabytes long) was read to its end into memory by the Flask
    blueprint before its 413: the worker's memory was anyone's.  Each app reads the
    receiver's limit + 1 bytes and answers 413 while the body is still coming, and a
    signed chunked notification is read whole and granted."""
    url = url_for("sqlite", tmp_path)
    if app == "django":
        env = {"GAME_DB": url, "DJANGO_SETTINGS_MODULE": "djangogame.settings"}
        migrate_django(env)
        command = gunicorn("djangogame.wsgi:application", workers=1)
    else:
        env = {"GAME_DB": url}
        create_grants(url)
        command = gunicorn("flaskgame:app", workers=1)
    endless = b"x" * (DEFAULT_MAX_BODY + 1000)  # then nothing more, and no last chunk
    with serving(command, env, tmp_path, PATH) as server:
        body = order_paid(3001)
        whole = post_chunked(server.port, body, signed(body), ended=True)
        cut = post_chunked(server.port, endless, {"Content-Type": "text/plain"}, ended=False)
    assert (whole, cut) == (204, 413)
