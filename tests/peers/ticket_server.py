"""A pymsquic.sync server in a process of its own, for the fleet tests.

    python ticket_server.py NAME TICKET_KEY_HEX|none [--lb] [--reset-key HEX] [--hold]

Serves ALPN "pymsquic-fleet" on 127.0.0.1 (an ephemeral port, printed as the
first line of stdout), with resumption and 0-RTT on and the given ticket key.
Each connection gets a ticket carrying ``NAME`` as app data; each stream it
opens is answered with one JSON line: the server's name, whether the
connection resumed, the resumed ticket's app data and the bytes received.
``--lb`` sets msquic's load-balancing mode (server id in connection ids)
first thing; ``--reset-key`` shares a stateless-reset key. ``--hold`` holds
each new handshake in the listener's on_new_connection hook until a line comes
on stdin (so a client's 0-RTT data is surely written before the server
answers). Runs until stdin closes.
"""

from __future__ import annotations

import json
import sys
import threading

import pymsquic

ALPN = "pymsquic-fleet"


def main() -> None:
    name, key_hex = sys.argv[1], sys.argv[2]
    if "--lb" in sys.argv:
        pymsquic.set_load_balancing_mode("server_id_ip")  # before any listener or connection
    if "--reset-key" in sys.argv:
        pymsquic.set_stateless_reset_key(bytes.fromhex(sys.argv[sys.argv.index("--reset-key") + 1]))
    keys = None if key_hex == "none" else pymsquic.TicketKey(bytes.fromhex(key_hex[:32]), bytes.fromhex(key_hex[32:]))

    go = threading.Event()
    done = threading.Event()

    def hold(info: pymsquic.NewConnectionInfo) -> bool:
        go.wait(20)  # on msquic's thread: the server's first flight waits for the test
        go.clear()
        return True

    def read_stdin() -> None:
        for _ in sys.stdin:
            go.set()
        done.set()

    def handler(conn: pymsquic.sync.Connection) -> None:
        conn.send_resumption_ticket(name.encode())
        for stream in conn:
            data = stream.read(-1, timeout=20)
            app_data = conn.resumption_app_data
            stream.write(json.dumps({
                "server": name, "resumed": conn.session_resumed,
                "app_data": None if app_data is None else app_data.decode(),
                "early_streams": conn.early_data_streams, "received": len(data),
            }).encode() + b"\n", fin=True)

    settings = pymsquic.Settings(peer_bidi_stream_count=16, idle_timeout_ms=20_000,
                                 server_resumption_level=pymsquic.ResumptionLevel.RESUME_AND_ZERO_RTT)
    registration = pymsquic.default_registration()
    config = pymsquic.Configuration(registration, ALPN, pymsquic.Credential.self_signed(), settings, ticket_keys=keys)
    with pymsquic.sync.Listener(registration, config, on_new_connection=hold if "--hold" in sys.argv else None) as lst:
        lst.start(ALPN, ("127.0.0.1", 0))
        print(lst.local_address[1], flush=True)
        threading.Thread(target=read_stdin, daemon=True).start()

        def serve() -> None:
            for conn in lst:
                with conn:
                    handler(conn)

        threading.Thread(target=serve, daemon=True).start()
        done.wait()  # the test closes stdin to stop us


if __name__ == "__main__":
    main()
