"""The ``pymsquic serve`` and ``pymsquic connect`` debugging tools (see ``pymsquic --help``)."""

from __future__ import annotations

import hashlib
import ssl
import sys
from pathlib import Path

from ..addresses import Address
from ..configuration import Credential
from ..errors import ConnectionClosed

__all__ = ["credential_fingerprint", "describe_close", "fingerprint", "format_address", "pem_fingerprint", "report"]


def fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as ``AB:CD:...`` (openssl's format)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def pem_fingerprint(pem: bytes) -> str:
    """The fingerprint of the first certificate in PEM text (the leaf of a chain file)."""
    text = pem.decode("ascii", "replace")
    end_marker = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find(end_marker, start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate found")
    return fingerprint(ssl.PEM_cert_to_DER_cert(text[start:end + len(end_marker)]))


def credential_fingerprint(credential: Credential, certfile: str | None) -> str:
    """The fingerprint of the certificate a server credential presents."""
    if certfile is not None:
        return pem_fingerprint(Path(certfile).read_bytes())
    return pem_fingerprint(credential.certificate_pem or b"")


def describe_close(reason: ConnectionClosed | None) -> str:
    """A close reason as one line, for the tools' output."""
    return "still open" if reason is None else str(reason)


def format_address(address: Address | None) -> str:
    """``host:port``, ``[v6host]:port``, or "unknown"."""
    if address is None:
        return "unknown"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def report(message: str) -> None:
    """Print a status line to stderr right away (the tools keep stdout for data)."""
    print(message, file=sys.stderr, flush=True)
