"""The journal's pure part: records, decisions, URLs and settings (no I/O, no clock).

The SQL lives in ``transports.journal`` (memory, SQLite, PostgreSQL), which
follows these decisions; the webhook receiver and, later, the tracker use it.
"""

from orderfsm.journal.config import (
    JournalSettings,
    MemoryConfig,
    PostgresConfig,
    SqliteConfig,
    StoreConfig,
    parse_store_url,
)
from orderfsm.journal.decisions import (
    Busy,
    Reply,
    TryAgain,
    Verdict,
    Wait,
    after_fencing,
    judge,
    keeps,
    may_record,
    may_take,
    outcome_of,
    poll_delay,
    prunable,
    prune_cutoff,
    prune_due,
    settled,
    take,
)
from orderfsm.journal.records import (
    Answer,
    Claim,
    ClaimState,
    Delivery,
    DeliveryFilter,
    NewDelivery,
    Outcome,
)
from orderfsm.journal.schema import SCHEMA_VERSION, Migrate, schema_plan

__all__ = [
    "SCHEMA_VERSION",
    "Answer",
    "Busy",
    "Claim",
    "ClaimState",
    "Delivery",
    "DeliveryFilter",
    "JournalSettings",
    "MemoryConfig",
    "Migrate",
    "NewDelivery",
    "Outcome",
    "PostgresConfig",
    "Reply",
    "SqliteConfig",
    "StoreConfig",
    "TryAgain",
    "Verdict",
    "Wait",
    "after_fencing",
    "judge",
    "keeps",
    "may_record",
    "may_take",
    "outcome_of",
    "parse_store_url",
    "poll_delay",
    "prunable",
    "prune_cutoff",
    "prune_due",
    "schema_plan",
    "settled",
    "take",
]
