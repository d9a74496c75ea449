"""The process around pymsquic: fork, interpreter exit on every supported Python,
and the thread an event loop runs on.

fork and exit are tested in fresh interpreters (subprocesses with timeouts), since
a hang is the failure being tested for.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import pymsquic
from pymsquic import sync

ROOT = Path(__file__).resolve().parent.parent
ALPN = "process-test"


def run_python(code: str, python: str = sys.executable, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """Run ``code`` in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([python, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ---- fork ---------------------------------------------------------------------

FORK_AFTER_USE = """
    import asyncio, os, sys, time, threading
    import pymsquic
    from pymsquic import sync

    def echo(conn):
        for s in conn:
            s.write(s.read(timeout=30), fin=True)

    cred = pymsquic.Credential.self_signed()
    client_cred = pymsquic.Credential.client(verify=False)
    server = sync.serve(echo, "127.0.0.1", 0, alpn="fork", credential=cred)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.addresses[0][1]

    def round_trip(conn, data):
        s = conn.open_stream()
        s.write(data, fin=True)
        return s.read(timeout=10)

    conn = sync.connect("127.0.0.1", port, alpn="fork", credential=client_cred, open_timeout=10)
    assert round_trip(conn, b"before") == b"before"
    pending = conn.open_stream()  # a parent's stream with nothing to read yet
    pending.write(b"x")

    async def aconnect():
        return await pymsquic.asyncio.connect("127.0.0.1", port, alpn="fork", credential=client_cred)

    aconn = asyncio.run(aconnect())
    pending_async = aconn.open_stream()  # and an asyncio one
    pending_async.write(b"y")

    forked_at = time.monotonic()
    pid = os.fork()
    if pid == 0:
        def attempt(name, call):
            start = time.monotonic()
            try:
                call()
            except pymsquic.ForkedProcessError as exc:
                print(f"child {name}: ForkedProcessError in {time.monotonic() - start:.2f} s: {exc}", flush=True)
            except BaseException as exc:
                print(f"child {name}: wrong error {exc!r}", flush=True)
            else:
                print(f"child {name}: no error", flush=True)
        attempt("sync.connect", lambda: sync.connect("127.0.0.1", port, alpn="fork", credential=client_cred,
                                                     open_timeout=5))
        attempt("Registration", lambda: pymsquic.Registration().close())
        attempt("parent stream read", lambda: pending.read(timeout=5))
        attempt("parent accept", lambda: server.listener.accept(timeout=5))
        attempt("parent stream async read", lambda: asyncio.run(pending_async.read()))
        try:  # calls that do not wait fail too, and say why
            pending.write(b"z")
        except pymsquic.QuicError as exc:
            print(f"child write: {type(exc).__name__}: {exc}", flush=True)
        # Closing the parent's objects in the child does nothing and never hangs:
        # a graceful close says why it cannot wait, the immediate one just returns.
        attempt("graceful close", conn.close)
        conn._abandon()
        aconn._abandon()
        print("child exiting", flush=True)
        sys.exit(0)
    os.waitpid(pid, 0)
    print(f"parent: child gone after {time.monotonic() - forked_at:.2f} s", flush=True)
    # The streams the child was refused still work here (the server echoes them in order).
    pending.finish()
    assert pending.read(timeout=10) == b"x"
    pending_async.finish()
    assert asyncio.run(asyncio.wait_for(pending_async.read(), 10)) == b"y"
    assert round_trip(conn, b"after") == b"after"
    asyncio.run(aconn.close())
    with sync.connect("127.0.0.1", port, alpn="fork", credential=client_cred, open_timeout=10) as again:
        assert round_trip(again, b"new") == b"new"
    conn.close()
    print("parent still works", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_clear_error_and_exits_at_once_parent_keeps_working() -> None:
    proc = run_python(FORK_AFTER_USE)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("sync.connect", "Registration", "parent stream read", "parent stream async read", "parent accept",
                 "graceful close"):
        line = next((ln for ln in out.splitlines() if ln.startswith(f"child {name}:")), None)
        assert line is not None, out + proc.stderr
        assert "ForkedProcessError" in line and "fork" in line.split(": ", 2)[2], line
        # Quickly: well before the 5 s timeouts the calls were given.
        assert float(line.split(" in ")[1].split(" s")[0]) < 2.0, line
    assert "child write: StreamError" in out and "forked after msquic started" in out, out
    assert "child exiting" in out
    gone = next(ln for ln in out.splitlines() if ln.startswith("parent: child gone"))
    assert float(gone.split("after ")[1].split(" s")[0]) < 5.0, gone  # not the 10 s exit teardown
    assert "parent still works" in out
    assert "Traceback" not in proc.stderr, proc.stderr


FORK_BEFORE_USE = """
    import os, sys, time, threading
    import pymsquic
    from pymsquic import sync

    pid = os.fork()
    if pid == 0:
        def echo(conn):
            for s in conn:
                s.write(s.read(timeout=10), fin=True)
        server = sync.serve(echo, "127.0.0.1", 0, alpn="fork", credential=pymsquic.Credential.self_signed())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync.connect("127.0.0.1", server.addresses[0][1], alpn="fork",
                          credential=pymsquic.Credential.client(verify=False), open_timeout=10) as conn:
            s = conn.open_stream()
            s.write(b"child", fin=True)
            print("child echo", s.read(timeout=10), flush=True)
        server.close()
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print("child status", status, flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_before_first_use_child_uses_pymsquic() -> None:
    # Importing pymsquic does not start msquic: a child forked then starts it afresh.
    proc = run_python(FORK_BEFORE_USE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "child echo b'child'" in proc.stdout, proc.stdout + proc.stderr
    assert "child status 0" in proc.stdout, proc.stdout + proc.stderr


# ---- interpreter exit ----------------------------------------------------------

EXIT_WITH_HOOKS = """
    import atexit, time
    import pymsquic
    from pymsquic import _native
    from pymsquic._msquic import ffi, lib

    def after_teardown():
        # Registered before pymsquic's own exit hook, so it runs after it.
        print("msquic closed:", lib.pmq_api == ffi.NULL, "torn down:", _native.is_torn_down(), flush=True)
    atexit.register(after_teardown)

    reg = pymsquic.Registration("exit")
    cfg = pymsquic.Configuration(reg, "exit", pymsquic.Credential.self_signed(), pymsquic.DEFAULT_SETTINGS)
    client_cfg = pymsquic.Configuration(reg, "exit", pymsquic.Credential.client(verify=False))
    lst = pymsquic.sync.Listener(reg, cfg, on_new_connection=lambda info: True,
                                 on_stop_complete=lambda: print("stopped", flush=True))
    lst.start("exit", ("127.0.0.1", 0))
    client = pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg, open_timeout=5)
    print("ready", flush=True)
"""


def other_python(version: str) -> str | None:
    """An interpreter of ``version`` that can import cffi: the venv ``.ci/run`` makes,
    or pyenv's own."""
    cache = Path(os.environ.get("PYMSQUIC_CACHE_DIR", Path.home() / ".cache" / "pymsquic"))
    for candidate in (cache / "venvs" / version / "bin" / "python",
                      Path.home() / ".pyenv" / "versions" / version / "bin" / "python"):
        if candidate.exists() and subprocess.run([str(candidate), "-c", "import cffi"],
                                                 capture_output=True).returncode == 0:
            return str(candidate)
    return None


def check_exit_with_hooks(python: str) -> None:
    start = time.monotonic()
    proc = run_python(EXIT_WITH_HOOKS, python=python, timeout=60)
    elapsed = time.monotonic() - start
    assert "ready" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "msquic closed: True torn down: True" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert elapsed < 15, elapsed  # the exit teardown's own bound is 10 s; normally well under 1 s


def test_exit_with_listener_hooks_open_runs_msquic_teardown() -> None:
    check_exit_with_hooks(sys.executable)


def test_exit_with_listener_hooks_open_runs_msquic_teardown_on_python_3_12_1() -> None:
    # 3.12.1 forbids starting a thread at interpreter shutdown.
    if sys.version_info[:3] == (3, 12, 1):
        python: str | None = sys.executable
    else:
        python = other_python("3.12.1")
    if python is None:
        pytest.skip("no Python 3.12.1 with cffi (bash .ci/run makes one from pyenv's)")
    check_exit_with_hooks(python)


# ---- event loops and threads ------------------------------------------------------


@pytest.fixture
def gated_echo(server_credential: pymsquic.Credential) -> Iterator[tuple[sync.Server, threading.Event]]:
    """A blocking echo server that answers each stream only once the event is set."""
    gate = threading.Event()

    def handler(conn: sync.Connection) -> None:
        for s in conn:
            data = s.read(timeout=10)
            assert gate.wait(10)
            s.write(data, fin=True)

    server = sync.serve(handler, "127.0.0.1", 0, alpn=ALPN, credential=server_credential)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, gate
    finally:
        gate.set()
        server.close(timeout=5)
        thread.join(5)


def connect_to(server: sync.Server) -> sync.Connection:
    return sync.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                        credential=pymsquic.Credential.client(verify=False), open_timeout=10)


async def async_connect_to(server: sync.Server) -> pymsquic.asyncio.Connection:
    return await pymsquic.asyncio.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN,
                                          credential=pymsquic.Credential.client(verify=False), open_timeout=10)


def test_awaiting_one_object_from_two_loops_raises(gated_echo: tuple[sync.Server, threading.Event]) -> None:
    server, gate = gated_echo
    conn = asyncio.run(async_connect_to(server))  # its stream is awaited on two loops below
    try:
        stream = conn.open_stream()
        stream.write(b"two loops", fin=True)
        waiting = threading.Event()
        result: list[object] = []

        async def first_loop() -> None:
            task = asyncio.ensure_future(stream.read())
            await asyncio.sleep(0)  # the read runs up to its wait
            waiting.set()
            result.append(await asyncio.wait_for(task, 10))

        thread = threading.Thread(target=lambda: asyncio.run(first_loop()))
        thread.start()
        assert waiting.wait(10)
        with pytest.raises(RuntimeError, match="different event loop"):
            asyncio.run(asyncio.wait_for(stream.read(), 10))
        gate.set()
        thread.join(15)
        assert result == [b"two loops"]  # the first loop was not stalled
    finally:
        asyncio.run(conn.close())


def test_blocking_wait_on_an_event_loop_thread_raises(gated_echo: tuple[sync.Server, threading.Event]) -> None:
    server, gate = gated_echo
    with connect_to(server) as conn:
        stream = conn.open_stream()
        stream.write(b"hello", fin=True)

        async def main() -> None:
            start = time.monotonic()
            with pytest.raises(RuntimeError, match="event loop"):
                stream.read(timeout=5)  # would block the loop: refused, not waited for
            assert time.monotonic() - start < 4
            with pytest.raises(RuntimeError, match="event loop"):
                conn.accept_stream(timeout=5)
            gate.set()
            # Off the loop, wait for the first byte; what has arrived is then read
            # on the loop thread without waiting, which is allowed.
            first = await asyncio.get_running_loop().run_in_executor(None, stream.readexactly, 1)
            assert first + stream.read(timeout=5) == b"hello"

        asyncio.run(main())
