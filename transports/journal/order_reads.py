"""The fleet tracker's reads of the journal, both backends: orders' rows, changes
past per-order cursors (or, on SQLite only, past a global mark), and where expired
orders' verdicts stand (their rows and their expired calls' claims).  Each
function runs inside a read the store opened."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orderfsm.core import LAPSED_STATUSES
from orderfsm.journal.orders import ChangeRow, Lapse, OrderRow, lapse_verdict, settled_key
from transports.journal.order_rows import (
    CHANGE_COLUMNS,
    ORDER_COLUMNS,
    change_from_row,
    chunks,
    in_dialect,
    marks,
    order_from_row,
)


def orders(db: Any, dialect: str, order_ids: Sequence[int]) -> dict[int, OrderRow]:
    found: dict[int, OrderRow] = {}
    for chunk in chunks(order_ids):
        rows = db.execute(
            in_dialect(
                dialect,
                f"SELECT {ORDER_COLUMNS} FROM orderfsm_orders"
                f" WHERE order_id IN ({marks(len(chunk), dialect)})",
            ),
            tuple(chunk),
        ).fetchall()
        found.update((int(r[0]), order_from_row(r)) for r in rows)
    return found


def tracked_ids(db: Any, dialect: str, ids: Sequence[int]) -> set[int]:
    """Which of these orders an instance tracked (ever: ``tracked_at`` is never cleared)."""
    found: set[int] = set()
    for chunk in chunks(ids):
        rows = db.execute(
            in_dialect(
                dialect,
                "SELECT order_id FROM orderfsm_orders WHERE tracked_at IS NOT NULL"
                f" AND order_id IN ({marks(len(chunk), dialect)})",
            ),
            list(chunk),
        ).fetchall()
        found.update(int(row[0]) for row in rows)
    return found


def lapse_verdicts(
    db: Any, dialect: str, order_ids: Sequence[int], owner: str, now: float
) -> dict[int, tuple[Lapse, int]]:
    """Where the fleet's verdict on each of these expired orders' grace stands
    (:func:`~orderfsm.journal.orders.lapse_verdict`), with the version its row has: an
    instance applies every change up to it before it settles as told."""
    (lapsed,) = LAPSED_STATUSES
    rows = orders(db, dialect, order_ids)
    claimed: set[int] = set()
    for chunk in chunks(order_ids):
        keys = {settled_key(i, lapsed): i for i in chunk}
        found = db.execute(
            in_dialect(
                dialect,
                f"SELECT key FROM orderfsm_claims WHERE key IN ({marks(len(keys), dialect)})",
            ),
            tuple(keys),
        ).fetchall()
        claimed.update(keys[str(r[0])] for r in found)
    verdicts: dict[int, tuple[Lapse, int]] = {}
    for order_id in order_ids:
        row = rows.get(order_id)
        stands = lapse_verdict(row, order_id in claimed, owner, now)
        verdicts[order_id] = (stands, 0 if row is None else row.version)
    return verdicts


def changes_after(db: Any, dialect: str, cursors: Mapping[int, int]) -> list[ChangeRow]:
    """Every change past each order's cursor (its last version applied), in order."""
    found: list[ChangeRow] = []
    ids = sorted(cursors)
    for chunk in chunks(ids):
        low = min(cursors[i] for i in chunk)
        rows = db.execute(
            in_dialect(
                dialect,
                f"SELECT {CHANGE_COLUMNS} FROM orderfsm_changes"
                f" WHERE order_id IN ({marks(len(chunk), dialect)}) AND version > %s"
                f" ORDER BY order_id, version",
            ),
            (*chunk, low),
        ).fetchall()
        found += [c for c in map(change_from_row, rows) if c.version > cursors[c.order_id]]
    return found


def changes_since(db: Any, after_seq: int) -> tuple[list[ChangeRow], int]:
    """SQLite only: changes committed after ``after_seq``, and the new mark.

    Safe there because writers take turns: a row's ``seq`` is given and
    committed before the next writer begins, so no later commit can land
    behind the mark.  PostgreSQL's writers overlap: there, read per order.
    """
    rows = db.execute(
        f"SELECT seq, {CHANGE_COLUMNS} FROM orderfsm_changes WHERE seq > ? ORDER BY seq",
        (after_seq,),
    ).fetchall()
    mark = int(rows[-1][0]) if rows else after_seq
    return [change_from_row(r[1:]) for r in rows], mark


def last_seq(db: Any) -> int:
    row = db.execute("SELECT coalesce(max(seq), 0) FROM orderfsm_changes").fetchone()
    return int(row[0])
