"""The benchmark harness itself runs every workload, briefly (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Two minutes of processes and relays: run once, under the README's command, not again
# under every other Python (.ci/other-pythons deselects "slow").
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
HS_MODES = ("hs-full", "hs-resume", "hs-0rtt")


def run_bench(tmp_path: Path, impls: str, *options: str) -> tuple[dict[tuple[str, str], Any], dict[str, Any], str]:
    """``python -m bench`` for 0.3 s a row: its rows by (impl, workload), its report and its table."""
    env = {**os.environ, "BENCH_IDLE_CONNECTIONS": "20", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--impl", impls, "--duration", "0.3", "--out", str(tmp_path), *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    return {(r["impl"], r["workload"]): r for r in report["rows"]}, report, proc.stdout


def check_handshake_rows(rows: dict[tuple[str, str], Any], impl: str, modes: tuple[str, ...] = HS_MODES) -> None:
    """Each mode ran, and did what it says: tickets resumed, early data accepted."""
    for workload in modes:
        row = rows[(impl, workload)]
        assert not row["error"], (impl, workload, row["error"])
        assert row["value"] > 0 and row["connections"] > 0 and row["p50_ms"] > 0, (impl, workload, row)
        if workload == "hs-full":
            assert row["resumed"] == 0 and row["early_data"] == 0, (impl, row)
        else:  # every connection after the first carries the latest ticket
            assert row["resumed"] == row["connections"], (impl, row)
        if workload == "hs-resume":
            assert row["early_data"] == 0, (impl, row)  # the request waited for the handshake
        if workload == "hs-0rtt":
            assert row["early_data"] > 0, (impl, row)


def test_harness_runs_each_workload_briefly(tmp_path: Path) -> None:
    rows, report, stdout = run_bench(tmp_path, "native,pymsquic-asyncio,pymsquic-blocking,aioquic",
                                     "--workload", "download,upload,rps,latency,hps")
    for impl in ("native", "pymsquic-asyncio", "pymsquic-blocking", "aioquic"):
        for workload in ("download", "upload", "rps", "latency", "hps"):
            row = rows[(impl, workload)]
            assert not row["error"], (impl, workload, row["error"])
            assert row["value"] > 0 and row["client_cpu_s"] > 0
    assert rows[("pymsquic-asyncio", "rps")]["vs_native"] is not None
    assert rows[("pymsquic-asyncio", "rps")]["p99_ms"] > 0
    assert {m["impl"] for m in report["memory"]} == {"pymsquic-asyncio", "pymsquic-blocking", "aioquic"}
    assert all(m["connections"] == 20 for m in report["memory"]), report["memory"]  # each held them all
    assert "| pymsquic asyncio | download |" in stdout and report["machine"]["cores"]
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_handshake_workloads(tmp_path: Path) -> None:
    """hs-full, hs-resume and hs-0rtt for the native pair, pymsquic in both worlds and
    aioquic, two runs each (the row is their median)."""
    rows, _, stdout = run_bench(tmp_path, "native,pymsquic-asyncio,pymsquic-blocking,aioquic",
                                "--workload", ",".join(HS_MODES), "--repeat", "2", "--no-idle")
    for impl in ("native", "pymsquic-asyncio", "pymsquic-blocking", "aioquic"):
        check_handshake_rows(rows, impl)
    assert len(rows[("native", "hs-0rtt")]["runs"]) == 2
    assert rows[("pymsquic-asyncio", "hs-0rtt")]["vs_native"] is not None
    assert rows[("pymsquic-asyncio", "hs-0rtt")]["vs_aioquic"] is not None
    assert "| pymsquic asyncio | 0rtt |" in stdout and "TTFB p50 ms" in stdout


def test_handshake_workloads_in_parallel_through_the_relay(tmp_path: Path) -> None:
    """--hs-parallel loops, and --rtt's delaying relay between client and server."""
    rows, report, stdout = run_bench(tmp_path, "native,pymsquic-asyncio,pymsquic-blocking",
                                     "--workload", ",".join(HS_MODES), "--no-idle", "--hs-parallel", "3",
                                     "--rtt", "4")
    for impl in ("native", "pymsquic-asyncio", "pymsquic-blocking"):
        check_handshake_rows(rows, impl)
    assert report["hs_rtt_ms"] == 4 and report["hs_parallel"] == 3
    assert "3 connection loop(s), 4 ms round trip added by bench/relay.py" in stdout


def test_handshake_clients_against_one_server(tmp_path: Path) -> None:
    """--server: pymsquic's and aioquic's clients resume and send 0-RTT to the native msquic server."""
    rows, report, stdout = run_bench(tmp_path, "pymsquic-asyncio,aioquic", "--server", "native",
                                     "--workload", "hs-full,hs-0rtt", "--no-idle")
    for impl in ("pymsquic-asyncio", "aioquic"):
        check_handshake_rows(rows, impl, ("hs-full", "hs-0rtt"))
    assert report["server"] == "native" and "Every client talks to the native server." in stdout


def test_custom_execution_pair_and_cross_rows(tmp_path: Path) -> None:
    """native-exec runs every workload with one thread in each process (msquic's custom
    execution); --cross adds the native client -> pymsquic server and pymsquic client ->
    native server rows, against native/native; --repeat 2 keeps both runs and shows their spread."""
    workloads = ("download", "upload", "rps", "latency", "hps", "fairness", "hs-resume", "hs-0rtt")
    rows, report, stdout = run_bench(tmp_path, "native-exec,pymsquic-asyncio", "--workload", ",".join(workloads),
                                     "--repeat", "2", "--cross", "--no-idle")
    for workload in workloads:
        row = rows[("native-exec", workload)]
        assert not row["error"], (workload, row["error"])
        assert len(row["runs"]) == 2 and (row["value"] > 0 or workload == "fairness"), row
        assert row["client_threads"] == 1 and row["server_threads"] == 1, row  # no msquic thread at all
        assert rows[("native", workload)]["client_threads"] > 1  # msquic's workers
    assert rows[("native-exec", "fairness")]["p50_ms"] > 0
    check_handshake_rows(rows, "native-exec", ("hs-resume", "hs-0rtt"))
    assert rows[("native-exec", "rps")]["vs_native"] is not None
    for client, server in (("native", "pymsquic-asyncio"), ("pymsquic-asyncio", "native")):
        for workload in workloads:
            row = rows[(f"{client}->{server}", workload)]
            assert not row["error"], (client, server, workload, row["error"])
            assert (row["client"], row["server"]) == (client, server) and len(row["runs"]) == 2
            if workload != "fairness":  # the native server's FIFO may starve the requests
                assert row["value"] > 0 and row["vs_native"] is not None, row
    assert report["cross"] is True
    assert "| native client -> pymsquic asyncio server | rps |" in stdout
    assert "| pymsquic asyncio client -> native server | rps |" in stdout
    native_rps = next(line for line in stdout.splitlines() if line.startswith("| native C, custom execution | rps |"))
    low, high = min(rows[("native-exec", "rps")]["runs"]), max(rows[("native-exec", "rps")]["runs"])
    assert f"{low:,.0f}–{high:,.0f}" in native_rps  # the spread column


def test_workloads_a_pair_does_not_run_are_named() -> None:
    """A workload an implementation cannot run is listed with its reason, not left out silently."""
    sys.path.insert(0, str(REPO))
    from bench.harness import Impl, Pair, not_run, table

    qh3, native = Impl("qh3", "qh3"), Impl("native", "native C")
    pairs = [Pair("qh3", "qh3", qh3, qh3), Pair("native->qh3", "n -> q", native, qh3),
             Pair("native", "native C", native, native)]
    reasons = not_run(pairs, ["rps", "fairness", "hs-full"], {})
    assert set(reasons) == {"qh3", "native->qh3"}
    assert reasons["qh3"].startswith("fairness, hs-full (fairness: ") and "session tickets" in reasons["qh3"]
    report = {"rows": [], "labels": {p.name: p.label for p in pairs}, "memory": [], "skipped": {},
              "not_run": reasons}
    assert "- qh3 does not run fairness, hs-full (" in table(report)
