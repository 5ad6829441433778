"""``orderfsm demo``: one live order on the embedded emulator, with a failover.

The emulator plays Xsolla: a player buys an item, the order is paid, then the
WebSocket is cut (a terminal close, as when the server gives up on a
connection), and the tracker falls back to polling to see the order done.
"""

from __future__ import annotations

import argparse

HELP = "track a live order on the embedded emulator, with a WebSocket failure half-way"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop to run on"
    )
    parser.add_argument(
        "--step", type=float, default=0.8, metavar="SECONDS", help="time between story steps"
    )


def run(args: argparse.Namespace) -> int:
    import anyio

    code: int = anyio.run(_demo, args.json, args.step, backend=args.backend)
    return code


async def _demo(as_json: bool, step: float) -> int:
    import anyio

    from orderfsm.cli.follow import follow
    from orderfsm.cli.timeline import Timeline
    from orderfsm.interface import WEBSOCKET, Health, HealthReport
    from orderfsm.supervisor.policy import DefaultPolicy
    from orderfsm.supervisor.tracker import Tracker
    from transports.emulator import Emulator

    timeline = Timeline(as_json=as_json)
    websocket_healthy = anyio.Event()

    def on_report(order_id: int, report: HealthReport) -> None:
        if report.source == WEBSOCKET and report.health is Health.HEALTHY:
            websocket_healthy.set()
        timeline.report(order_id, report)

    async with Emulator(ping_interval=5.0, seed=2026) as emu:
        user = await emu.create_user("player-1")
        order_id = await emu.create_order(
            user,
            items=[{"sku": "com.example.sword", "quantity": 1, "amount": "4.99"}],
            amount="4.99",
        )
        if not as_json:
            print(f"orderfsm demo: order {order_id} of player-1, on the emulator at {emu.base_url}")
        policy = DefaultPolicy(poll_interval=step / 2, deadline=60.0)
        async with Tracker(
            project_id=emu.project_id,
            token=user.token,
            user_id=user.external_id,
            ws_url=emu.ws_url,
            api_url=emu.api_url,
            policy=policy,
            on_report=on_report,
        ) as tracker:

            async def story() -> None:
                with anyio.fail_after(15):
                    await websocket_healthy.wait()
                await anyio.sleep(step)
                await emu.set_status(order_id, "paid")
                await anyio.sleep(step)
                timeline.note(order_id, "emulator: cutting the WebSocket (close 3503)")
                await emu.close_connections(user, 3503, "force disconnect")
                await anyio.sleep(step * 2)
                await emu.set_status(order_id, "done")

            async with anyio.create_task_group() as tg:
                tg.start_soon(story)
                code = await follow(tracker, order_id, timeline)
                tg.cancel_scope.cancel()
    return code
