"""Resources a transport opened and never closed, by the warnings they leave.

An HTTP client, a socket or a file left open is closed, if ever, by its
finalizer when the garbage collector gets to it, which warns with a
``ResourceWarning`` ("Unclosed client session" from aiohttp, "unclosed
<socket.socket ...>" from the socket under httpx): silenced by Python's
default filters, printed on the loop's log at best, and one descriptor lost
per order the tracker follows.  Recorded across a check, with the garbage
collected before it (what earlier code left is not the transport's) and
after the transport's tasks ended (what it left is garbage by then).

Found only once unreachable: what something else still holds is not garbage
yet (on asyncio, the loop holds a kept-alive connection's socket, and aiohttp's
connector, until their timers fire; the client session that owned them warns
at once).  The warnings filters are the process's: anything else that leaks
during the check (another task of the same loop, a thread) is recorded too.
A check is run alone in a test, where that is the transport or nothing.
"""

from __future__ import annotations

import gc
import warnings


class LeftOpen:
    """``with LeftOpen() as left_open:`` ... then ``left_open.found()``."""

    def __init__(self) -> None:
        self._catching = warnings.catch_warnings(record=True)
        self._caught: list[warnings.WarningMessage] = []

    def __enter__(self) -> LeftOpen:
        gc.collect()
        self._caught = self._catching.__enter__()
        warnings.simplefilter("always", ResourceWarning)
        return self

    def found(self) -> list[str]:
        """What was left open so far, once the garbage is collected."""
        gc.collect()
        return [str(w.message) for w in self._caught if issubclass(w.category, ResourceWarning)]

    def __exit__(self, *exc: object) -> None:
        self._catching.__exit__(None, None, None)  # it restores the filters, whatever ended
        for w in self._caught:  # the others were only borrowed: shown as they would have been
            if not issubclass(w.category, ResourceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
