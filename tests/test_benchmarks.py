"""Each benchmark runs at its ``--quick`` size, so none of them can rot.

These check that a benchmark runs and reports what it promises, and what a
small run measures honestly: a benchmark exits non-zero when ours lost,
duplicated or got wrong a single status (or crashed), at any size.  Speed is
judged by the floors of full runs, recorded in the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_KEYS = {
    "bench_core.py": {
        "obs_per_s",
        "transitions_naive_obs_per_s",
        "statemachine_obs_per_s",
        "speedup_vs_transitions",
        "speedup_vs_statemachine",
        "bytes_per_order",
        "plain_dict_bytes_per_entry",
        "bytes_vs_plain_dict",
        "add_cost_ratio",
    },
    "bench_latency.py": {
        "p50_ms",
        "p99_ms",
        "centrifuge_python_p50_ms",
        "centrifuge_python_p99_ms",
        "ratio_p50",
        "ratio_p99",
        "in_process_p50_us",
        "watch_in_process_p50_us",
        "centrifuge_python_in_process_p50_us",
        "in_process_ratio_p50",
    },
    "bench_failover.py": {
        "close_to_first_poll_ms",
        "close_to_first_poll_ratio_to_rtt",
        "stall_detect_s",
        "stall_detect_ratio",
        "final_latency_p99_ms",
        "final_latency_p99_ratio",
        "resume_to_status_ms",
        "centrifuge_python_stall_detect_s",
        "centrifuge_python_final_latency_p99_ms",
    },
    "bench_fleet.py": {
        "pg_p50_ms_50",
        "pg_p99_ms_500",
        "sqlite_p99_ms_500",
        "notify_floor_p99_ms",
        "sqlite_wake_floor_p99_ms",
        "resume_1k_s",
    },
    "bench_journal.py": {
        "ceiling_deliveries_per_s",
        "pg_deliveries_per_s_3",
        "pg_p99_ms_3",
        "pg_ratio_to_ceiling_3",
        "pg_tracked_ratio_to_ceiling_3",
        "sqlite_deliveries_per_s_3",
        "sqlite_p99_ms_3",
        "sqlite_ratio_to_ceiling_3",
        "memory_deliveries_per_s_1",
        "pg_floor_tx_per_s_3",
        "sqlite_floor_tx_per_s_3",
        "pg_sync_cpu_ms_per_tx",
        "pg_async_cpu_ms_per_tx",
    },
    "bench_scale.py": {
        "orders",
        "peak_rss_mb",
        "cpu_s",
        "events_per_s",
        "centrifuge_python_peak_rss_mb",
        "centrifuge_python_events_per_s",
        "raw_cpu_us_per_change",
        "cpu_us_per_change",
        "turns",
        "rss_ratio",
        "cpu_ratio_to_peer",
        "cpu_ratio_to_floor",
        "keeps_up",
    },
}
MAY_BE_ZERO = {
    # two turns can round to the same figure
    "bench_scale.py": ("cpu_spread", "centrifuge_python_cpu_spread", "raw_cpu_spread"),
}
NOTHING_LOST = {
    # every notification handled once, none answered 4xx, all 2xx in the end
    "bench_journal.py": ("lost", "duplicated", "answered_4xx", "final_not_2xx"),
    "bench_fleet.py": ("lost",),
    "bench_core.py": ("wrong", "transitions_wrong", "statemachine_wrong"),
    "bench_latency.py": (
        "lost",
        "duplicated",
        "watch_lost",
        "watch_duplicated",
        "centrifuge_python_lost",
    ),
    "bench_failover.py": ("lost",),
    "bench_scale.py": tuple(
        f"{client}{what}"
        for client in ("", "watch_", "raw_", "centrifuge_python_")
        for what in ("lost", "duplicated")
    ),
}


@pytest.mark.parametrize("script", sorted(EXPECTED_KEYS))
def test_benchmark_quick_run_prints_one_json_line(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, (
        f"{script} --quick failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    figures = json.loads(lines[0])
    missing = EXPECTED_KEYS[script] - figures.keys()
    assert not missing, missing
    for key in EXPECTED_KEYS[script]:
        assert isinstance(figures[key], (int, float)) and figures[key] > 0, (key, figures[key])
    for key in MAY_BE_ZERO.get(script, ()):
        assert isinstance(figures[key], (int, float)) and figures[key] >= 0, (key, figures[key])
    for key in NOTHING_LOST.get(script, ()):
        assert figures[key] == 0, (key, figures[key])
    assert set(figures["floors_met"]) <= figures.keys()
    assert figures.get("honest_failures", {}) == {}


@pytest.mark.parametrize("freeze", [[], ["--gc-freeze"]])
def test_the_scale_profile_says_where_our_cpu_goes_by_layer(freeze: list[str]) -> None:
    """The README's profile by layer comes from this flag, so it must cover our layers."""
    script = str(ROOT / "benchmarks" / "bench_scale.py")
    result = subprocess.run(
        [sys.executable, script, "--quick", "--profile", *freeze],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    [line] = result.stdout.strip().splitlines()
    figures = json.loads(line)
    shares = figures["layer_share"]
    assert abs(sum(shares.values()) - 1) < 0.01, shares
    for layer in ("centrifuge engine (sans-io)", "websocket driver", "supervisor", "core"):
        assert shares.get(layer, 0) > 0, (layer, shares)
    assert figures["calls_per_change"] > 0 and figures["lost"] == figures["duplicated"] == 0
    assert figures["gc_freeze"] is bool(freeze) and figures["gc_tracked_objects"] > 0


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_the_journal_profile_counts_each_process_cpu_per_delivery(store: str) -> None:
    """profile_journal.py's figures come from /proc over the saturation window (10 ms
    ticks: 2,000 notifications, so each process runs several): every receiver and the
    load generator used CPU, every delivery was answered 2xx."""
    script = str(ROOT / "benchmarks" / "profile_journal.py")
    result = subprocess.run(
        [sys.executable, script, "--store", store, "--count", "2000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    [line] = result.stdout.strip().splitlines()
    figures = json.loads(line)
    assert figures["sent"] == 2200 and figures["not_2xx_first"] == 0
    assert len(figures["rx_us"]) == 3 and all(us > 0 for us in figures["rx_us"])
    assert figures["gen_us"] > 0 and figures["pg_us"] == 0
    assert figures["all_us"] == figures["rx_us_total"] + figures["gen_us"]
    assert (figures["rx_threads_us"] > 0) is (store == "sqlite")  # the journal's threads
