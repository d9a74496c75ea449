"""pymsquic.h3 against ngtcp2's HTTP/3 examples (Debian's ngtcp2-client and
ngtcp2-server: gtlsclient, gtlsserver), an independent C implementation, in
both roles. Skipped where they are not installed (.ci/run installs them)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from test_h3_interop import BODY_4000, asgi_app

import pymsquic
import pymsquic.h3

GTLSCLIENT = shutil.which("gtlsclient")
GTLSSERVER = shutil.which("gtlsserver") or shutil.which("gtlsserver", path="/usr/sbin:/sbin")


@pytest.mark.skipif(GTLSCLIENT is None, reason="ngtcp2-client (gtlsclient) is not installed")
@pytest.mark.parametrize("table", [0, 4096])  # our QPACK encoder: static table only (default), or dynamic
def test_ngtcp2_client_against_asgi_server(server_credential: pymsquic.Credential, tmp_path: Path, table: int) -> None:
    assert GTLSCLIENT is not None
    posted = tmp_path / "post.bin"
    posted.write_bytes(b"posted by ngtcp2 " * 300)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    async def gtlsclient(port: int, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            GTLSCLIENT, "-q", "--exit-on-all-streams-close", "--download", str(downloads), *args, "127.0.0.1",
            str(port), *[f"https://127.0.0.1:{port}/{name}" for name in ("get4000", "a", "b", "c")][:1 if args else 4],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, (out + err).decode(errors="replace")

    async def main() -> None:
        async with await pymsquic.h3.serve(asgi_app, "127.0.0.1", 0, credential=server_credential,
                                           qpack_encoder_max_table_capacity=table) as server:
            port = server.addresses[0][1]
            await gtlsclient(port)  # four GETs on one connection
            for name in ("get4000", "a", "b", "c"):
                assert (downloads / name).read_bytes() == BODY_4000
            await gtlsclient(port, "-m", "POST", "-d", str(posted))  # POST: echoed
            assert (downloads / "get4000").read_bytes() == posted.read_bytes()

    asyncio.run(main())


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.skipif(GTLSSERVER is None, reason="ngtcp2-server (gtlsserver) is not installed")
def test_client_against_ngtcp2_server(cert_files: tuple[Path, Path], tmp_path: Path) -> None:
    assert GTLSSERVER is not None
    certfile, keyfile = cert_files
    htdocs = tmp_path / "htdocs"
    htdocs.mkdir()
    (htdocs / "body4000").write_bytes(BODY_4000)
    for i in range(8):
        (htdocs / f"file{i}").write_bytes(bytes([i]) * (1000 * i + 1))
    port = free_udp_port()
    server = subprocess.Popen([GTLSSERVER, "-q", "-d", str(htdocs), "127.0.0.1", str(port), str(keyfile),
                               str(certfile)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def main() -> None:
        url = f"https://127.0.0.1:{port}"
        async with pymsquic.h3.Client(ca_file=certfile, server_name="localhost", timeout=10) as client:
            for attempt in range(50):  # until gtlsserver has bound its port (it says nothing with -q)
                try:
                    response = await client.get(f"{url}/body4000")
                    break
                except pymsquic.ConnectionClosed:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.1)
            assert response.status_code == 200 and response.content == BODY_4000
            responses = await asyncio.gather(*(client.get(f"{url}/file{i}") for i in range(8)))
            assert [r.content for r in responses] == [bytes([i]) * (1000 * i + 1) for i in range(8)]
            response = await client.post(f"{url}/body4000", content=b"ignored by a file server" * 100)
            assert response.status_code == 200
            assert (await client.get(f"{url}/missing")).status_code == 404

    try:
        asyncio.run(main())
    finally:
        server.terminate()
        server.communicate(timeout=10)
