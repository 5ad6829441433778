"""PostgreSQL's statistics sample for the journal's tables: tuning, set at start.

ANALYZE samples 300 rows per unit of the largest statistics target among a
table's columns (100 by default).  The journal's tables grow by thousands of
rows a second on a new fleet, so autovacuum analyzes them every second or two
(after each 10% of growth), and at the default each pass read up to 30,000
rows, raw bodies included: 2 s of the server's CPU in 50 s of a benchmark,
all in the seconds of its 500/s run, which took its p99 from 6 to 25 ms on a
2-core host.  The journal reads by key, order id or time, on indexes over
near-uniform values, which ten buckets describe as well as a hundred: 3,000
rows a pass, a tenth of the work.

Not a schema version: nothing in it changes what a release can read, and a
version would make the release before refuse to start (a rollback, an old
instance of a rolling deploy).  Each start under the migration's lock looks
(one catalog read) and sets what is not set, columns a later version adds
included.  It waits at most 3 s for a table's lock (past PostgreSQL's
``deadlock_timeout``, after which an ordinary autovacuum gives its lock up; an
anti-wraparound one does not), and without the table's ownership, or on any
other error, it leaves the tables as they are and logs a warning: a start is
held up a few seconds at most, and never fails for it.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("orderfsm.journal")

STATISTICS_TARGET = 10
"""For every column of :data:`ANALYZED_TABLES` (PostgreSQL's default is 100)."""

ANALYZED_TABLES = ("orderfsm_claims", "orderfsm_deliveries", "orderfsm_orders", "orderfsm_changes")
"""The tables that grow with the traffic (``orderfsm_schema`` has one row)."""

_COLUMNS = (
    "FROM pg_attribute WHERE attrelid IN ({tables}) AND attnum > 0 AND NOT attisdropped"
    f" AND attstattarget IS DISTINCT FROM {STATISTICS_TARGET}"
).format(tables=", ".join(f"'{t}'::regclass" for t in ANALYZED_TABLES))

UNTUNED = f"SELECT EXISTS (SELECT 1 {_COLUMNS})"
"""Whether any column's target is not :data:`STATISTICS_TARGET` yet."""

TUNE = (
    "DO $$ DECLARE t record; BEGIN"
    " PERFORM set_config('lock_timeout', '3s', true);"
    " FOR t IN SELECT attrelid::regclass AS name, string_agg(format("
    f"'ALTER COLUMN %I SET STATISTICS {STATISTICS_TARGET}', attname), ', ') AS alters"
    f" {_COLUMNS} GROUP BY attrelid LOOP"
    " BEGIN EXECUTE format('ALTER TABLE %s %s', t.name, t.alters);"
    " EXCEPTION WHEN lock_not_available OR insufficient_privilege THEN"
    " RAISE WARNING 'orderfsm: the statistics target of % is left as it was: %',"
    " t.name, SQLERRM;"
    " END; END LOOP; END $$"
)
"""One ``ALTER TABLE`` per table with columns to set, each given up on by itself."""


def tune(connection: Any) -> None:
    """Set the statistics targets not set yet, at the end of the migration's transaction
    (its ``lock_timeout`` holds from here to the commit), in a savepoint: whatever goes
    wrong in it (a statement timeout of the role's, a read-only server) costs the
    tuning only, never the start."""
    import psycopg

    row = connection.execute(UNTUNED).fetchone()
    if row is None or not row[0]:
        return
    try:
        with connection.transaction():
            connection.execute(TUNE)
        row = connection.execute(UNTUNED).fetchone()
        left = "" if row is None or not row[0] else "a table was busy or is not this role's"
    except psycopg.Error as exc:
        left = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if left:
        logger.warning(
            "the journal's statistics targets are left as they were (%s): autovacuum's "
            "ANALYZE samples 30,000 rows of them; the next start tries again",
            left,
            extra={"event": "journal.tuning_skipped"},
        )
