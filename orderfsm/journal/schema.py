"""The journal's schema version, and what to do about the version found in a database."""

from __future__ import annotations

import attrs

from orderfsm.errors import SchemaTooNew

SCHEMA_VERSION = 4
"""Bumped with every change to the tables; each step from N-1 to N is a migration."""


@attrs.frozen
class Migrate:
    """Run the migrations after ``found`` (``0``: a fresh database) up to ``to``."""

    found: int
    to: int = SCHEMA_VERSION

    @property
    def steps(self) -> range:
        return range(self.found + 1, self.to + 1)


def schema_plan(found: int | None, supported: int = SCHEMA_VERSION) -> Migrate | None:
    """``None`` when the schema is current; :class:`SchemaTooNew` when it is from the future."""
    version = found or 0
    if version > supported:
        raise SchemaTooNew(version, supported)
    if version == supported:
        return None
    return Migrate(version, supported)
