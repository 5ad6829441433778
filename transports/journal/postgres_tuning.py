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
included; at most a second's wait for a table's lock (an anti-wraparound
vacuum does not yield) and without the table's ownership it leaves the table
as it is, with a warning in the server's log: a start is never held up for it.
"""

from __future__ import annotations

from typing import Any

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
    " PERFORM set_config('lock_timeout', '1s', true);"
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
    """Set the statistics targets not set yet, inside the migration's transaction (its
    ``lock_timeout`` is the transaction's from here: nothing else follows in it)."""
    row = connection.execute(UNTUNED).fetchone()
    if row is not None and row[0]:
        connection.execute(TUNE)
