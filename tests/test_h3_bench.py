"""bench/h3.py's HTTP/3 rows still run: a short row with pymsquic.h3 (and with
hypercorn where it is installed), in their own processes as the benchmark runs them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bench.h3 import measure
from bench.harness import make_certs

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("server", ["pymsquic-h3", "hypercorn"])
def test_h3_bench_row(server: str, tmp_path: Path) -> None:
    if server == "hypercorn" and importlib.util.find_spec("hypercorn") is None:
        pytest.skip("hypercorn is not installed (bench extra)")
    cert, key = make_certs(str(tmp_path))
    for workload, connections in (("get", 1), ("post", 16)):
        row = measure(server, cert, key, workload, connections, 20, 0.5)
        assert row["requests"] > 0 and row["rps"] > 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["client_cpu_s"] > 0 and row["server_cpu_s"] > 0
