"""The command line's logging: one line per record on stderr, our loggers only.

``--log-level`` applies to the ``orderfsm`` and ``transports`` loggers; the
libraries underneath (aiohttp, httpx, hypercorn) stay at warnings.  Each
line carries the record's stable fields (``event``, ``order_id``, ``user``,
``source``, ...), which is what to grep or alert on; the message is for
people.  Nothing logged carries a token, a webhook secret, an
``Authorization`` value or a database password.
"""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
OURS = ("orderfsm", "transports")
FIELDS = (
    "event",
    "order_id",
    "user",
    "source",
    "transport",
    "status",
    "health",
    "code",
    "outcome",
    "reason",
    "answer",
    "notification_type",
    "peer",
    "seconds",
)
"""The ``extra`` fields a record may carry, in the order they are printed."""


class OneLineFormatter(logging.Formatter):
    """``time level logger: message [event=... order_id=...]``; an exception as its
    one-line summary, its traceback only when ``verbose``."""

    def __init__(self, verbose: bool) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name)
        )
        line = (
            f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d} "
            f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        )
        if fields:
            line += f" [{fields}]"
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if self.verbose:
                return line + "\n" + self.formatException(record.exc_info)
            line += f" ({type(error).__name__}: {error})"
        return " ".join(line.split())


def configure(level: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(verbose))
    for name in OURS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        logger.addHandler(handler)
        logger.propagate = False
