"""``orderfsm demo``: one live order on the embedded emulator, with a failover.

The emulator plays Xsolla: a player buys an item, the order is paid, then the
WebSocket is cut (a terminal close, as when the server gives up on a
connection), and the tracker falls back to polling to see the order done.
"""

from __future__ import annotations

import argparse

from orderfsm.cli import options

HELP = "track a live order on the embedded emulator, with a WebSocket failure half-way"


def configure(parser: argparse.ArgumentParser) -> None:
    options.add_output(parser, live=True)
    parser.add_argument(
        "--step",
        type=options.positive_seconds,
        default=0.8,
        metavar="SECONDS",
        help="time between the story's steps",
    )


def run(args: argparse.Namespace) -> int:
    import functools

    import anyio

    from orderfsm.cli.interrupts import unless_interrupted

    options.check_backend(args.backend)
    demo = functools.partial(_demo, args.json, args.step)
    code: int = anyio.run(unless_interrupted, demo, backend=args.backend)
    return code


async def _demo(as_json: bool, step: float) -> int:
    import anyio

    from orderfsm.cli.failures import CommandError
    from orderfsm.cli.follow import Misconfiguration, follow
    from orderfsm.cli.views import open_view
    from orderfsm.interface import WEBSOCKET, Health, HealthReport
    from orderfsm.supervisor.policy import DefaultPolicy
    from orderfsm.supervisor.tracker import Tracker
    from transports.emulator import Emulator

    websocket_healthy = anyio.Event()

    async with Emulator(ping_interval=5.0, seed=2026) as emu:
        user = await emu.create_user("player-1")
        order_id = await emu.create_order(
            user,
            items=[{"sku": "com.example.sword", "quantity": 1, "amount": "4.99"}],
            amount="4.99",
        )
        title = f"orderfsm demo: order {order_id} of player-1, on the emulator at {emu.base_url}"
        with open_view(as_json=as_json, order_ids=[order_id], title=title, intro=True) as view:
            misconfigured = Misconfiguration(view)

            def on_report(order_id: int, report: HealthReport) -> None:
                if report.source == WEBSOCKET and report.health is Health.HEALTHY:
                    websocket_healthy.set()
                misconfigured.report(order_id, report)

            async with Tracker(
                project_id=emu.project_id,
                token=user.token,
                user_id=user.external_id,
                ws_url=emu.ws_url,
                api_url=emu.api_url,
                policy=DefaultPolicy(poll_interval=step / 2, deadline=60.0),
                on_report=on_report,
            ) as tracker:

                async def story() -> None:
                    try:
                        with anyio.fail_after(15):
                            await websocket_healthy.wait()
                    except TimeoutError:
                        stalled = "the tracker's WebSocket to the emulator not healthy in 15 s"
                        raise CommandError(stalled) from None
                    await anyio.sleep(step)
                    await emu.set_status(order_id, "paid")
                    await anyio.sleep(step)
                    view.note(order_id, "emulator: cutting the WebSocket (close 3503)")
                    await emu.close_connections(user, 3503, "force disconnect")
                    await anyio.sleep(step * 2)
                    await emu.set_status(order_id, "done")

                return await follow(tracker, [order_id], view, misconfigured, alongside=story)
    raise AssertionError("unreachable")  # pragma: no cover
