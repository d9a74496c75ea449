"""Certificate validation by default, private CAs, and mutual TLS."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    pkcs12,
)

import pymsquic

ALPN = "secure"


def write_pem_pair(directory: Path, name: str, hostnames: tuple[str, ...]) -> tuple[Path, Path, bytes]:
    """A fresh self-signed certificate (its own CA) as PEM files; returns (cert, key, DER)."""
    credential = pymsquic.Credential.self_signed(hostnames)
    key, cert, _ = pkcs12.load_key_and_certificates(credential.pkcs12, None)
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_path, key_path, cert.public_bytes(Encoding.DER)


async def hello(conn: pymsquic.asyncio.Connection) -> None:
    stream = await conn.accept_stream()
    await stream.read()
    peer = conn.peer_certificate
    stream.write(b"client cert: " + (x509.load_der_x509_certificate(peer).subject.rfc4514_string().encode()
                                     if peer else b"none"), fin=True)
    await asyncio.wait_for(stream.wait_closed(), 10)


async def exchange(port: int, credential: pymsquic.Credential) -> bytes:
    async with pymsquic.connect("127.0.0.1", port, alpn=ALPN, credential=credential, server_name="localhost",
                                open_timeout=10) as conn:
        stream = conn.open_stream()
        stream.write(b"hi", fin=True)
        return await asyncio.wait_for(stream.read(), 10)


def run(server_credential: pymsquic.Credential, client_credential: pymsquic.Credential) -> bytes:
    async def main() -> bytes:
        async with pymsquic.serve(hello, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            return await exchange(server.addresses[0][1], client_credential)

    return asyncio.run(main())


def test_server_certificate_checked_by_default(tmp_path) -> None:
    cert, key, der = write_pem_pair(tmp_path, "server", ("localhost",))
    server = pymsquic.Credential.from_files(cert, key)
    with pytest.raises(pymsquic.ConnectionClosed) as info:
        run(server, pymsquic.Credential.client())
    assert info.value.by_transport and info.value.status_name is not None

    assert run(server, pymsquic.Credential.client(ca_file=cert)) == b"client cert: none"

    other_ca, _, _ = write_pem_pair(tmp_path, "other", ("localhost",))
    with pytest.raises(pymsquic.ConnectionClosed):
        run(server, pymsquic.Credential.client(ca_file=other_ca))


def test_client_sees_the_server_certificate(tmp_path) -> None:
    cert, key, der = write_pem_pair(tmp_path, "server", ("localhost",))

    async def main() -> bytes | None:
        server_credential = pymsquic.Credential.from_files(cert, key)
        async with pymsquic.serve(hello, "127.0.0.1", 0, alpn=ALPN, credential=server_credential) as server:
            async with pymsquic.connect("127.0.0.1", server.addresses[0][1], alpn=ALPN, server_name="localhost",
                                        credential=pymsquic.Credential.client(ca_file=cert)) as conn:
                return conn.peer_certificate

    assert asyncio.run(main()) == der


def test_mutual_tls_accepted_and_refused(tmp_path) -> None:
    server_cert, server_key, _ = write_pem_pair(tmp_path, "server", ("localhost",))
    client_cert, client_key, _ = write_pem_pair(tmp_path, "client", ("client.example",))
    stranger_cert, stranger_key, _ = write_pem_pair(tmp_path, "stranger", ("stranger.example",))
    server = pymsquic.Credential.from_files(server_cert, server_key, require_client_auth=True, ca_file=client_cert)

    trusted = pymsquic.Credential.client(ca_file=server_cert, certfile=client_cert, keyfile=client_key)
    assert run(server, trusted) == b"client cert: CN=client.example"

    anonymous = pymsquic.Credential.client(ca_file=server_cert)
    with pytest.raises(pymsquic.ConnectionClosed):
        run(server, anonymous)

    stranger = pymsquic.Credential.client(ca_file=server_cert, certfile=stranger_cert, keyfile=stranger_key)
    with pytest.raises(pymsquic.ConnectionClosed):
        run(server, stranger)


def test_credential_argument_checks(tmp_path) -> None:
    cert, key, _ = write_pem_pair(tmp_path, "server", ("localhost",))
    with pytest.raises(ValueError):
        pymsquic.Credential.client(certfile=cert)
    with pytest.raises(FileNotFoundError):
        pymsquic.Credential.client(ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValueError):
        pymsquic.Credential.client().requiring_client_auth()
    assert "secret" not in repr(pymsquic.Credential.from_files(cert, key, password="secret"))
