"""The package as users get it: a wheel that carries libmsquic, and the demo command."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def test_wheel_bundles_libmsquic_and_loads_it_through_origin_rpath(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=900, env=_clean_env(),
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # The second build of the same msquic must come from the cache, not CMake.
    assert "libmsquic 2.5" in build.stdout + build.stderr
    assert "from cache" in build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("pymsquic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pymsquic/libmsquic.so.2" in names
    assert any(n.startswith("pymsquic/_msquic") and n.endswith(".so") for n in names)
    assert "pymsquic/py.typed" in names
    assert not any("msquic.h" in n or n.endswith(".c") for n in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = _clean_env()
    env["PYTHONPATH"] = str(site)
    probe = subprocess.run(
        [sys.executable, "-c", "import pymsquic; print(pymsquic.__file__); print(pymsquic.msquic_version())"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, version = probe.stdout.split()
    assert module_file.startswith(str(site)) and version.startswith("2.5.")
    readelf = subprocess.run(["readelf", "-d", *site.glob("pymsquic/_msquic*.so")], capture_output=True, text=True)
    if readelf.returncode == 0:
        assert "$ORIGIN" in readelf.stdout and "libmsquic.so.2" in readelf.stdout


def test_demo_command(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pymsquic", "demo", "--clients", "3", "--megabytes", "2"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("verified handshake in") == 3
    assert "datagram echoed: True" in proc.stdout
    assert "intact: True" in proc.stdout and "Gbit/s" in proc.stdout
    assert "server closed cleanly" in proc.stdout
