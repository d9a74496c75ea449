"""asyncio QUIC echo client that trusts the server by its certificate's
SHA-256 fingerprint (pinning) instead of a CA: a self-signed certificate is
accepted when its fingerprint is the expected one, and any other is rejected,
whoever signed it.

    python examples/pinned_client.py --port 4433 --ca /tmp/echo-ca.pem

Here --ca names the certificate whose fingerprint is pinned (what
echo_server.py writes with --ca-out); it is not trusted as a CA.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sys
from typing import Callable

from _cli import client_arguments
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from echo_client import datagram_round_trip, round_trip

from pymsquic import CertificateCheck, Credential, HandshakeError
from pymsquic.asyncio import connect


def pinned(fingerprint: bytes) -> Callable[[CertificateCheck], bool]:
    """A verify callable accepting only the certificate with this SHA-256 fingerprint."""
    def verify(check: CertificateCheck) -> bool:
        # Runs in connect(), on this event loop, after msquic's own chain check,
        # whose verdict (check.chain_error) pinning does not need.
        return hmac.compare_digest(hashlib.sha256(check.leaf).digest(), fingerprint)
    return verify


async def main() -> int:
    args, _ = client_arguments(__doc__)
    with open(args.ca, "rb") as pem:
        der = x509.load_pem_x509_certificate(pem.read()).public_bytes(Encoding.DER)
    fingerprint = hashlib.sha256(der).digest()
    print(f"pinned sha256 {fingerprint.hex()}")
    credential = Credential.client(verify=pinned(fingerprint))
    try:
        async with connect(args.host, args.port, alpn=args.alpn, credential=credential,
                           server_name="localhost") as conn:
            print(f"connected to {conn.remote_address} (alpn {conn.alpn})")
            messages = [f"hello from stream {i}".encode() for i in range(args.streams)]
            results = await asyncio.gather(*(round_trip(conn, message) for message in messages))
            datagram_ok = await datagram_round_trip(conn, b"hello datagram")
    except HandshakeError as exc:
        print(f"refused: {exc}")
        return 2
    ok = all(results) and datagram_ok
    print("all echoes match" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
