"""What the checks drive: a source of orders whose statuses they can change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from orderfsm.supervisor.custom import OrderContext
from orderfsm.supervisor.records import User

if TYPE_CHECKING:
    from transports.emulator import EmulatorClient
    from transports.http import HttpClient

UNKNOWN_STATUS = "refunded"
"""A status outside the graph, which a transport must survive without reporting it."""


class World(Protocol):
    """The source a transport reads from, as the checks drive it.

    Orders from one world should share whatever the transport shares (the
    same user, the same stream), so that "never reports another order" means
    something.
    """

    async def new_order(self) -> OrderContext:
        """A new order in status ``new``, and what the transport gets for it."""
        ...

    async def set_status(self, order_id: int, status: str) -> None:
        """Change the order's status as the real service would announce it.

        ``status`` may be outside the graph (:data:`UNKNOWN_STATUS`); a world
        that cannot express that may do nothing.
        """
        ...

    async def disturb(self, order_id: int) -> None:
        """Feed the transport junk about this order: malformed data, errors."""
        ...


class EmulatorWorld:
    """A :class:`World` on the project's emulator, for transports that read it.

    Every order belongs to one emulator user.  ``disturb`` publishes
    malformed WebSocket publications and Event API events and makes the next
    HTTP request (Get order or ``/events``, within a second) answer 500.
    """

    def __init__(self, emulator: EmulatorClient, *, http: HttpClient | None = None) -> None:
        self.emulator = emulator
        self.http = http
        self._user: str | None = None
        self._token = ""
        self._project_id: int | None = None

    async def _provide_token(self) -> str:
        return self._token

    async def new_order(self) -> OrderContext:
        if self._user is None or self._project_id is None:
            self._project_id = int((await self.emulator.info())["project_id"])
            user = await self.emulator.create_user()
            self._user, self._token = user.external_id, user.token
        order_id = await self.emulator.create_order(self._user)
        return OrderContext(
            order_id=order_id,
            project_id=self._project_id,
            user=User(self._provide_token, self._user),
            api_url=self.emulator.api_url,
            http=self.http,
        )

    async def set_status(self, order_id: int, status: str) -> None:
        await self.emulator.set_status(order_id, status)

    async def disturb(self, order_id: int) -> None:
        assert self._user is not None, "disturb() before new_order()"
        emu, user = self.emulator, self._user
        for junk in ("garbage", {"order_id": order_id, "status": 42}, {"order_id": str(order_id)}):
            await emu.publish_raw(user, junk)
        for data in (
            "garbage",
            {"notification_type": "order_paid", "order": {"id": "not-an-id"}},
            {"notification_type": "order_refunded", "order": {"id": order_id}},
        ):
            await emu.add_event(user, data)
        await emu.get_order_fault("error", status=500, count=1, seconds=1.0, service="any")
