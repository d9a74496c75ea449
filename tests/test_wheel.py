"""The release artefacts as tools/build_wheel.sh makes them: the sdist installs and builds in a clean
folder, the repaired wheel is one stripped cp310-abi3 manylinux wheel with RUNPATH $ORIGIN and its
licences, and it runs the demo in a new venv with an empty HOME and no build tools on PATH.

Slow (about a minute and a half: one wheel build, two venvs): marked ``slow``; ``-m "not slow"`` leaves
them out.  libmsquic itself comes from the build cache (~/.cache/pymsquic) when it holds this version.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


class Artefacts(NamedTuple):
    sdist: Path
    wheel: Path
    log: str


def _env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "LD_PRELOAD")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(changes)
    return env


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Artefacts:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["bash", str(REPO / "tools" / "build_wheel.sh"), str(out)], capture_output=True,
                          text=True, timeout=1200, env=_env(PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sdist,) = out.glob("pymsquic-*.tar.gz")
    (wheel,) = out.glob("pymsquic-*.whl")
    return Artefacts(sdist, wheel, proc.stderr)


def _venv(path: Path) -> Path:
    """A new venv with pymsquic's runtime dependencies (from the index or pip's cache)."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300, env=_env())
    python = path / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "cffi>=1.17",
                    "cryptography>=42"], check=True, timeout=600, capture_output=True, env=_env())
    return python


def test_sdist_has_the_build_inputs_and_nothing_built(artefacts: Artefacts) -> None:
    with tarfile.open(artefacts.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("build_msquic.py", "CMakeLists.txt", "setup.py", "pyproject.toml", "LICENSE", "README.md",
                   "native/pymsquic.h", "native/internal.h", "native/runtime.c", "pymsquic/_msquic.pyi"):
        assert needed in names, needed
    assert {f"native/{p.name}" for p in (REPO / "native").glob("*.[ch]")} <= names
    built = [n for n in names if re.search(r"\.so($|\.)|\.o$|^build/|THIRD_PARTY_NOTICES|_msquic\.c$", n)]
    assert not built, built


def test_wheel_is_one_stripped_abi3_manylinux_wheel_with_origin_runpath_and_licences(
        artefacts: Artefacts, tmp_path: Path) -> None:
    assert re.fullmatch(r"pymsquic-[\d.]+-cp310-abi3-manylinux_2_\d+_x86_64\.whl", artefacts.wheel.name)
    with zipfile.ZipFile(artefacts.wheel) as whl:
        names = set(whl.namelist())
        (wheel_meta,) = [n for n in names if n.endswith(".dist-info/WHEEL")]
        tags = [line.split(":", 1)[1].strip() for line in whl.read(wheel_meta).decode().splitlines()
                if line.startswith("Tag:")]
        whl.extractall(tmp_path)
    assert len(tags) == 1 and re.fullmatch(r"cp310-abi3-manylinux_2_\d+_x86_64", tags[0]), tags
    # The one module, named for the limited API, beside the libmsquic it loads.
    assert [n for n in names if n.endswith(".so")] == ["pymsquic/_msquic.abi3.so"]
    assert "pymsquic/libmsquic.so.2" in names and not any(".libs/" in n for n in names)

    ext = tmp_path / "pymsquic" / "_msquic.abi3.so"
    dynamic = subprocess.run(["readelf", "-d", str(ext)], capture_output=True, text=True, check=True).stdout
    assert re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r\w*path: \[(.*)\]", dynamic) == ["$ORIGIN"], dynamic
    sections = subprocess.run(["readelf", "-S", str(ext)], capture_output=True, text=True, check=True).stdout
    assert ".symtab" not in sections, "the extension is not stripped"
    lib = subprocess.run(["readelf", "-d", str(tmp_path / "pymsquic" / "libmsquic.so.2")], capture_output=True,
                         text=True, check=True).stdout
    assert "RUNPATH" not in lib and "RPATH" not in lib
    # msquic's asserts name their source files: as msquic/src/..., not the build host's source folder.
    # (quictls' MODULESDIR, under msquic's build folder, stays: msquic's CMake fixes quictls' --prefix.)
    data = (tmp_path / "pymsquic" / "libmsquic.so.2").read_bytes()
    assert b"msquic/src/core/" in data
    assert not re.search(rb"/[^\0]*/src/(core|platform)/\w+\.[ch]\0", data.replace(b"\0msquic/src/", b"\0")), \
        "libmsquic carries a build-host source path"

    licences = [n for n in names if ".dist-info/licenses/" in n and not n.endswith("/")]
    assert [n.rsplit("/", 1)[1] for n in licences] == ["LICENSE"]
    assert "MIT License" in (tmp_path / licences[0]).read_text()
    assert "pymsquic contributors" in (tmp_path / licences[0]).read_text()
    notice = (tmp_path / "pymsquic" / "THIRD_PARTY_NOTICES").read_text()
    # The texts as msquic's crate ships them: its MIT licence and quictls' Apache-2.0.
    assert "msquic (MIT)" in notice and "Copyright (c) Microsoft Corporation." in notice
    assert "quictls" in notice and "Apache License" in notice and "Version 2.0, January 2004" in notice

    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(artefacts.wheel)],
                          capture_output=True, text=True, timeout=120)
    assert show.returncode == 0, show.stderr
    found = re.search(r'consistent\s+with\s+the\s+following\s+platform\s+tag:\s+"(manylinux_2_\d+_x86_64)"',
                      show.stdout)
    # The wheel carries the oldest policy auditwheel finds its binaries consistent with.
    assert found and tags[0].endswith(found.group(1)), show.stdout


def test_sdist_installs_and_builds_in_a_clean_folder(artefacts: Artefacts, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    work = tmp_path / "elsewhere"
    work.mkdir()
    # pip builds from the unpacked sdist (libmsquic from the build cache when it holds it).
    install = subprocess.run([str(python), "-m", "pip", "install", "-v", "--disable-pip-version-check",
                              str(artefacts.sdist)], capture_output=True, text=True, timeout=1200, cwd=work,
                             env=_env())
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert "wrote" in install.stderr + install.stdout and "THIRD_PARTY_NOTICES" in install.stderr + install.stdout
    assert not list(work.iterdir()), "the install left files in the working folder"
    probe = subprocess.run([str(python), "-c", "import pymsquic; print(pymsquic.__file__); "
                            "print(pymsquic.msquic_version())"], capture_output=True, text=True, timeout=60,
                           cwd=work, env=_env())
    assert probe.returncode == 0, probe.stderr
    where, version = probe.stdout.split()
    assert where.startswith(str(tmp_path / "venv")) and version.startswith("2.5.")


def test_repaired_wheel_runs_the_demo_with_an_empty_home_and_no_build_tools(artefacts: Artefacts,
                                                                         tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv")
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "elsewhere"
    work.mkdir()
    # Only the venv's bin on PATH: no compiler, cmake, cargo, perl; nothing from the index.
    bare = _env(HOME=str(home), PATH=str(python.parent))
    for key in ("PYMSQUIC_CACHE_DIR", "XDG_CACHE_HOME", "PYMSQUIC_MSQUIC_LIBRARY", "PYMSQUIC_MSQUIC_SOURCE"):
        bare.pop(key, None)
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "--no-deps",
                              "--disable-pip-version-check", str(artefacts.wheel)],
                             capture_output=True, text=True, timeout=300, cwd=work, env=bare)
    assert install.returncode == 0, install.stdout + install.stderr
    demo = subprocess.run([str(python), "-m", "pymsquic", "demo", "--clients", "2", "--megabytes", "1"],
                          capture_output=True, text=True, timeout=120, cwd=work, env=bare)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.count("verified handshake in") == 2 and "intact: True" in demo.stdout
    where = subprocess.run([str(python), "-c", "import pymsquic._msquic as m; print(m.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=work, env=bare)
    assert where.stdout.strip().startswith(str(tmp_path / "venv")), where.stdout + where.stderr
    assert not list(home.iterdir()), f"the demo wrote into HOME: {list(home.iterdir())}"
