"""Which view tells the story: the live view on a terminal, lines or JSON otherwise."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from orderfsm.cli.follow import View
from orderfsm.cli.timeline import Timeline


def live_possible() -> bool:
    """A terminal to draw on, and rich (the ``cli`` extra) to draw with."""
    return sys.stdout.isatty() and importlib.util.find_spec("rich") is not None


@contextmanager
def open_view(
    *, as_json: bool, order_ids: Sequence[int], title: str, intro: bool = False
) -> Iterator[View]:
    """The view for this run; ``intro`` prints ``title`` first in plain mode."""
    if not as_json and live_possible():
        from orderfsm.cli.live import LiveView

        with LiveView(order_ids, title) as live:
            yield live
        return
    if intro and not as_json:
        print(title, flush=True)
    yield Timeline(as_json=as_json, orders=order_ids)
