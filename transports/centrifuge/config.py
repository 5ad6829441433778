"""The engine's settings: Xsolla's connect data, the endpoint, and every delay."""

from __future__ import annotations

import math

import attrs

from transports.centrifuge.errors import ConfigError

DEFAULT_ENDPOINT = "wss://ws-store.xsolla.com/connection/websocket"


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if type(value) not in (int, float) or not 0 <= value < math.inf:
        raise ConfigError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    _seconds(instance, attribute, value)
    if value == 0:
        raise ConfigError(f"{attribute.name} must be > 0")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 0:
        raise ConfigError(f"{attribute.name} must be an int >= 0, got {value!r}")


def _project_id(_: object, __: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value <= 0:
        raise ConfigError(f"project_id must be a positive int, got {value!r}")


@attrs.frozen
class EngineConfig:
    """Everything the engine needs to know up front; times are in seconds."""

    project_id: int = attrs.field(validator=_project_id)
    user_external_id: str | None = None
    endpoint: str = DEFAULT_ENDPOINT
    client_name: str = "orderfsm"
    client_version: str = ""
    min_reconnect_delay: float = attrs.field(default=0.5, validator=_positive)
    """Backoff after failed attempts starts here (centrifuge-js's default) and doubles."""
    max_reconnect_delay: float = attrs.field(default=20.0, validator=_positive)
    first_reconnect_delay: float = attrs.field(default=0.1, validator=_seconds)
    """The first reconnect after a connection that was up for ``stable_after`` waits
    a random time below this: the drop is most likely passing, and news waits."""
    stable_after: float = attrs.field(default=1.0, validator=_seconds)
    """How long a connection must have been caught up for its loss to be retried at once."""
    max_server_ping_delay: float = attrs.field(default=10.0, validator=_seconds)
    """Slack after the server's ping interval before the connection counts as dead; 0 disables."""
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    suspension_grace: float = attrs.field(default=1.0, validator=_positive)
    """A timeout noticed this late or later looks like a suspended process: wait this
    long again for queued frames before giving up (centrifuge-js #423)."""
    token_refreshes: int = attrs.field(default=1, validator=_count)
    """How many 109 "token expired" replies in a row are met with a refresh and retry."""

    def __attrs_post_init__(self) -> None:
        if self.min_reconnect_delay > self.max_reconnect_delay:
            raise ConfigError("min_reconnect_delay must not exceed max_reconnect_delay")
