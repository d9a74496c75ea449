"""Process lifetime: objects left open or collected never hang or abort the interpreter.

Each scenario runs in a fresh interpreter, since exit behaviour is what is tested.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

PRELUDE = """
import asyncio, gc, sys, time
import pymsquic
reg = pymsquic.Registration("lifecycle")
cred = pymsquic.Credential.self_signed()
server_cfg = pymsquic.Configuration(reg, "life", cred)
client_cfg = pymsquic.Configuration(reg, "life", pymsquic.Credential.client(verify=False))
"""

SCENARIOS = {
    "listener_and_connections_left_open": """
        lst = pymsquic.Listener(reg, server_cfg)
        lst.start("life", ("127.0.0.1", 0))
        client = pymsquic.Connection.connect(reg, client_cfg, "127.0.0.1", lst.local_address[1], timeout=5)
        server = lst.accept(timeout=5)
        queued = pymsquic.Connection.connect(reg, client_cfg, "127.0.0.1", lst.local_address[1], timeout=5)
        print("ready", flush=True)
    """,
    "listener_garbage_collected": """
        lst = pymsquic.Listener(reg, server_cfg)
        lst.start("life", ("127.0.0.1", 0))
        port = lst.local_address[1]
        client = pymsquic.Connection.connect(reg, client_cfg, "127.0.0.1", port, timeout=5)
        del lst
        gc.collect()
        # The collected listener was closed: the same port and ALPN can be listened on again.
        again = pymsquic.Listener(reg, server_cfg)
        again.start("life", ("127.0.0.1", port))
        print("ready", flush=True)
    """,
    "everything_garbage_collected_mid_handshake": """
        lst = pymsquic.Listener(reg, server_cfg)
        lst.start("life", ("127.0.0.1", 0))
        async def main():
            task = asyncio.ensure_future(pymsquic.Connection.connect_async(
                reg, client_cfg, "127.0.0.1", lst.local_address[1]))
            await asyncio.sleep(0)
            task.cancel()
        asyncio.run(main())
        del lst, reg, server_cfg, client_cfg
        gc.collect()
        print("ready", flush=True)
    """,
    "exit_from_a_thread_blocked_in_accept": """
        import threading
        lst = pymsquic.Listener(reg, server_cfg)
        lst.start("life", ("127.0.0.1", 0))
        def accept():
            try:
                lst.accept()
            except pymsquic.Finished:
                print("accept finished", flush=True)
        threading.Thread(target=accept, daemon=True).start()
        time.sleep(0.2)
        print("ready", flush=True)
    """,
    "hook_left_installed_at_exit": """
        lst = pymsquic.Listener(reg, server_cfg, on_new_connection=lambda info: True,
                                on_stop_complete=lambda: print("stopped", flush=True))
        lst.start("life", ("127.0.0.1", 0))
        client = pymsquic.Connection.connect(reg, client_cfg, "127.0.0.1", lst.local_address[1], timeout=5)
        print("ready", flush=True)
    """,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_interpreter_exits_promptly_and_cleanly(name: str) -> None:
    code = PRELUDE + textwrap.dedent(SCENARIOS[name])
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "ready" in proc.stdout
    assert "Traceback" not in proc.stderr and "did not shut down" not in proc.stderr, proc.stderr
    assert elapsed < 15
