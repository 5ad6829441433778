"""The journal's backends: memory (default), SQLite (one host), PostgreSQL (fleets).

``open_journal(url)`` picks one by URL.  The decisions they follow are in
``orderfsm.journal``; the exactly-once path over them is
:class:`~transports.journal.core.SyncJournal` (synchronous) and
:class:`~transports.journal.journal.Journal` (asyncio and trio).
"""

from orderfsm.journal import (
    Answer,
    Claim,
    ClaimState,
    Delivery,
    DeliveryFilter,
    JournalSettings,
    NewDelivery,
    Outcome,
    Reply,
)
from transports.journal.base import Store
from transports.journal.core import SyncJournal
from transports.journal.journal import Journal
from transports.journal.memory import MemoryStore
from transports.journal.opening import StoreUrl, open_journal, store_for
from transports.journal.steps import Ran, Taken

__all__ = [
    "Answer",
    "Claim",
    "ClaimState",
    "Delivery",
    "DeliveryFilter",
    "Journal",
    "JournalSettings",
    "MemoryStore",
    "NewDelivery",
    "Outcome",
    "Ran",
    "Reply",
    "Store",
    "StoreUrl",
    "SyncJournal",
    "Taken",
    "open_journal",
    "store_for",
]
