"""The benchmark harness itself runs every workload, briefly (no timing assertions)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import pymsquic

REPO = Path(__file__).resolve().parent.parent
HS_MODES = ("hs-full", "hs-resume", "hs-0rtt")


def run_bench(tmp_path: Path, impls: str, *options: str) -> tuple[dict[tuple[str, str], Any], str]:
    env = {**os.environ, "BENCH_IDLE_CONNECTIONS": "20", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--impl", impls, "--duration", "0.3", "--out", str(tmp_path), *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    return {(r["impl"], r["workload"]): r for r in report["rows"]}, proc.stdout


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
    env = {**os.environ, "BENCH_IDLE_CONNECTIONS": "20", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--impl", "native,pymsquic-asyncio,pymsquic-blocking,aioquic",
         "--workload", "download,upload,rps,latency,hps", "--duration", "0.3", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["impl"], r["workload"]): r for r in report["rows"]}
    for impl in ("native", "pymsquic-asyncio", "pymsquic-blocking", "aioquic"):
        for workload in ("download", "upload", "rps", "latency", "hps"):
            row = rows[(impl, workload)]
            assert not row["error"], (impl, workload, row["error"])
            assert row["value"] > 0 and row["client_cpu_s"] > 0
    assert rows[("pymsquic-asyncio", "rps")]["vs_native"] is not None
    assert rows[("pymsquic-asyncio", "rps")]["p99_ms"] > 0
    assert {m["impl"] for m in report["memory"]} == {"pymsquic-asyncio", "pymsquic-blocking", "aioquic"}
    assert all(m["connections"] == 20 for m in report["memory"]), report["memory"]  # each held them all
    assert "| pymsquic asyncio | download |" in proc.stdout and report["machine"]["cores"]
    assert (tmp_path / "chart.png").stat().st_size > 1000


def test_handshake_workloads_native_and_aioquic(tmp_path: Path) -> None:
    """hs-full, hs-resume and hs-0rtt for the native pair and aioquic, two runs each
    (the row is their median), and pymsquic's full handshakes beside them."""
    rows, stdout = run_bench(tmp_path, "native,aioquic,pymsquic-asyncio,pymsquic-blocking",
                             "--workload", ",".join(HS_MODES), "--repeat", "2", "--no-idle")
    check_handshake_rows(rows, "native")
    check_handshake_rows(rows, "aioquic")
    for impl in ("pymsquic-asyncio", "pymsquic-blocking"):
        check_handshake_rows(rows, impl, ("hs-full",))
    assert len(rows[("native", "hs-0rtt")]["runs"]) == 2
    assert rows[("aioquic", "hs-0rtt")]["vs_native"] is not None
    assert "| native C (libmsquic) | 0rtt |" in stdout and "TTFB p50 ms" in stdout


@pytest.mark.skipif("session_ticket" not in inspect.signature(pymsquic.asyncio.connect).parameters,
                    reason="waiting for pymsquic's resumption API (branch i10-resume)")
def test_handshake_workloads_pymsquic_resumption(tmp_path: Path) -> None:
    """pymsquic's hs-resume and hs-0rtt rows, in both worlds, really resume and send 0-RTT."""
    rows, _ = run_bench(tmp_path, "pymsquic-asyncio,pymsquic-blocking", "--workload", ",".join(HS_MODES),
                        "--no-idle", "--hs-parallel", "2")
    check_handshake_rows(rows, "pymsquic-asyncio")
    check_handshake_rows(rows, "pymsquic-blocking")
