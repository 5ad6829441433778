"""Which event loop is running, so each I/O shell can pick its library.

aiohttp only runs on asyncio; under trio the anyio-native httpx / httpx-ws
clients do the same job.  Everything above the shells is plain anyio code.
"""

from __future__ import annotations

import sniffio


def on_asyncio() -> bool:
    """True when called from asyncio; False from trio (or another anyio backend)."""
    return sniffio.current_async_library() == "asyncio"
