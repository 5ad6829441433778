"""A tracker process of the fleet tests: follows orders through the emulator and a journal.

``python tests/fleet_tracker.py JOURNAL EMULATOR SETUP --backend B`` where SETUP
is a JSON file ``{"tokens": {user: token}, "orders": [[order_id, user], ...]}``.
It tracks every order (a restarted process takes its own back from the
journal instead, and those nobody follows, asking ``token_for``), grants each
settled order in the journal's transaction (``grants(order_id, status)``),
prints ``TRACKING [order ids]`` (what it follows once started), ``READY``
once running and one JSON line per result its waiters got, and runs until
killed.  ``--lease S`` sets the lease (1 s by default, for quick takeovers);
``--instance NAME`` names the instance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import anyio

from orderfsm.errors import OrderFsmError
from orderfsm.supervisor.fleet import Settled
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from transports.centrifuge import EngineConfig
from transports.emulator import EmulatorClient

POLICY = DefaultPolicy(poll_interval=0.2, deadline=120.0, expired_grace=5.0)


def grant(event: Settled, connection: Any) -> None:
    mark = "?" if type(connection).__module__.startswith("sqlite3") else "%s"
    connection.execute(
        f"INSERT INTO grants (order_id, status) VALUES ({mark}, {mark})",
        (event.order_id, event.status.value),
    )


async def main(
    journal: str,
    emulator: str,
    setup: dict[str, Any],
    fresh: bool,
    lease: float,
    instance: str | None,
) -> None:
    tokens: dict[str, str] = setup["tokens"]
    emu = EmulatorClient(emulator)
    info = await emu.info()
    project_id = int(info["project_id"])
    config = EngineConfig(project_id=project_id, min_reconnect_delay=0.05, max_reconnect_delay=0.5)
    async with (
        Tracker(
            project_id=project_id,
            ws_url=emu.ws_url,
            api_url=emu.api_url,
            journal=journal,
            token_for=lambda order_id, user: tokens[user or ""],
            on_settled_transactional=grant,
            policy=POLICY,
            lease=lease,
            instance=instance,
            websocket_options={"config": config},
        ) as tracker,
        anyio.create_task_group() as tg,
    ):
        if fresh:
            for order_id, user in setup["orders"]:
                tracker.track(order_id, token=tokens[user], user_id=user)

        async def wait(order_id: int) -> None:
            try:
                result = await tracker.wait(order_id)
            except OrderFsmError as exc:
                print(json.dumps({"order_id": order_id, "error": type(exc).__name__}), flush=True)
                return
            print(json.dumps({"order_id": order_id, "status": result.status.value}), flush=True)

        for order_id in list(tracker._orders):
            tg.start_soon(wait, order_id)
        print(f"TRACKING {json.dumps(sorted(tracker._orders))}", flush=True)
        print("READY", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("journal")
    parser.add_argument("emulator")
    parser.add_argument("setup")
    parser.add_argument("--backend", default="asyncio")
    parser.add_argument("--resume", action="store_true", help="restarted: resume, track nothing")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--instance", default=None)
    args = parser.parse_args()
    setup = json.loads(Path(args.setup).read_text())
    fresh = not args.resume
    anyio.run(
        main, args.journal, args.emulator, setup, fresh, args.lease, args.instance,
        backend=args.backend,
    )  # fmt: skip
    sys.exit(0)
