"""The benchmark harness itself runs every workload, briefly (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_harness_runs_each_workload_briefly(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_IDLE_CONNECTIONS": "20", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--impl", "native,pymsquic-asyncio,pymsquic-blocking,aioquic",
         "--duration", "0.3", "--out", str(tmp_path)],
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
