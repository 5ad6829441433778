"""Every mistake a new user makes is named in one line on stderr, within seconds.

Real processes against the emulator: the exit code, the one line (no
traceback), the JSON error line kept on stdout with ``--json``, and the time
it took.  Each command's error path is here.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support_cli import run, start, watch_args

from transports.emulator import Emulator

NAMED_WITHIN = 10.0
"""Seconds within which a mistake must be named (the issue's promise)."""


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    with Emulator(seed=41, ping_interval=2.0) as emulator:
        yield emulator


def new_order(emu: Emulator) -> tuple[int, str]:
    async def prepare() -> tuple[int, str]:
        user = await emu.create_user()
        return await emu.create_order(user), user.token

    return anyio.run(prepare)


def one_error_line(stderr: str, command: str = "watch") -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"orderfsm {command}: error: "), stderr
    return lines[0]


def timed_watch(emu: Emulator, order_id: int, token: str, *extra: str) -> tuple[int, str, str]:
    args = watch_args(emu, order_id, "--token-env", "T", *extra)
    started = time.monotonic()
    result = run(*args, T=token)
    assert time.monotonic() - started < NAMED_WITHIN, result
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_refused_token_in_json_mode_is_one_line_on_stderr_and_a_json_line(
    emu: Emulator, backend: str
) -> None:
    order_id, _ = new_order(emu)
    code, out, err = timed_watch(emu, order_id, "not-a-token", "--backend", backend)
    assert code == 1
    line = one_error_line(err)
    assert "TokenRejected" in line and "check the token" in line and str(order_id) in line
    last = json.loads(out.splitlines()[-1])
    assert last == {
        "order_id": order_id,
        "final": False,
        "error": "TokenRejected",
        "message": last["message"],
    }


def test_a_refused_token_in_plain_mode_is_the_same_one_line(emu: Emulator) -> None:
    order_id, _ = new_order(emu)
    args = [a for a in watch_args(emu, order_id, "--token-env", "T") if a != "--json"]
    result = run(*args, T="not-a-token")
    assert result.returncode == 1
    assert "TokenRejected" in one_error_line(result.stderr)
    assert "TokenRejected" not in result.stdout  # told once, on stderr


def test_a_wrong_project_id_is_named_as_such(emu: Emulator) -> None:
    """The emulator closes the socket with 3500 (as for a bad token) and answers Get
    order's 404: the token is good, so the project id is what is wrong."""
    order_id, token = new_order(emu)
    args = watch_args(emu, order_id, "--token-env", "T")
    args[args.index("--project-id") + 1] = str(emu.project_id + 1)
    started = time.monotonic()
    result = run(*args, T=token)
    assert time.monotonic() - started < NAMED_WITHIN
    assert result.returncode == 1
    assert "project id is probably wrong" in one_error_line(result.stderr)


@pytest.mark.parametrize("transports", ["websocket,polling", "polling"])
def test_an_api_url_without_api_is_named_at_once(emu: Emulator, transports: str) -> None:
    """A 404 that is not Xsolla's Store error (here aiohttp's own page) is a wrong URL,
    even while the WebSocket works."""
    order_id, token = new_order(emu)
    code, out, err = timed_watch(
        emu,
        order_id,
        token,
        "--api-url",
        emu.base_url,  # the emulator's root: Get order lives under /api
        "--transports",
        transports,
    )
    assert code == 1
    line = one_error_line(err)
    assert "API URL is probably wrong" in line and "not Xsolla's Store API" in line
    assert json.loads(out.splitlines()[-1])["error"] == "NotXsolla"


def test_a_timeout_says_nothing_was_seen_yet(emu: Emulator) -> None:
    order_id, token = new_order(emu)
    code, _, err = timed_watch(emu, order_id, token, "--transports", "websocket", "--timeout", "1")
    # The socket replays "new", so something was seen: the message says what.
    assert code == 5
    assert "TrackingTimeout" in one_error_line(err) and "last seen: new" in err
    code, _, err = timed_watch(
        emu,
        order_id,
        token,
        "--transports",
        "webhook",
        "--until",
        "paid",
        "--webhook-secret-env",
        "T",
        "--timeout",
        "1",
    )
    assert code == 5 and "nothing seen yet" in one_error_line(err) and "None" not in err


def test_several_orders_exit_with_the_first_that_did_not_succeed(emu: Emulator) -> None:
    async def prepare() -> tuple[list[int], str]:
        user = await emu.create_user()
        done, refunded = await emu.create_order(user), await emu.create_order(user)
        await emu.run_script(done, [(0.2, "paid"), (0.1, "done")])
        await emu.run_script(refunded, [(0.2, "paid"), (0.1, "canceled")])
        return [done, refunded], user.token

    (done, refunded), token = anyio.run(prepare)
    result = run(*watch_args(emu, done, "--order-id", str(refunded), "--token-env", "T"), T=token)
    assert result.returncode == 3, result  # done: 0, then canceled: 3
    finals = [json.loads(x) for x in result.stdout.splitlines() if '"final"' in x]
    ended = {(f["order_id"], f["status"]) for f in finals}
    assert ended == {(done, "done"), (refunded, "canceled")}
    assert result.stderr == ""  # a refund is an outcome, not an error


def test_a_busy_webhook_port_is_named(emu: Emulator) -> None:
    order_id, token = new_order(emu)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = timed_watch(
            emu,
            order_id,
            token,
            "--transports",
            "websocket,webhook",
            "--webhook-secret-env",
            "T",
            "--webhook-port",
            str(port),
        )
    assert code == 2  # a start-up problem: nothing started
    assert f"cannot listen on 127.0.0.1:{port}: address in use" in one_error_line(err)


def test_a_busy_emulator_port_is_named() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("emulator", "--port", str(port), timeout=NAMED_WITHIN)
    assert result.returncode == 2 and result.stdout == ""
    line = one_error_line(result.stderr, "emulator")
    assert f"the emulator cannot listen on 127.0.0.1:{port}: address in use" in line


W = "watch --project-id 1 --order-id 1 "
"""A watch command that is right so far."""
TO_HTTP = "must be a URL starting with http:// or https://"


@pytest.mark.parametrize(
    ("command", "named"),
    [
        ("watch --project-id 1 --order-id x", "argument --order-id: not a whole number: 'x'"),
        ("watch --project-id 0 --order-id 1", "argument --project-id: must be > 0, got '0'"),
        (W + "--transports ws", "argument --transports: invalid value 'ws'"),
        (W + "--timeout -1", "argument --timeout: must be a number of seconds >= 0, got '-1'"),
        (W + "--poll-interval 0", "argument --poll-interval: must be a number of seconds > 0"),
        (W + "--api-url store.xsolla.com/api", f"argument --api-url: {TO_HTTP}, got 'store"),
        (W + "--token-env UNSET_VAR", "argument --token-env: environment variable UNSET_VAR is"),
        (W + "--token-file /no/token", "argument --token-file: cannot read '/no/token': No such"),
        (W, "argument --token-env: a token is needed"),
        (W + "--transports webhook", "argument --transports: webhook needs --webhook-secret-env"),
        (W + "--webhook-port 70000", "argument --webhook-port: must be 0-65535"),
        ("demo --step fast", "argument --step: not a number: 'fast'"),
        ("demo --backend curio", "argument --backend: invalid choice: 'curio'"),
        ("emulator --port -1", "argument --port: must be 0-65535"),
        ("emulator --webhook-url localhost:8000", f"argument --webhook-url: {TO_HTTP}"),
        ("graph extra", "unrecognized arguments: extra"),
        ("no-such-command", "argument COMMAND: invalid choice: 'no-such-command'"),
    ],
)
def test_usage_errors_name_the_value_in_argparse_style(command: str, named: str) -> None:
    result = run(*command.split(), timeout=NAMED_WITHIN, UNSET_VAR="")
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("usage: orderfsm")  # argparse's one style: usage, then the error
    assert lines[-1].startswith("orderfsm") and ": error: " in lines[-1]
    assert named in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr


def test_a_blank_secret_is_a_usage_error_not_a_traceback() -> None:
    """Spaces given as ``--secret`` are stripped as the variable's and the file's are,
    and nothing left is a usage error (exit 2, one line), not the receiver's own check."""
    result = run("webhook-server", "--secret", "   ", "--port", "0", timeout=NAMED_WITHIN)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the webhook secret must not be empty" in result.stderr.splitlines()[-1]


def test_trio_without_its_extra_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['trio'] = None;"  # as if orderfsm[trio] was not installed
        "from orderfsm.cli import main; sys.exit(main(['demo', '--backend', 'trio']))"
    )
    started = time.monotonic()
    result = subprocess_run([sys.executable, "-c", code])
    assert time.monotonic() - started < NAMED_WITHIN
    assert result.returncode == 2
    assert "argument --backend: trio needs trio: pip install 'orderfsm[trio]'" in result.stderr
    assert "anyio[trio]" not in result.stderr


def subprocess_run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_help_shows_defaults_exit_codes_and_version() -> None:
    top = run("--help")
    assert top.returncode == 0
    assert "130 interrupted" in top.stdout and "--version" in top.stdout
    watch = run("watch", "--help")
    assert watch.returncode == 0
    text = " ".join(watch.stdout.split())  # argparse wraps lines where it likes
    for shown in (
        "(default: 600.0)",  # --timeout
        "(default: 3.0)",  # --poll-interval
        "(default: https://store.xsolla.com/api)",
        "(default: websocket,polling)",
        "3 canceled",
        "4 expired",
        "5 timed out",
        "1 error",
        "2 usage error",
        "130 interrupted",
    ):
        assert shown in text, shown
    emulator = run("emulator", "--help")
    assert "(default: 127.0.0.1)" in emulator.stdout and "130 interrupted" in emulator.stdout
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("orderfsm 0.")


def test_verbose_shows_the_traceback(emu: Emulator) -> None:
    order_id, _ = new_order(emu)
    result = run(*watch_args(emu, order_id, "--token-env", "T", "--verbose"), T="not-a-token")
    assert result.returncode == 1 and "Traceback" in result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_exits_130_quietly(emu: Emulator, backend: str) -> None:
    order_id, token = new_order(emu)
    process = start(watch_args(emu, order_id, "--token-env", "T", "--backend", backend), T=token)
    try:
        assert process.stdout is not None
        process.stdout.readline()  # it is following the order
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_a_secret_from_the_environment_is_stripped_like_one_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``export SECRET=$(cat secret.txt)`` keeps no newline, but a Kubernetes secret or an
    env file often does: a newline in the secret makes every signature wrong, and every
    ``order_paid`` a 400 (a refund at once with automatic refunds on)."""
    from orderfsm.cli.options import secret_from

    monkeypatch.setenv("XSOLLA_SECRET", "PROJECT_SECRET_KEY\n")
    (tmp_path / "secret.txt").write_text("PROJECT_SECRET_KEY\n")
    from_env = secret_from("--secret-env", "XSOLLA_SECRET", "--secret-file", None)
    from_file = secret_from("--secret-env", None, "--secret-file", str(tmp_path / "secret.txt"))
    assert from_env == from_file == "PROJECT_SECRET_KEY"
