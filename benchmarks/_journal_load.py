"""The journal benchmark's parts that run in processes of their own.

* ``loadgen``: the load generator (asyncio, bare HTTP/1.1 on keep-alive
  connections, so the client costs little): ``saturate`` sends as fast as the
  receivers answer; ``open`` sends at a fixed rate whatever the answers
  (open loop: latency counts from the scheduled send, so a slow answer
  cannot hide queueing); both then resend every delivery not answered 2xx
  until it is, as Xsolla would.
* ``ceiling``: a do-nothing aiohttp handler answering 204.
* ``floor``: the journal's claim and answer per delivery, without HTTP.
* ``drivers``: the same claim through psycopg's sync and async connections,
  for their CPU cost per transaction.
* ``noop``: the receivers' handler (``--handler _journal_load:noop``).

Each prints one JSON line on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

CONTENT_LENGTH = b"content-length:"


async def noop(notification: object) -> None:
    """The application's handler in the benchmark: does nothing."""


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def request(self, data: bytes) -> int:
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        at = head.lower().find(CONTENT_LENGTH)
        if at >= 0:
            end = head.index(b"\r\n", at)
            length = int(head[at + len(CONTENT_LENGTH) : end])
            if length:
                await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def split(url: str) -> tuple[str, int, str]:
    host_port, path = url.removeprefix("http://").split("/", 1)
    host, port = host_port.rsplit(":", 1)
    return host, int(port), "/" + path


def request_bytes(url: str, body: bytes, authorization: str) -> bytes:
    host, port, path = split(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def saturate(
    urls: list[str], payloads: list[tuple[bytes, str]], per_url: int
) -> tuple[list[int], float]:
    statuses = [0] * len(payloads)
    index = 0

    async def worker(url: str) -> None:
        nonlocal index
        host, port, _ = split(url)
        connection = await Connection.open(host, port)
        try:
            while index < len(payloads):
                mine = index
                index += 1
                body, authorization = payloads[mine]
                try:
                    statuses[mine] = await connection.request(
                        request_bytes(url, body, authorization)
                    )
                except (OSError, asyncio.IncompleteReadError):
                    statuses[mine] = 0
                    connection.close()
                    connection = await Connection.open(host, port)
        finally:
            connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(url) for url in urls for _ in range(per_url)))
    return statuses, time.perf_counter() - start


async def open_loop(
    urls: list[str], payloads: list[tuple[bytes, str]], rate: float, report: dict[str, Any]
) -> tuple[list[int], list[float]]:
    statuses = [0] * len(payloads)
    latencies = [0.0] * len(payloads)
    idle: dict[str, list[Connection]] = {url: [] for url in urls}
    tasks: set[asyncio.Task[None]] = set()

    async def send(i: int, url: str, due: float) -> None:
        host, port, _ = split(url)
        pool = idle[url]
        connection = pool.pop() if pool else await Connection.open(host, port)
        body, authorization = payloads[i]
        try:
            statuses[i] = await connection.request(request_bytes(url, body, authorization))
            pool.append(connection)
        except (OSError, asyncio.IncompleteReadError):
            connection.close()
        latencies[i] = time.perf_counter() - due

    loop = asyncio.get_running_loop()
    start = time.perf_counter() + 0.05
    # When send i was due, on the wall clock other processes read: start + i / rate.
    report["wall_start"] = time.time() + (start - time.perf_counter())
    for i in range(len(payloads)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(send(i, urls[i % len(urls)], due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    for pool in idle.values():
        for connection in pool:
            connection.close()
    return statuses, latencies


async def retry(urls: list[str], payloads: list[tuple[bytes, str]], statuses: list[int]) -> int:
    """Resend what was not answered 2xx (a 4xx is final) until it is; returns the resends."""
    resent = 0
    for attempt in range(200):
        pending = [i for i, s in enumerate(statuses) if not (200 <= s < 300 or 400 <= s < 500)]
        if not pending:
            break
        for i in pending:
            url = urls[(i + attempt) % len(urls)]
            host, port, _ = split(url)
            try:
                connection = await Connection.open(host, port)
                body, authorization = payloads[i]
                statuses[i] = await connection.request(request_bytes(url, body, authorization))
                connection.close()
            except (OSError, asyncio.IncompleteReadError):
                statuses[i] = 0
            resent += 1
        await asyncio.sleep(0.05)
    return resent


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    urls: list[str] = spec["urls"]
    payloads = [(body.encode(), authorization) for body, authorization in spec["payloads"]]
    result: dict[str, Any] = {}
    if spec["mode"] == "saturate":
        statuses, elapsed = asyncio.run(saturate(urls, payloads, spec["per_url"]))
        result["per_s"] = len(payloads) / elapsed
    else:
        statuses, latencies = asyncio.run(open_loop(urls, payloads, spec["rate"], result))
        ordered = sorted(latencies)
        result["p50_ms"] = ordered[len(ordered) // 2] * 1000
        result["p99_ms"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    first = list(statuses)
    result["answered_4xx"] = sum(400 <= s < 500 for s in first)
    result["answered_5xx"] = sum(s >= 500 for s in first)
    result["no_answer"] = sum(s == 0 for s in first)
    result["resent"] = asyncio.run(retry(urls, payloads, statuses))
    result["final_not_2xx"] = sum(not 200 <= s < 300 for s in statuses)
    return result


def ceiling(spec: dict[str, Any]) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/webhook", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"http://127.0.0.1:{port}/webhook", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Claim and record per delivery, as fast as one process goes, without HTTP."""
    from orderfsm.journal import Answer, JournalSettings, NewDelivery
    from transports.journal import SyncJournal, Taken, store_for

    settings = JournalSettings(pool_size=1)
    journal = SyncJournal(store_for(spec["url"], settings), settings)
    journal.open()
    ok, busy = Answer(204), Answer(500)
    prefix = spec["prefix"]
    count = spec["count"]
    body = b'{"notification_type": "order_paid"}'
    start = time.perf_counter()
    cpu = time.process_time()
    for i in range(count):
        delivery = NewDelivery("order_paid", f"{prefix}:{i}", i, body, (), "bench", time.time())
        begun = journal.begin(delivery, busy)
        assert isinstance(begun, Taken)
        journal.settle(begun, ok, None, busy)
    elapsed = time.perf_counter() - start
    result = {"per_s": count / elapsed, "cpu_ms": (time.process_time() - cpu) / count * 1000}
    journal.close()
    return result


def drivers(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU per claim statement: psycopg's sync connection against its async one."""
    import psycopg

    from orderfsm.journal import NewDelivery
    from transports.journal import store_for
    from transports.journal.postgres_sql import CLAIM, delivery_params

    url, count = str(spec["url"]), int(spec["count"])
    store_for(url).open()  # the schema

    def params(prefix: str, i: int) -> dict[str, Any]:
        now = time.time()
        new = NewDelivery("order_paid", f"{prefix}:{i}", i, b"{}", (), None, now)
        return {**delivery_params(new), "owner": "bench", "now": now, "lease_until": now + 60}

    result: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as connection:
        cpu = time.process_time()
        for i in range(count):
            connection.execute(CLAIM, params("sync", i)).fetchone()
        result["sync_cpu_ms"] = (time.process_time() - cpu) / count * 1000

    async def run_async() -> float:
        connection = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            cpu = time.process_time()
            for i in range(count):
                await (await connection.execute(CLAIM, params("async", i))).fetchone()
            return (time.process_time() - cpu) / count * 1000
        finally:
            await connection.close()

    result["async_cpu_ms"] = asyncio.run(run_async())
    return result


def main() -> None:
    """``MODE JSON`` or ``MODE @FILE`` (a spec too long for a command line)."""
    mode, text = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    spec = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    if mode == "ceiling":
        ceiling(spec)
        return
    worker = {"loadgen": loadgen, "floor": floor, "drivers": drivers}[mode]
    print(json.dumps(worker(spec)), flush=True)


if __name__ == "__main__":
    main()
