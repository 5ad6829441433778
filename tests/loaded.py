"""Run pytest with CPU-bound neighbours, to prove the suite's margins hold on a loaded machine.

    python tests/loaded.py [--neighbours 2] [--repeat N] [-- PYTEST ARGS...]

Starts ``--neighbours`` processes that spin in a busy loop (a ``stress``-like
load, one per core of a 2-core CI machine), runs ``python -m pytest ARGS``
``--repeat`` times in a row beside them, stops them, and prints one line per
run and a summary.  Exits non-zero if any run failed.  Not collected by
pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import time


def spin() -> None:
    """Burn one core until terminated."""
    n = 0
    while True:
        n = (n * 1103515245 + 12345) & 0xFFFFFFFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--neighbours", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    neighbours = [
        multiprocessing.Process(target=spin, name=f"busy-{i}", daemon=True)
        for i in range(args.neighbours)
    ]
    for process in neighbours:
        process.start()
    failed = 0
    try:
        for run in range(1, args.repeat + 1):
            start = time.monotonic()
            result = subprocess.run(
                [sys.executable, "-m", "pytest", *pytest_args],
                capture_output=True,
                text=True,
                check=False,
            )
            lines = result.stdout.strip().splitlines()
            summary = lines[-1] if lines else result.stderr.strip()[-200:]
            seconds = time.monotonic() - start
            print(f"run {run}/{args.repeat}: exit {result.returncode}, {seconds:.1f} s: {summary}")
            if result.returncode != 0:
                failed += 1
                print(result.stdout[-20000:], file=sys.stderr)
            sys.stdout.flush()
    finally:
        for process in neighbours:
            process.terminate()
        for process in neighbours:
            process.join()
    passed = args.repeat - failed
    print(f"{passed} of {args.repeat} runs passed beside {args.neighbours} busy loops")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
