"""``orderfsm COMMAND --help`` tells the truth: every default, and only the options a verb uses.

The README promises every option shows its default; a help that leaves one out
(argparse compares defaults with ==, so 0 read as False) or offers an option
the verb ignores sends an operator guessing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from orderfsm.cli import build_parser


def commands(
    parser: argparse.ArgumentParser, name: str = "orderfsm"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")


def flat(text: str) -> str:
    return " ".join(text.split())  # argparse wraps lines where it likes


def test_every_option_with_a_default_shows_it_zero_included() -> None:
    for name, parser in commands(build_parser()):
        shown = "".join(parser.format_help().split())  # a long default is broken at a hyphen
        for action in parser._actions:
            default = action.default
            if not action.option_strings or action.nargs == 0:  # a flag: given or not
                continue
            if default is None or default is False:
                continue
            if default is argparse.SUPPRESS or isinstance(action, argparse._VersionAction):
                continue
            assert f"(default:{default})".replace(" ", "") in shown, (name, action.option_strings)


def test_an_option_without_a_default_says_what_leaving_it_out_does() -> None:
    emulator = flat(dict(commands(build_parser()))["orderfsm emulator"].format_help())
    assert (
        "--webhook-url URL where to send webhooks (default: none: no webhook is sent)" in emulator
    )


def test_the_reading_verbs_offer_no_write_options_and_no_memory_default() -> None:
    found = dict(commands(build_parser()))
    for verb in ("list", "show"):
        text = flat(found[f"orderfsm webhooks {verb}"].format_help())
        assert "--wait" in text  # bounds each read
        assert "--lease" not in text and "--retention-days" not in text, verb
        assert "default: memory" not in text, verb  # --store is required there
    replay = flat(found["orderfsm webhooks replay"].format_help())
    assert "--lease" in replay and "--retention-days" in replay  # a replay writes claims
    assert "default: memory" not in replay
    assert "1 one failed again, did not verify with the secret or was not found" in replay
    server = flat(found["orderfsm webhook-server"].format_help())
    assert "default: memory (one process, forgotten on exit)" in server
