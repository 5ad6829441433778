"""A tracker pointed at the emulator, with short delays: what the tracker tests share."""

from __future__ import annotations

from typing import Any

from orderfsm.interface import TokenProvider
from orderfsm.supervisor.policy import DefaultPolicy
from orderfsm.supervisor.tracker import Tracker
from transports.centrifuge import EngineConfig
from transports.emulator import Emulator, User

FAST = DefaultPolicy(poll_interval=0.05, deadline=30.0)


def emulator_tracker(
    emu: Emulator,
    user: User,
    *,
    token: TokenProvider | str | None = None,
    max_server_ping_delay: float = 5.0,
    min_reconnect_delay: float = 0.05,
    max_reconnect_delay: float = 0.2,
    first_reconnect_delay: float = 0.1,
    stable_after: float = 1.0,
    **options: Any,
) -> Tracker:
    """A generous ``max_server_ping_delay`` by default: the emulator's pings share a
    thread (and the GIL) with the tests, and a late one would start polling.
    ``token`` replaces the user's own (a token callable under test)."""
    options.setdefault("policy", FAST)
    return Tracker(
        project_id=emu.project_id,
        token=user.token if token is None else token,
        user_id=user.external_id,
        ws_url=emu.ws_url,
        api_url=emu.api_url,
        websocket_options={
            "config": EngineConfig(
                project_id=emu.project_id,
                min_reconnect_delay=min_reconnect_delay,
                max_reconnect_delay=max_reconnect_delay,
                max_server_ping_delay=max_server_ping_delay,
                first_reconnect_delay=first_reconnect_delay,
                stable_after=stable_after,
            )
        },
        **options,
    )
