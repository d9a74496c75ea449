"""The package as users get it: a wheel that carries libmsquic, the demo command, the sanitizer build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _source_copy(dest: Path) -> Path:
    """The checkout's source files (tracked, or new and not ignored), without its
    build output: an in-place build/ would put stale modules into a wheel."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # not a file deleted since its last commit
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_wheel_bundles_libmsquic_and_loads_it_through_origin_rpath(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "source")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=900, env=_clean_env(),
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # The second build of the same msquic must come from the cache, not CMake.
    assert "libmsquic 2.5" in build.stdout + build.stderr
    assert "from cache" in build.stdout + build.stderr
    (wheel,) = (tmp_path / "dist").glob("pymsquic-*.whl")
    # One wheel for every Python 3.10+: the module uses the limited API.
    assert wheel.name.endswith("-cp310-abi3-linux_x86_64.whl"), wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "pymsquic/libmsquic.so.2" in names
    # Every module of the tree, the subpackages' too (pymsquic._core, .asyncio, .sync).
    modules = {path.relative_to(REPO).as_posix() for path in (REPO / "pymsquic").rglob("*.py")}
    assert {"pymsquic/_core/__init__.py", "pymsquic/asyncio/__init__.py", "pymsquic/sync/__init__.py"} <= modules
    assert modules <= set(names), sorted(modules - set(names))
    assert any(n.startswith("pymsquic/_msquic") and n.endswith(".so") for n in names)
    assert "pymsquic/py.typed" in names
    assert not any("msquic.h" in n or n.endswith(".c") for n in names)

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = _clean_env()
    env["PYTHONPATH"] = str(site)
    probe = subprocess.run(
        [sys.executable, "-c", "import pymsquic, pymsquic._core.stream, pymsquic.asyncio, pymsquic.sync; "
         "print(pymsquic.__file__, pymsquic._core.stream.__file__, pymsquic.asyncio.__file__, "
         "pymsquic.sync.__file__); print(pymsquic.msquic_version())"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    *module_files, version = probe.stdout.split()
    assert len(module_files) == 4 and all(f.startswith(str(site)) for f in module_files), module_files
    assert version.startswith("2.5.")
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


def _build_in_place(tree: Path, sanitize: str | None) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    env.pop("PYMSQUIC_SANITIZE", None)
    if sanitize is not None:
        env["PYMSQUIC_SANITIZE"] = sanitize
    return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # four builds of the extension: their logic is no Python's, run once (under 3.11)
def test_sanitize_switch_instruments_the_extension_and_never_reuses_the_other_mode(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    for name in ("build_msquic.py", "setup.py", "pyproject.toml", "CMakeLists.txt", "README.md"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes((REPO / name).read_bytes())
    for folder in ("native", "pymsquic"):
        for source in (REPO / folder).rglob("*.[chp]*"):  # pymsquic's subpackages too
            if source.suffix in (".c", ".h", ".py") and "__pycache__" not in source.parts:
                target = tree / source.relative_to(REPO)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.read_bytes())

    def built() -> tuple[Path, bytes]:
        (ext,) = (tree / "pymsquic").glob("_msquic*.so")
        return ext, ext.read_bytes()

    asan = _build_in_place(tree, "address")
    assert asan.returncode == 0, asan.stderr[-3000:]
    ext, data = built()
    assert b"PYMSQUIC_SANITIZE=address\0" in data and b"libasan.so" in data and b"libubsan.so" in data

    tsan = _build_in_place(tree, "thread")
    assert tsan.returncode == 0, tsan.stderr[-3000:]
    assert "rebuilding pymsquic._msquic" in tsan.stderr
    ext, data = built()
    assert b"PYMSQUIC_SANITIZE=thread\0" in data and b"libtsan.so" in data and b"libasan.so" not in data

    # Same sources, no sanitizer: build_ext must not keep the instrumented module.
    plain = _build_in_place(tree, None)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "rebuilding pymsquic._msquic" in plain.stderr
    ext, data = built()
    assert b"PYMSQUIC_SANITIZE=none\0" in data and b"libasan.so" not in data
    stamp = ext.stat().st_mtime_ns

    # Nothing changed: the up-to-date module is kept.
    again = _build_in_place(tree, "none")
    assert again.returncode == 0 and "rebuilding" not in again.stderr
    assert ext.stat().st_mtime_ns == stamp

    bad = _build_in_place(tree, "memory")
    assert bad.returncode != 0 and "PYMSQUIC_SANITIZE='memory' is not supported" in bad.stderr


def test_build_tools_run_without_a_preloaded_sanitizer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under tools/sanitize.sh every child inherits LD_PRELOAD=libasan; rustc (cargo
    # fetch, in every build) dies with SIGSEGV under it.
    monkeypatch.syspath_prepend(str(REPO))
    import build_msquic

    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/gcc/libasan.so /opt/libkeep.so:/usr/lib/gcc/libtsan.so.2")
    assert build_msquic.tool_env()["LD_PRELOAD"] == "/opt/libkeep.so"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/gcc/libasan.so")
    assert "LD_PRELOAD" not in build_msquic.tool_env()


def test_instrumenting_libmsquic_too_is_opt_in_and_cached_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    import build_msquic

    monkeypatch.delenv("PYMSQUIC_SANITIZE_MSQUIC", raising=False)
    # Without the opt-in every mode shares the one cached Release build.
    for mode in ("", "address", "thread"):
        assert build_msquic.msquic_cmake_options(mode) == build_msquic.CMAKE_OPTIONS
    monkeypatch.setenv("PYMSQUIC_SANITIZE_MSQUIC", "1")
    assert build_msquic.msquic_cmake_options("") == build_msquic.CMAKE_OPTIONS
    assert build_msquic.msquic_cmake_options("address")["QUIC_ENABLE_SANITIZERS"] == "ON"
    assert "-fsanitize=thread" in build_msquic.msquic_cmake_options("thread")["CMAKE_C_FLAGS"]


def test_sdist_after_an_in_place_build_ships_sources_not_built_files(tmp_path: Path) -> None:
    tree = _source_copy(tmp_path / "source")
    # What an editable or --inplace build leaves in the tree (stand-ins: the sdist must not look inside).
    for built in ("pymsquic/libmsquic.so.2", "pymsquic/_msquic.abi3.so", "pymsquic/THIRD_PARTY_NOTICES",
                  "pymsquic/_msquic.c", "build/lib/pymsquic/_msquic.abi3.so", "native/runtime.o"):
        (tree / built).parent.mkdir(parents=True, exist_ok=True)
        (tree / built).write_bytes(b"built")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")], cwd=tree,
                          capture_output=True, text=True, timeout=300, env=_clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sdist,) = (tmp_path / "dist").glob("pymsquic-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("build_msquic.py", "CMakeLists.txt", "LICENSE", "README.md", "native/pymsquic.h",
                   "native/internal.h", "pymsquic/py.typed", "pymsquic/_msquic.pyi"):
        assert needed in names, needed
    leaked = sorted(n for n in names if n.startswith("build/") or n.endswith((".so", ".so.2", ".o", "_msquic.c"))
                    or "THIRD_PARTY_NOTICES" in n)
    assert not leaked, leaked


def _copy_msquic(dest: Path) -> tuple[Path, Path]:
    """A copy of the cached libmsquic's headers and library, to change under the extension."""
    sys.path.insert(0, str(REPO))
    try:
        import build_msquic
    finally:
        sys.path.remove(str(REPO))
    ms = build_msquic.locate_msquic()
    shutil.copytree(ms.include_dir, dest / "include")
    (dest / "lib").mkdir()
    shutil.copy2(ms.library, dest / "lib" / "libmsquic.so.2")
    return dest / "include", dest / "lib" / "libmsquic.so.2"


@pytest.mark.slow  # four builds of the extension: their logic is no Python's, run once (under 3.11)
def test_extension_rebuilds_when_libmsquic_headers_change_even_with_older_mtimes(tmp_path: Path) -> None:
    tree = _source_copy(tmp_path / "source")
    include, library = _copy_msquic(tmp_path / "msquic")
    env = _clean_env()
    env.pop("PYMSQUIC_SANITIZE", None)
    env.update(PYMSQUIC_MSQUIC_INCLUDE=str(include), PYMSQUIC_MSQUIC_LIBRARY=str(library))

    def build() -> tuple[str, int]:
        proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (ext,) = (tree / "pymsquic").glob("_msquic*.so")
        return proc.stderr, ext.stat().st_mtime_ns

    first_log, first = build()
    again_log, again = build()
    assert again == first and "rebuilding" not in again_log
    # Another libmsquic build's header, older than the extension: mtimes alone would keep the module.
    header = include / "msquic.h"
    stat = header.stat()
    header.write_text(header.read_text() + "\n/* another build */\n")
    os.utime(header, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed_log, changed = build()
    assert "rebuilding pymsquic._msquic" in changed_log and changed != first
    # A native source edited with an old mtime (a checkout of another branch keeps none): rebuilt too.
    source = tree / "native" / "internal.h"
    stat = source.stat()
    source.write_text(source.read_text() + "\n/* edited */\n")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**12))
    edited_log, edited = build()
    assert "rebuilding pymsquic._msquic" in edited_log and edited != changed


def test_libmsquic_build_maps_its_source_folder_out_of_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    import build_msquic

    source = Path("/home/builder/.cargo/registry/src/msquic-2.5.1")
    plain = build_msquic.without_source_paths(build_msquic.CMAKE_OPTIONS, source)
    assert plain["CMAKE_C_FLAGS"] == f"-ffile-prefix-map={source}=msquic"
    assert plain["CMAKE_BUILD_TYPE"] == "Release"
    # A ThreadSanitizer libmsquic keeps its own flags next to the mapping.
    monkeypatch.setenv("PYMSQUIC_SANITIZE_MSQUIC", "1")
    thread = build_msquic.without_source_paths(build_msquic.msquic_cmake_options("thread"), source)
    assert thread["CMAKE_C_FLAGS"].startswith("-fsanitize=thread") and thread["CMAKE_C_FLAGS"].endswith("=msquic")
