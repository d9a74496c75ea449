"""Static checks: mypy --strict over pymsquic/, examples/ and the README's Python blocks, ruff over
the repository, and pymsquic/_msquic.pyi (the cffi module's stub) in sync with the built module.

After a change to the cffi declarations (native/pymsquic.h's CFFI section, build_msquic.py),
rebuild and regenerate the stub:  python tests/test_typing.py --write-stub
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "pymsquic" / "_msquic.pyi"
HEADER = ROOT / "native" / "pymsquic.h"
# What mypy checks besides the README's blocks: pyproject.toml's [tool.mypy] files.
MYPY_PATHS = ["pymsquic", "examples"]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (the test extra brings it; .ci/other-pythons' venvs go without)")


# ---- the README's code ------------------------------------------------------------------------

def readme_python_blocks(text: str) -> list[tuple[int, str]]:
    """Every ```python block of a Markdown text, fragments (first line ``# fragment``) included,
    as (the line number of its first line, its code)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in re.finditer(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S)]


def checkable(code: str) -> str:
    """A block as mypy checks it. A fragment (first line ``# fragment``: an excerpt the examples
    test does not run) becomes the body of a coroutine, on the same lines, so that it may use
    ``await``/``async for``/``async with``; it declares what it takes from its context with
    annotations (``conn: pymsquic.asyncio.Connection``)."""
    first, _, rest = code.partition("\n")
    if first.strip() != "# fragment":
        return code
    body = "".join(f"    {line}" if line.strip() else line for line in rest.splitlines(keepends=True))
    return "async def _readme_fragment() -> None:  # fragment\n" + (body or "    pass\n")


def test_readme_blocks_are_found() -> None:
    # Guards the extraction itself: a README without any block would make the mypy run vacuous.
    text = "x\n```python\na = 1\n```\n```sh\nls\n```\n```python\n# fragment\nb: int = 2\n\nc = b\n```\n"
    blocks = readme_python_blocks(text)
    assert blocks == [(3, "a = 1\n"), (9, "# fragment\nb: int = 2\n\nc = b\n")]
    assert checkable(blocks[0][1]) == blocks[0][1]
    assert checkable(blocks[1][1]) == "async def _readme_fragment() -> None:  # fragment\n    b: int = 2\n\n    c = b\n"
    assert readme_python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))


# ---- mypy and ruff ----------------------------------------------------------------------------

def run_mypy(paths: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """mypy with pyproject.toml's settings (--strict, Python 3.10) on ``paths``, from the root."""
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(tmp_path / "mypy_cache"), "--no-error-summary", *paths],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_strict(tmp_path: Path) -> None:
    _require("mypy")
    blocks = readme_python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    readme_files = []
    for line, code in blocks:
        path = tmp_path / f"README_{line}.py"  # a fragment keeps its lines too (see checkable)
        path.write_text(checkable(code), encoding="utf-8")
        readme_files.append(str(path))
    result = run_mypy([*MYPY_PATHS, *readme_files], tmp_path)
    # Errors in the blocks point at the README's own lines.
    report = re.sub(re.escape(f"{tmp_path}/") + r"README_(\d+)\.py:(\d+)",
                    lambda m: f"README.md:{int(m.group(1)) + int(m.group(2)) - 1}", result.stdout + result.stderr)
    assert result.returncode == 0, f"mypy --strict:\n{report}"


def test_mypy_catches_a_type_error(tmp_path: Path) -> None:
    # The run above must be able to fail: the same settings reject a wrong type and a misspelt
    # member of the cffi module (the stub declares lib's members).
    _require("mypy")
    bad = tmp_path / "bad.py"
    bad.write_text("import pymsquic\nfrom pymsquic._msquic import lib\n\n"
                   "def f(conn: pymsquic.sync.Connection) -> int:\n"
                   "    lib.pmq_conn_flgs(None)\n"
                   "    return conn.alpn\n", encoding="utf-8")
    result = run_mypy(["pymsquic", str(bad)], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'has no attribute "pmq_conn_flgs"' in result.stdout, result.stdout
    assert "bad.py:6: error: Incompatible return value type" in result.stdout, result.stdout


def test_ruff_check() -> None:
    _require("ruff")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


# ---- pymsquic/_msquic.pyi ---------------------------------------------------------------------

# The generated part of the stub: lib's members, from the built module.
LIB_BEGIN = "    # BEGIN generated by tests/test_typing.py --write-stub\n"
LIB_END = "    # END generated\n"

_FLOATS = {"float", "double", "long double"}


def _python_type(ctype: Any) -> str:
    """The Python type cffi converts a C type to and from (``None`` for a void result)."""
    if ctype.kind == "void":
        return "None"
    if ctype.kind == "enum":
        return "int"
    if ctype.kind == "primitive":
        if ctype.cname == "char":
            return "bytes"
        if ctype.cname == "_Bool":
            return "bool"
        return "float" if ctype.cname in _FLOATS else "int"
    return "_CData"  # pointers, arrays, structs, function pointers


def _parameter_names() -> dict[str, list[str]]:
    """Each C function's parameter names, from native/pymsquic.h's prototypes."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(encoding="utf-8"), flags=re.S)
    names = {}
    for m in re.finditer(r"\b(pmq_\w+)\s*\(([^()]*)\)\s*;", text):
        args = [a for a in m.group(2).split(",") if a.strip() not in ("", "void")]
        names[m.group(1)] = [re.findall(r"\w+", a)[-1] for a in args]
    return names


def render_lib() -> str:
    """The body of the stub's class _Lib for the built module: constants, globals and functions."""
    from pymsquic._msquic import ffi, lib

    names = _parameter_names()
    constants, functions = [], []
    for name in sorted(dir(lib)):
        value = getattr(lib, name)
        if isinstance(value, int):
            constants.append(f"    {name}: Final[int]")
        elif isinstance(value, ffi.CData):  # a global variable or an extern "Python" function
            constants.append(f"    {name}: Final[_CData]")
        else:
            ctype = ffi.typeof(value)
            params = names.get(name, [])
            if len(params) != len(ctype.args):
                params = [f"arg{i}" for i in range(len(ctype.args))]
            args = ["self", *(f"{p}: {_python_type(t)}" for p, t in zip(params, ctype.args))]
            args += ["/"] if params else []  # cffi's functions take no keywords
            result = _python_type(ctype.result)
            line = f"    def {name}({', '.join(args)}) -> {result}: ..."
            if len(line) > 120:  # one parameter a line, as ruff format would
                line = f"    def {name}(\n" + "".join(f"        {a},\n" for a in args) + f"    ) -> {result}: ..."
            functions.append(line)
    return "".join(line + "\n" for line in constants + functions)


def stub_parts() -> tuple[str, str, str]:
    """pymsquic/_msquic.pyi split into what precedes, is between and follows the markers."""
    text = STUB.read_text(encoding="utf-8")
    head, rest = text.split(LIB_BEGIN)
    generated, tail = rest.split(LIB_END)
    return head, generated, tail


def test_msquic_stub_matches_the_build() -> None:
    assert stub_parts()[1] == render_lib(), (
        "pymsquic/_msquic.pyi's lib differs from the built cffi module: rebuild, then "
        "python tests/test_typing.py --write-stub")


def test_msquic_stub_checks_the_lib_it_declares() -> None:
    # The generated part holds what pymsquic calls; a stale stub cannot hide behind an empty one.
    generated = render_lib()
    assert "    def pmq_obj_wait(self, obj: _CData, seq: int, timeout_ms: int, /) -> int: ...\n" in generated
    assert "    PMQ_READ_EOF: Final[int]\n" in generated and "    QUIC_STATUS_SUCCESS: Final[int]\n" in generated


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-stub"]:
        sys.exit("usage: python tests/test_typing.py --write-stub   (rewrites lib's part of pymsquic/_msquic.pyi)")
    sys.path.insert(0, str(ROOT))
    head, _, tail = stub_parts()
    STUB.write_text(head + LIB_BEGIN + render_lib() + LIB_END + tail, encoding="utf-8")
    print(f"wrote {STUB.relative_to(ROOT)}")
