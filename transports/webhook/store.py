"""Where the receiver remembers which notifications it has already answered.

A store maps an idempotency key to the answer given, and only ever gets an
answer after the application's handler decided it; a repeated delivery is
answered from the store without calling the handler again.  The in-memory
store forgets on restart; :class:`~transports.webhook.sqlite_store.SqliteStore`
does not.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from transports.webhook.answers import WebhookAnswer


class SeenStore(Protocol):
    async def get(self, key: str) -> WebhookAnswer | None: ...

    async def put(self, key: str, answer: WebhookAnswer) -> None:
        """Remember ``answer`` for ``key``; the first answer stored for a key wins."""
        ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """The default store: a bounded dict, oldest entries forgotten first.

    Xsolla retries for about 12 hours, so the bound only needs to cover the
    notifications of that long.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._answers: OrderedDict[str, WebhookAnswer] = OrderedDict()

    async def get(self, key: str) -> WebhookAnswer | None:
        return self._answers.get(key)

    async def put(self, key: str, answer: WebhookAnswer) -> None:
        if key in self._answers:
            return
        self._answers[key] = answer
        while len(self._answers) > self._max:
            self._answers.popitem(last=False)

    async def aclose(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._answers)
