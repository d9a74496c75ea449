"""A libmsquic source build with a build tool missing stops with one line naming the Debian package.

Each case runs ``python build_msquic.py`` (the build's own entry) on a stand-in msquic source tree,
with a private cache folder and a PATH holding links to this machine's tools minus the one left out:
the check comes before any compiling, so no real build happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every program the check looks for; each case links all that exist except its own.
TOOLS = ("cmake", "perl", "cc", "gcc", "clang", "c++", "g++", "clang++", "make", "ninja")


def tool_dir(tmp_path: Path, leave_out: tuple[str, ...]) -> Path:
    """A folder of links to the machine's build tools, without ``leave_out``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in TOOLS:
        found = shutil.which(name)
        if found and name not in leave_out:
            (bin_dir / name).symlink_to(found)
    return bin_dir


def fake_source(tmp_path: Path) -> Path:
    """Just enough of an msquic tree for build_msquic.py to get as far as building it."""
    source = tmp_path / "msquic"
    (source / "src" / "inc").mkdir(parents=True)
    (source / "src" / "inc" / "msquic.h").write_text("/* stand-in */\n")
    (source / "src" / "inc" / "msquic.ver").write_text(
        "#define VER_MAJOR 2\n#define VER_MINOR 5\n#define VER_PATCH 1\n")
    (source / "submodules" / "quictls").mkdir(parents=True)
    (source / "submodules" / "quictls" / "Configure").write_text("#!/usr/bin/env perl\n")
    return source


def run_build(tmp_path: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("CC", "CXX", "PYMSQUIC_MSQUIC_LIBRARY", "PYMSQUIC_MSQUIC_INCLUDE")}
    env.update(PATH=str(bin_dir), PYMSQUIC_CACHE_DIR=str(tmp_path / "cache"),
               PYMSQUIC_MSQUIC_SOURCE=str(fake_source(tmp_path)))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("leave_out", "what", "package"), [
    (("cmake",), "cmake", "cmake"),
    (("perl",), "perl", "perl"),
    (("cc", "gcc", "clang"), "a C compiler", "gcc"),
])
def test_missing_tool_names_its_package(tmp_path: Path, leave_out: tuple[str, ...], what: str,
                                        package: str) -> None:
    result = run_build(tmp_path, tool_dir(tmp_path, leave_out), "build_msquic.py")
    assert result.returncode != 0
    # The last line says what is missing and what to install; no traceback around it.
    last = result.stderr.strip().splitlines()[-1]
    assert f"needs {what}," in last, result.stderr
    assert f"apt-get install {package}" in last, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # Nothing was built or half-built in the cache.
    assert not list((tmp_path / "cache").glob("*/build"))


def test_all_tools_present_passes_the_check(tmp_path: Path) -> None:
    """The control: with every tool the machine has linked in, the check itself is silent."""
    for needed in ("cmake", "perl", "cc", "c++", "make"):
        if not shutil.which(needed):
            pytest.skip(f"this machine lacks {needed}")
    result = run_build(tmp_path, tool_dir(tmp_path, ()), "-c",
                       "import build_msquic; build_msquic.check_build_tools()")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
