"""niquests (HTTP/3 through qh3) as a client of the pymsquic.h3 ASGI server.

niquests goes to HTTP/3 at once, without a first HTTP/1 or HTTP/2 request to
learn the server's Alt-Svc, when HTTP/1.1 and HTTP/2 are disabled:
``niquests.Session(disable_http1=True, disable_http2=True)``. Skipped without
niquests (not in the test extra: its urllib3-future replaces the venv's urllib3).
"""

from __future__ import annotations

import asyncio

import pytest
from test_h3_interop import BODY_4000, asgi_app

import pymsquic
import pymsquic.h3

niquests = pytest.importorskip("niquests")


def test_niquests_client_against_asgi_server(server_credential: pymsquic.Credential) -> None:
    # verify=False: qh3 refuses Credential.self_signed()'s certificate as its own trust
    # anchor (TLS_BAD_CERTIFICATE), as the rest of the suite's aioquic clients skip it too.
    def client(url: str) -> None:
        with niquests.Session(disable_http1=True, disable_http2=True) as session:
            response = session.get(f"{url}/4000", verify=False, timeout=10)
            assert response.status_code == 200 and response.http_version == 30  # HTTP/3
            assert response.content == BODY_4000
            payload = bytes(range(256)) * 2
            response = session.post(f"{url}/echo", data=payload, verify=False, timeout=10)
            assert response.content == payload and response.headers["x-path"] == "/echo"

    async def main() -> None:
        async with await pymsquic.h3.serve(asgi_app, "127.0.0.1", 0, credential=server_credential) as server:
            url = f"https://127.0.0.1:{server.addresses[0][1]}"
            await asyncio.get_running_loop().run_in_executor(None, client, url)  # niquests blocks

    asyncio.run(main())
