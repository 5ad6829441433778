"""Where a client's CPU goes, by layer of the stack: ``bench_scale.py --profile``.

cProfile's own time per function (``tottime``: not its callees), summed by the
layer the function's file belongs to.  The profiler slows Python calls more
than C calls, so the shares lean towards Python-heavy layers; they tell where
to look, and the README's figures come from here rather than from a hand-made
profile.  The garbage collector is not a function: its pauses land in
whatever function triggered them, and its share of the window's CPU is
reported apart (``gc_share``, from the benchmark's GC callbacks).
"""

from __future__ import annotations

import pstats
from typing import Any

_BY_PATH = (
    ("/orderfsm/core/", "core"),
    ("/orderfsm/supervisor/", "supervisor"),
    ("/orderfsm/", "orderfsm (other)"),
    ("/transports/centrifuge/connection.py", "websocket driver"),
    ("/transports/centrifuge/subscribers.py", "websocket driver"),
    ("/transports/centrifuge/pool.py", "websocket driver"),
    ("/transports/centrifuge/aiohttp_socket.py", "websocket driver"),
    ("/transports/centrifuge/", "centrifuge engine (sans-io)"),
    ("/transports/", "transports (other)"),
    ("/anyio/", "anyio"),
    ("/aiohttp/", "aiohttp"),
    ("/asyncio/", "asyncio loop"),
    ("/selectors.py", "asyncio loop"),
    ("/json/", "json"),
    ("/benchmarks/", "benchmark's own counting"),
    ("<attrs generated", "attrs records"),
)
_BUILTINS = (
    ("json", "json"),
    ("epoll", "asyncio loop"),
    ("_socket", "socket calls"),
    ("_ssl", "socket calls"),
    ("_asyncio", "asyncio loop"),
    ("_contextvars", "asyncio loop"),
)


def layer_of(filename: str, function: str) -> str:
    if filename == "~":  # a C function: its name says what it is
        for needle, layer in _BUILTINS:
            if needle in function:
                return layer
        return "builtins (called from any layer)"
    path = filename.replace("\\", "/")
    for needle, layer in _BY_PATH:
        if needle in path:
            return layer
    return "other"


def by_layer(stats: pstats.Stats, changes: int) -> dict[str, Any]:
    """Shares of the profiled time by layer, the busiest functions, calls per change."""
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    layers: dict[str, float] = {}
    functions: list[tuple[float, str]] = []
    calls = 0
    for (filename, line, function), (_, ncalls, tottime, _, _) in table.items():
        layer = layer_of(filename, function)
        layers[layer] = layers.get(layer, 0.0) + tottime
        calls += ncalls
        where = "/".join(filename.rsplit("/", 2)[-2:]) + f":{line} " if filename != "~" else ""
        functions.append((tottime, f"{where}{function}"))
    total = sum(layers.values()) or 1.0
    return {
        "profiled_s": round(total, 3),
        "layer_share": {
            k: round(v / total, 3) for k, v in sorted(layers.items(), key=lambda kv: -kv[1])
        },
        "calls_per_change": round(calls / max(changes, 1), 1),
        "busiest": [f"{t / total:.3f} {name}" for t, name in sorted(functions, reverse=True)[:15]],
    }
