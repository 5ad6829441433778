"""orderfsm: learn, exactly once, when an Xsolla store order changes status.

The names here are the public API.  ``orderfsm.core`` is the pure state
machine; ``Tracker`` runs the transports (in ``transports``) around it.
"""

from orderfsm.core import (
    FINAL_STATUSES,
    Advanced,
    Conflict,
    Duplicate,
    Observation,
    OrderBook,
    Outcome,
    Position,
    Stale,
    Status,
    apply,
)
from orderfsm.errors import (
    ConnectionLost,
    NoSourceLeft,
    OrderFsmError,
    OrderNotFound,
    ProtocolError,
    ServiceUnavailable,
    TokenRejected,
    TrackerClosed,
    TrackingTimeout,
    TransportError,
    WrongEndpoint,
)
from orderfsm.interface import Health, HealthReport, ObservationSink, TokenProvider
from orderfsm.supervisor.custom import CustomTransport, OrderContext
from orderfsm.supervisor.policy import DefaultPolicy, Plan, Policy, Situation
from orderfsm.supervisor.records import Change, ConflictSeen, FinalResult, StatusChange, User
from orderfsm.supervisor.tracker import Tracker

__version__ = "0.1.0"

__all__ = [
    "FINAL_STATUSES",
    "Advanced",
    "Change",
    "Conflict",
    "ConflictSeen",
    "ConnectionLost",
    "CustomTransport",
    "DefaultPolicy",
    "Duplicate",
    "FinalResult",
    "Health",
    "HealthReport",
    "NoSourceLeft",
    "Observation",
    "ObservationSink",
    "OrderBook",
    "OrderContext",
    "OrderFsmError",
    "OrderNotFound",
    "Outcome",
    "Plan",
    "Policy",
    "Position",
    "ProtocolError",
    "ServiceUnavailable",
    "Situation",
    "Stale",
    "Status",
    "StatusChange",
    "TokenProvider",
    "TokenRejected",
    "Tracker",
    "TrackerClosed",
    "TrackingTimeout",
    "TransportError",
    "User",
    "WrongEndpoint",
    "__version__",
    "apply",
]
