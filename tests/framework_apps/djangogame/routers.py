"""With ``GAME_ALIAS``: the game's models live in that database, as a project's own app may."""

from __future__ import annotations

from typing import Any

from django.conf import settings


class GameDatabase:
    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return (
            settings.ORDERFSM_WEBHOOK["DATABASE"] if model._meta.app_label == "djangogame" else None
        )

    db_for_write = db_for_read
