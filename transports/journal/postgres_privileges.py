"""What a PostgreSQL role may do, asked of the catalog in SQL.

Shared by readiness (``/readyz``: may this role write a delivery?) and the prune
(may it prune the order changes?): both ask from a statement of their own, so
this builds a SQL expression, not a query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def missing_privileges(tables: Mapping[str, Sequence[str]], functions: Sequence[str] = ()) -> str:
    """SQL: the privileges of ``tables`` and ``functions`` this role lacks, as one text
    (empty when none is).  Each privilege is asked alone: ``has_table_privilege``
    given several is true if *any* is held."""
    checks = [
        (f"has_table_privilege('{table}', '{privilege}')", f"{privilege} on {table}")
        for table, privileges in tables.items()
        for privilege in privileges
    ] + [(f"has_function_privilege('{f}', 'EXECUTE')", f"EXECUTE on {f}") for f in functions]
    return (
        "concat_ws(', '"
        + "".join(f", CASE WHEN NOT {check} THEN '{named}' END" for check, named in checks)
        + ")"
    )
