"""Where a delivery's CPU goes: bench_journal's saturation run, measured per process.

Starts the receivers as ``bench_journal.py`` does (real ``orderfsm
webhook-server`` processes, a do-nothing handler, 10% duplicates), warms them
up, then sends ``--count`` notifications at saturation and reads, over exactly
that window, the CPU (user + system, from ``/proc``) of each receiver and of
its threads other than the event loop's, of the PostgreSQL server (the
postmaster and every backend, reaped ones included) and of the load
generator, in microseconds per delivery sent.  The machine is shared, so
deliveries/s is noisy; CPU per delivery is what to compare (alternate runs of
two trees: the receivers run the code beside this file).

``--pgss`` adds statements per delivery (pg_stat_statements); ``--pyspy``,
``--perf`` and ``--strace`` record receiver 0 (py-spy raw stacks, strace of
its socket, lock and sleep calls) or the whole machine (perf) over the
window, to a file.  ``--ceiling`` measures the do-nothing aiohttp handler the
same way; ``--rate`` sends open loop at that rate instead (p50 / p99, as
bench_journal's latency part).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_journal import SECRET, deliveries, receivers, run_part  # noqa: E402

from transports.journal.testing import TemporaryPostgres  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
TRACED = "trace=sendto,recvfrom,futex,epoll_wait,fsync,fdatasync,clock_nanosleep,fcntl"


def _stat(path: Path) -> list[str]:
    return path.read_text().rsplit(")", 1)[1].split()


def cpu_of(pid: int, children: bool = False) -> float:
    """Seconds of CPU (user + system) of ``pid``; with ``children``, its reaped ones too."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / TICK


def threads_cpu(pid: int) -> float:
    """Seconds of CPU of ``pid``'s threads other than its main one (the event loop's)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if int(task.name) != pid:
            fields = _stat(task / "stat")
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def switches(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far (voluntary and not)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread that ended meanwhile
    return total


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(entry / "stat")[1])
            except (OSError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def server_cpu(postmaster: int | None) -> float:
    if postmaster is None:
        return 0.0
    total = cpu_of(postmaster, children=True)
    for pid in descendants(postmaster):
        try:
            total += cpu_of(pid)
        except OSError:
            continue  # ended meanwhile: counted in the postmaster's children from now
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) seconds of every CPU so far: how saturated the machine was."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


def start(commands: list[list[str]]) -> tuple[list[subprocess.Popen[str]], list[str]]:
    # The code beside this file, whichever copy (an A/B run of two trees): run from
    # its tree, since ``python -m`` puts the working directory first on the path.
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}", "SECRET": SECRET}
    processes = [
        subprocess.Popen(
            c,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=HERE.parent,
        )
        for c in commands
    ]
    urls = []
    for process in processes:
        assert process.stdout is not None
        urls.append(process.stdout.readline().strip())
        if not urls[-1].startswith("http"):
            raise RuntimeError("a server did not start")
    return processes, urls


def recorders(args: argparse.Namespace, pid: int) -> list[list[str]]:
    """The commands recording the window, each stopped by SIGINT."""
    found = []
    if args.pyspy:
        spy = str(Path(sys.executable).parent / "py-spy")
        found.append([spy, "record", "--format", "raw", "--full-filenames", "-r", "250",
                      "--nonblocking", "-t", "-p", str(pid), "-o", args.pyspy])  # fmt: skip
    if args.perf:
        found.append(["perf", "record", "-a", "-g", "-F", "999", "-o", args.perf])
    if args.strace:
        trace = os.environ.get("JPROF_TRACE", TRACED)
        found.append(["strace", "-f", "-qq", "-yy", "-e", trace, "-o", args.strace, "-p", str(pid)])
    return found


def statements(base_url: str, sent: int) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as db:
        rows = db.execute(
            "SELECT calls, total_exec_time, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
            " FROM pg_stat_statements ORDER BY calls DESC"
        ).fetchall()
    return {
        "statements_per_delivery": round(sum(r[0] for r in rows) / sent, 2),
        "statements": [[round(r[0] / sent, 3), round(r[1] * 1000 / sent, 1), r[2]] for r in rows],
    }


def measure(
    args: argparse.Namespace,
    urls: list[str],
    processes: list[subprocess.Popen[str]],
    postgres: TemporaryPostgres | None,
    folder: Path,
) -> dict[str, Any]:
    rng = random.Random(7)
    warm = deliveries(9_000_000, 300, rng)
    hot = deliveries(1_000_000, args.count, rng)
    load: dict[str, Any] = {"urls": urls, "mode": "saturate", "per_url": args.per_url}
    run_part("loadgen", {**load, "payloads": warm}, folder)
    if args.rate:
        load = {"urls": urls, "mode": "open", "rate": args.rate}
    postmaster = None
    if postgres is not None:
        postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
        if args.pgss:
            import psycopg

            with psycopg.connect(postgres.base, autocommit=True) as db:
                db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                db.execute("SELECT pg_stat_statements_reset()")
    tools = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for c in recorders(args, processes[0].pid)
    ]
    if tools:
        time.sleep(1.0)  # attached
    pids = [p.pid for p in processes]
    rx, threads, pg = (
        [cpu_of(p) for p in pids],
        [threads_cpu(p) for p in pids],
        server_cpu(postmaster),
    )
    switched = sum(switches(p) for p in pids)
    generator, box = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy()
    result = run_part("loadgen", {**load, "payloads": hot}, folder)
    generator_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rx_after, threads_after = [cpu_of(p) for p in pids], [threads_cpu(p) for p in pids]
    switched = sum(switches(p) for p in pids) - switched
    pg_after, box_after = server_cpu(postmaster), machine_busy()
    for tool in tools:
        tool.send_signal(2)
        tool.wait(timeout=120)
    per = 1e6 / len(hot)
    gen_s = (generator_after.ru_utime + generator_after.ru_stime) - (
        generator.ru_utime + generator.ru_stime
    )
    figures: dict[str, Any] = {
        "store": args.store,
        "receivers": len(processes),
        "sent": len(hot),
        "per_s": round(result["per_s"], 1) if "per_s" in result else None,
        "p50_ms": round(result["p50_ms"], 2) if "p50_ms" in result else None,
        "p99_ms": round(result["p99_ms"], 2) if "p99_ms" in result else None,
        "not_2xx_first": result["answered_5xx"] + result["no_answer"],
        "rx_us": [round((a - b) * per) for a, b in zip(rx_after, rx, strict=True)],
        "rx_threads_us": round((sum(threads_after) - sum(threads)) * per),
        "pg_us": round((pg_after - pg) * per),
        "rx_switches": round(switched / len(hot), 2),
        "gen_us": round(gen_s * per),
        "machine_busy": round((box_after[0] - box[0]) / (box_after[1] - box[1]), 3),
        "pids": {
            "receivers": pids,
            "postgres": [postmaster, *descendants(postmaster)] if postmaster else [],
        },
    }
    figures["rx_us_total"] = sum(figures["rx_us"])
    figures["all_us"] = figures["rx_us_total"] + figures["pg_us"] + figures["gen_us"]
    if args.pgss and postgres is not None:
        figures.update(statements(postgres.base, len(hot)))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("pg", "sqlite", "memory"), default="pg")
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--count", type=int, default=8000, help="notifications (10%% more sent)")
    parser.add_argument("--per-url", type=int, default=16, help="connections per receiver")
    parser.add_argument("--rate", type=float, help="open loop at this rate, for p50 / p99")
    parser.add_argument("--ceiling", action="store_true", help="the do-nothing aiohttp handler")
    parser.add_argument("--pgss", action="store_true", help="statements per delivery")
    parser.add_argument("--pyspy", metavar="PATH", help="py-spy raw stacks of receiver 0")
    parser.add_argument("--perf", metavar="PATH", help="perf record -a -g over the window")
    parser.add_argument("--strace", metavar="PATH", help="strace receiver 0 ($JPROF_TRACE)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="profile-journal-"))
    settings = ("shared_preload_libraries=pg_stat_statements",) if args.pgss else ()
    postgres = TemporaryPostgres(*settings) if args.store == "pg" else None
    try:
        store = {"sqlite": str(folder / "journal.sqlite3"), "memory": "memory:"}.get(args.store)
        if postgres is not None:
            store = postgres.url()
        assert store is not None
        if args.ceiling:
            commands = [[sys.executable, str(HERE / "_journal_load.py"), "ceiling"]]
        else:
            commands = receivers(store, args.receivers)
        processes, urls = start(commands)
        try:
            figures = measure(args, urls, processes, postgres, folder)
        finally:
            for process in processes:
                process.kill()
                process.wait()
    finally:
        if postgres is not None:
            postgres.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
