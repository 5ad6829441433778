"""Settings from the environment: ``GAME_DB`` is a PostgreSQL URL or an SQLite path."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, unquote, urlsplit

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = ["djangogame"]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",  # the webhook view is exempt
]
ROOT_URLCONF = "djangogame.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database(url: str) -> dict[str, object]:
    if not url.startswith("postgres"):
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": url}
    parts = urlsplit(url)
    options = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname,
        "PORT": str(parts.port or 5432),
        "OPTIONS": options,  # e.g. options=-c search_path=... (each test its own schema)
    }


# GAME_ALIAS: the game's tables and the journal in a database of that name, not "default"
# (then GAME_DEFAULT_DB, an SQLite path, is "default").
ALIAS = os.environ.get("GAME_ALIAS", "default")
DATABASES = {ALIAS: _database(os.environ["GAME_DB"])}
if ALIAS != "default":
    DATABASES["default"] = _database(os.environ["GAME_DEFAULT_DB"])
    DATABASE_ROUTERS = ["djangogame.routers.GameDatabase"]
# ATOMIC_REQUESTS on purpose: the webhook view opts out and opens its own transaction.
for _alias in DATABASES:
    DATABASES[_alias]["ATOMIC_REQUESTS"] = True

ORDERFSM_WEBHOOK = {
    "SECRET": os.environ.get("GAME_SECRET", "PROJECT_SECRET_KEY"),
    "TRANSACTIONAL": os.environ.get("GAME_HOOK", "djangogame.hooks.grant"),
    "DATABASE": ALIAS,
    "LEASE": 10.0,
    "WAIT": 2.0,
}
