"""Certificate checks in Python: the record a ``verify`` callable gets, running
a check msquic deferred, and the server-name check msquic 2.5.1 lacks.

msquic runs its own chain check first (against ``ca_file`` or the system
store) and, with the check deferred, does not act on it: the callable sees the
verdict (:attr:`CertificateCheck.chain_error`) and decides alone, so pinning a
self-signed certificate works. The callable runs on the thread that waits for
the handshake (``connect``) or accepts connections (the listener's
``accept``, the server's accept loop), never on msquic's threads.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import logging
from typing import Any, Callable, NamedTuple, Union

from .._msquic import ffi, lib
from ..errors import status_name

#: ``verify=`` of :meth:`Credential.client` and ``verify_client=`` of the server
#: credentials: gets a :class:`CertificateCheck`, returns True to accept (anything else refuses).
VerifyCallback = Callable[["CertificateCheck"], bool]
VerifyLike = Union[bool, VerifyCallback]

#: The TLS alert a rejected certificate is answered with.
BAD_CERTIFICATE = 42


@dataclasses.dataclass(frozen=True)
class CertificateCheck:
    """What a ``verify`` callable decides on.

    ``chain`` is the peer's certificate chain as DER, leaf first, as far as
    msquic built it (the leaf alone when it could not build more, e.g. a
    self-signed certificate it does not trust). ``server_name`` is the name
    the client asked for (SNI): the client's own on the client, the one the
    client sent on a server (None if it sent none). ``chain_error`` is
    msquic's verdict on the chain against the credential's ``ca_file`` or the
    system store: None if it verified, else the status name
    (``"CERT_UNTRUSTED_ROOT"``, ``"CERT_EXPIRED"``...). msquic 2.5.1 does not
    check the name itself (see :func:`server_name_matches`).
    """

    chain: list[bytes]
    server_name: str | None
    chain_error: str | None = None

    @property
    def leaf(self) -> bytes:
        """The peer's own certificate (DER)."""
        return self.chain[0]

    @property
    def chain_verified(self) -> bool:
        """True if msquic verified the chain against the trusted CAs."""
        return self.chain_error is None

    def name_matches(self) -> bool:
        """Whether the leaf is valid for :attr:`server_name` (:func:`server_name_matches`);
        False without a server name. A client's custom ``verify`` callable replaces
        the default check, name check included: call this to keep it."""
        return self.server_name is not None and server_name_matches(self.leaf, self.server_name)


def server_name_matches(certificate: bytes, server_name: str) -> bool:
    """Whether a DER certificate is valid for ``server_name``: an IP literal
    against its IP address SANs, a host name against its DNS SANs (case-
    insensitive; a ``*.`` wildcard stands for exactly one whole left-most
    label, and needs two labels after it: ``*.com`` matches nothing). The
    subject's common name is not used, as in Python's ssl."""
    from cryptography import x509

    try:
        sans = x509.load_der_x509_certificate(certificate).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    try:
        address = ipaddress.ip_address(server_name.split("%", 1)[0])
    except ValueError:
        address = None
    if address is not None:
        return address in sans.get_values_for_type(x509.IPAddress)
    name = server_name.rstrip(".").lower()
    for pattern in sans.get_values_for_type(x509.DNSName):
        pattern = pattern.rstrip(".").lower()
        if pattern == name:
            return True
        # "*.com" would stand for a whole top-level domain: a wildcard needs two labels after it.
        if pattern.startswith("*.") and "." in pattern[2:] and "." in name:
            label, rest = name.split(".", 1)
            if label and rest == pattern[2:] and "*" not in rest:
                return True
    return False


def verify_default(check: CertificateCheck) -> bool:
    """``verify=True``: msquic verified the chain, and the leaf is valid for the
    server name (which msquic 2.5.1 does not check: microsoft/msquic#6274).
    Without a server name it refuses."""
    return _default_refusal(check) is None


def _default_refusal(check: CertificateCheck) -> tuple[str, int] | None:
    """Why verify_default refuses, and the TLS alert msquic's own check would send."""
    if not check.chain_verified:
        return f"its chain did not verify ({check.chain_error})", _CHAIN_ALERTS.get(check.chain_error or "",
                                                                                    BAD_CERTIFICATE)
    if check.server_name is None:  # nothing to check the name against: never a silent pass
        return "there is no server name to check it against", BAD_CERTIFICATE
    if not check.name_matches():
        return f"it is not valid for {check.server_name!r}", BAD_CERTIFICATE
    return None


# What OpenSSL answers msquic's (non-deferred) chain errors with.
_CHAIN_ALERTS = {"CERT_UNTRUSTED_ROOT": 48, "CERT_EXPIRED": 45}  # unknown_ca, certificate_expired


def _chain(taken: Any) -> list[bytes]:
    leaf = ffi.buffer(taken.leaf, taken.leaf_len)[:]
    chain = [leaf]
    if taken.chain_len:
        from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

        try:
            certificates = pkcs7.load_der_pkcs7_certificates(ffi.buffer(taken.chain, taken.chain_len)[:])
        except ValueError:
            certificates = []
        chain += [der for der in (c.public_bytes(Encoding.DER) for c in certificates) if der != leaf]
    return chain


class Refusal(NamedTuple):
    """Why a check refused a certificate, and the exception the callable raised, if any."""

    reason: str
    error: BaseException | None = None


class HandshakeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]  # generic only in typeshed
    """The logger of a server's check: the connection has no id before it is accepted,
    so its records say where it comes from (in front, and as ``remote_address``)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return f"[handshake from {(self.extra or {})['remote_address']}] {msg}", kwargs


def run_check(native_conn: Any, taken: Any, verify: VerifyCallback | None, server_name: str | None,
              log: logging.Logger | logging.LoggerAdapter) -> Refusal | None:  # type: ignore[type-arg]
    """Run ``verify`` on a check taken from ``native_conn`` and complete it:
    accepted if it returns True; rejected (alert bad_certificate) if it
    returns anything else or raises (logged on ``log``). Frees ``taken``. Returns
    None if accepted, else why not."""
    # Completed whatever happens (KeyboardInterrupt included): a taken check nobody
    # completes holds the handshake until its idle timeout.
    refusal: tuple[str, int] | None = (f"{verify!r} was interrupted", BAD_CERTIFICATE)
    error: BaseException | None = None
    try:
        status = taken.chain_status & 0xFFFFFFFF
        # The default check needs the leaf alone: no PKCS#7 parse of the chain (per handshake).
        chain = [ffi.buffer(taken.leaf, taken.leaf_len)[:]] if verify is verify_default else _chain(taken)
        check = CertificateCheck(chain, server_name, None if status == 0 else status_name(status))
        lib.pmq_cert_taken_clear(taken)
        if verify is verify_default:
            refusal = _default_refusal(check)
        elif verify is not None and _accepted(verify(check), verify, log):
            refusal = None
        else:
            refusal = f"rejected by {verify!r}", BAD_CERTIFICATE
    except Exception as exc:
        log.exception("certificate check %r raised; rejecting the certificate", verify)
        refusal = f"rejected by {verify!r} (it raised {type(exc).__name__})", BAD_CERTIFICATE
        error = exc
    finally:
        lib.pmq_cert_taken_clear(taken)  # safe twice: it clears the record
        if refusal is not None:
            log.info("certificate of %s refused: %s", server_name or "the peer", refusal[0])
        lib.pmq_conn_cert_complete(native_conn, refusal is None, refusal[1] if refusal else BAD_CERTIFICATE)
    return None if refusal is None else Refusal(refusal[0], error)


def _accepted(result: object, verify: VerifyCallback, log: logging.Logger | logging.LoggerAdapter) -> bool:  # type: ignore[type-arg]
    """Only True accepts: a coroutine or another awaitable (an ``async`` check
    nobody awaits) or any other object is a refusal, never truthiness."""
    if result is True:
        return True
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # never awaited: no "coroutine was never awaited" warning later
        log.error("certificate check %r returned an awaitable: checks run synchronously and must return "
                  "True or False; rejecting the certificate", verify)
    elif result is not False:
        log.error("certificate check %r returned %r, not a bool; rejecting the certificate", verify, result)
    return False


def check_verify_callable(verify: object, what: str) -> None:
    """TypeError unless ``verify`` is a plain (not ``async``) callable."""
    if not callable(verify):
        raise TypeError(f"{what} must be callable, not {type(verify).__name__}")
    # An object whose __call__ is async is as much an async check as a function.
    if inspect.iscoroutinefunction(verify) or inspect.iscoroutinefunction(type(verify).__call__):
        raise TypeError(f"{what} must be a plain function returning True or False, not an async function: "
                        "it runs synchronously during the handshake")


def check_mode(verify: object, require: bool) -> int:
    """The native check mode for a credential's callable."""
    if verify is None:
        return int(lib.PMQ_CERT_CHECK_OFF)
    return int(lib.PMQ_CERT_CHECK_PYTHON_REQUIRE if require else lib.PMQ_CERT_CHECK_PYTHON)
