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
        lst = pymsquic.sync.Listener(reg, server_cfg)
        lst.start("life", ("127.0.0.1", 0))
        client = pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg, open_timeout=5)
        server = lst.accept(timeout=5)
        queued = pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg, open_timeout=5)
        print("ready", flush=True)
    """,
    "listener_garbage_collected": """
        lst = pymsquic.sync.Listener(reg, server_cfg)
        lst.start("life", ("127.0.0.1", 0))
        port = lst.local_address[1]
        client = pymsquic.sync.connect("127.0.0.1", port, configuration=client_cfg, open_timeout=5)
        del lst
        gc.collect()
        # The collected listener was closed: the same port and ALPN can be listened on again.
        again = pymsquic.sync.Listener(reg, server_cfg)
        again.start("life", ("127.0.0.1", port))
        print("ready", flush=True)
    """,
    "everything_garbage_collected_mid_handshake": """
        lst = pymsquic.sync.Listener(reg, server_cfg)
        lst.start("life", ("127.0.0.1", 0))
        async def main():
            task = asyncio.ensure_future(pymsquic.asyncio.connect(
                "127.0.0.1", lst.local_address[1], configuration=client_cfg))
            await asyncio.sleep(0)
            task.cancel()
        asyncio.run(main())
        del lst, reg, server_cfg, client_cfg
        gc.collect()
        print("ready", flush=True)
    """,
    "exit_from_a_thread_blocked_in_accept": """
        import threading
        lst = pymsquic.sync.Listener(reg, server_cfg)
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
    "asyncio_listener_and_connections_left_open": """
        async def main():
            lst = pymsquic.asyncio.Listener(reg, server_cfg)
            lst.start("life", ("127.0.0.1", 0))
            client = await pymsquic.asyncio.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg,
                                                    open_timeout=5)
            server = await asyncio.wait_for(lst.accept(), 5)
            queued = await pymsquic.asyncio.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg,
                                                    open_timeout=5)
            return lst, client, server, queued  # outlive the loop they were attached to
        kept = asyncio.run(main())
        print("ready", flush=True)
    """,
    "hook_left_installed_at_exit": """
        lst = pymsquic.sync.Listener(reg, server_cfg, on_new_connection=lambda info: True,
                                     on_stop_complete=lambda: print("stopped", flush=True))
        lst.start("life", ("127.0.0.1", 0))
        client = pymsquic.sync.connect("127.0.0.1", lst.local_address[1], configuration=client_cfg, open_timeout=5)
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
