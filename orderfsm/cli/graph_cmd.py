"""``orderfsm graph``: print the status diagram generated from the declaration."""

from __future__ import annotations

import argparse

from orderfsm.core.graph import mermaid

HELP = "print the order status graph as a Mermaid state diagram"


def configure(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    del args
    print(mermaid(), end="")
    return 0
