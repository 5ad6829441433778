"""A faithful, scriptable imitation of Xsolla's order-status services.

Serves the Centrifugo WebSocket, Get order, the Event API and the webhook
sender on loopback, for orderfsm's tests and for users' own tests.  See ``API.md``.
"""

from __future__ import annotations

from transports.emulator.client import EmulatorClient, EmulatorError
from transports.emulator.emulator import Emulator
from transports.emulator.process import EmulatorProcess
from transports.emulator.records import (
    ConnectionInfo,
    Publication,
    Stats,
    StoredEvent,
    User,
    WebhookAttempt,
)
from transports.emulator.webhooks import DEFAULT_RETRY_INTERVALS, sign

__all__ = [
    "DEFAULT_RETRY_INTERVALS",
    "ConnectionInfo",
    "Emulator",
    "EmulatorClient",
    "EmulatorError",
    "EmulatorProcess",
    "Publication",
    "Stats",
    "StoredEvent",
    "User",
    "WebhookAttempt",
    "sign",
]
