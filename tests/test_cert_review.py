"""Regression tests for the review of the certificate checks (issue 10): each
test failed before its fix. Real msquic over loopback, aioquic as the peer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_certificates import (
    CRYPTO_ERROR,
    WAIT,
    AioquicPeer,
    Recorder,
    aioquic_client,
    aioquic_server,
    make_cert,
    pymsquic_connect,
    serve_with,
    worlds_asyncio,
)

import pymsquic
from pymsquic._msquic import lib

from conftest import ALPN

BAD_CERTIFICATE = 42


def client_with_certificate(tmp_path: Path, credential: pymsquic.Credential,
                            registration: pymsquic.Registration) -> AioquicPeer:
    """An aioquic client presenting a self-signed certificate to a pymsquic server of ``credential``."""
    client_cert = make_cert(tmp_path, "client.example")

    async def main() -> AioquicPeer:
        async with await serve_with(worlds_asyncio(), registration, credential=credential) as server:
            return await aioquic_client(server.port, "localhost", client_cert)

    return asyncio.run(main())


@contextlib.contextmanager
def pending_client_check(tmp_path: Path, registration: pymsquic.Registration, verify: Any,
                         ) -> Iterator[tuple[pymsquic.sync.Listener, pymsquic.sync.Connection]]:
    """A sync listener whose credential checks client certificates with ``verify``,
    and a client (with a certificate) whose check waits for the listener's accept.
    The handshake idle timeout (60 s) is beyond the tests' waits."""
    server_cert = make_cert(tmp_path, "localhost")
    client_cert = make_cert(tmp_path, "client.example")
    config = pymsquic.Configuration(registration, ALPN, server_cert.credential.requiring_client_auth(verify=verify),
                                    pymsquic.Settings(handshake_idle_timeout_ms=60_000))
    client = pymsquic.Credential.client(verify=False, certfile=client_cert.certfile, keyfile=client_cert.keyfile)
    with pymsquic.sync.Listener(registration, config) as listener:
        listener.start(ALPN, ("127.0.0.1", 0))
        port = listener.local_address[1]  # type: ignore[index]
        with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client, registration=registration,
                                   server_name="localhost", open_timeout=WAIT) as conn:
            yield listener, conn


def assert_rejected(conn: pymsquic.sync.Connection) -> None:
    """The server rejected the client's certificate (alert bad_certificate), at once."""
    conn.wait_closed(timeout=WAIT)
    reason = conn.close_reason
    assert isinstance(reason, pymsquic.HandshakeError) and reason.alert == BAD_CERTIFICATE, reason


# ---- 1: a server credential never fails open ------------------------------------------

def test_requiring_client_auth_without_verify_drops_the_deferral(tmp_path: Path,
                                                                 registration: pymsquic.Registration) -> None:
    """verify_client, then requiring_client_auth(ca_file) without verify: msquic's
    own check against ca_file decides again (the deferral flag left behind
    accepted any client certificate)."""
    server_cert = make_cert(tmp_path, "localhost")
    ca = make_cert(tmp_path, "ca.example")
    first = pymsquic.Credential.from_files(server_cert.certfile, server_cert.keyfile, verify_client=Recorder(True))
    credential = first.requiring_client_auth(ca_file=ca.certfile)
    assert not credential.flags & lib.PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION
    peer = client_with_certificate(tmp_path, credential, registration)
    assert not peer.buffers  # the handler never ran
    assert peer.terminated is not None and peer.terminated.error_code != 0


def test_deferral_flag_and_verify_go_together(tmp_path: Path) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    deferred = pymsquic.Credential.from_files(server_cert.certfile, server_cert.keyfile, verify_client=Recorder())
    with pytest.raises(ValueError, match="verify"):
        dataclasses.replace(deferred, verify=None)
    plain = pymsquic.Credential.from_files(server_cert.certfile, server_cert.keyfile)
    with pytest.raises(ValueError, match="verify"):
        dataclasses.replace(plain, verify=Recorder())
    with pytest.raises(ValueError, match="verify"):
        pymsquic.Credential(lib.PMQ_CRED_NONE, lib.QUIC_CREDENTIAL_FLAG_CLIENT
                            | lib.PMQ_CRED_FLAG_DEFER_CERTIFICATE_VALIDATION)


def test_native_check_off_with_deferred_failure_rejects(tmp_path: Path,
                                                        registration: pymsquic.Registration) -> None:
    """The C side fails closed on its own: a deferred credential whose check mode
    is off (no callable) rejects a certificate msquic's chain check failed."""
    server_cert = make_cert(tmp_path, "localhost")
    credential = pymsquic.Credential.from_files(server_cert.certfile, server_cert.keyfile,
                                                verify_client=Recorder(True))
    object.__setattr__(credential, "verify", None)  # what __post_init__ refuses: only C stands in the way
    assert credential.cert_check_mode == lib.PMQ_CERT_CHECK_OFF
    peer = client_with_certificate(tmp_path, credential, registration)
    assert not peer.buffers
    assert peer.terminated is not None and peer.terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE

    async def without_certificate() -> AioquicPeer:
        async with await serve_with(worlds_asyncio(), registration, credential=credential) as server:
            return await aioquic_client(server.port, "localhost", None)

    peer = asyncio.run(without_certificate())  # msquic's verdict: CERT_NO_CERT, a failure too
    assert not peer.buffers and peer.terminated is not None and peer.terminated.error_code != 0


# ---- 2: only True accepts; async checks are refused -----------------------------------

async def _async_check(check: pymsquic.CertificateCheck) -> bool:
    return True


class _AsyncCallable:
    async def __call__(self, check: pymsquic.CertificateCheck) -> bool:
        return True


@pytest.mark.parametrize("verify", [_async_check, _AsyncCallable()], ids=["function", "object"])
def test_async_verify_is_refused_at_construction(verify: Any, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="async"):
        pymsquic.Credential.client(verify=verify)
    server_cert = make_cert(tmp_path, "localhost")
    with pytest.raises(TypeError, match="async"):
        pymsquic.Credential.from_files(server_cert.certfile, server_cert.keyfile, verify_client=verify)
    with pytest.raises(TypeError, match="async"):
        server_cert.credential.requiring_client_auth(verify=verify)


@pytest.mark.parametrize("answer", ["yes", 1, [0]], ids=repr)
def test_only_true_accepts(answer: Any, tmp_path: Path, caplog: Any,
                           registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    recorder = Recorder(answer)
    credential = server_cert.credential.requiring_client_auth(verify=recorder)
    with caplog.at_level(logging.ERROR, logger="pymsquic"):
        peer = client_with_certificate(tmp_path, credential, registration)
    assert len(recorder.checks) == 1
    assert not peer.buffers
    assert peer.terminated is not None and peer.terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE
    assert any("not a bool" in r.getMessage() for r in caplog.records)


def test_awaitable_result_is_refused_and_closed(tmp_path: Path, caplog: Any,
                                                registration: pymsquic.Registration) -> None:
    """A plain callable that returns a coroutine (an async check in disguise):
    refused, and the coroutine closed, never left to warn 'never awaited'."""
    server_cert = make_cert(tmp_path, "localhost")
    made: list[Any] = []

    def verify(check: pymsquic.CertificateCheck) -> Any:
        made.append(_async_check(check))
        return made[-1]

    credential = server_cert.credential.requiring_client_auth(verify=verify)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with caplog.at_level(logging.ERROR, logger="pymsquic"):
            peer = client_with_certificate(tmp_path, credential, registration)
        assert len(made) == 1 and made[0].cr_frame is None  # closed
    assert peer.terminated is not None and peer.terminated.error_code == CRYPTO_ERROR + BAD_CERTIFICATE
    assert any("awaitable" in r.getMessage() for r in caplog.records)


# ---- 3: an internationalised name is checked as sent (IDNA) ------------------------------

def test_default_verify_with_idna_server_name(tmp_path: Path, registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "xn--bcher-kva.example")  # bücher.example, as certificates hold it
    recorder = Recorder(True)

    async def main() -> None:
        server, port, _ = await aioquic_server(server_cert)
        try:
            w = worlds_asyncio()
            credential = pymsquic.Credential.client(ca_file=server_cert.certfile)  # verify=True
            assert await pymsquic_connect(w, port, registration, credential, "bücher.example") == server_cert.der
            await pymsquic_connect(w, port, registration, pymsquic.Credential.client(verify=recorder),
                                   "Bücher.example")
        finally:
            server.close()

    asyncio.run(main())
    assert recorder.checks[0].server_name == "xn--bcher-kva.example"


# ---- 5: the default check refuses a client check without a server name ---------------------

def test_default_verify_without_server_name_refuses(tmp_path: Path) -> None:
    from pymsquic._core.certificates import verify_default

    cert = make_cert(tmp_path, "localhost")
    assert verify_default(pymsquic.CertificateCheck([cert.der], "localhost"))
    assert not verify_default(pymsquic.CertificateCheck([cert.der], None))


# ---- 6: a wildcard needs at least two labels after "*." -------------------------------------

@pytest.mark.parametrize("pattern, name, matches", [
    ("*.com", "example.com", False),
    ("*.com.", "example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.b.example.com", False),
])
def test_wildcard_needs_two_labels(pattern: str, name: str, matches: bool, tmp_path: Path) -> None:
    assert pymsquic.server_name_matches(make_cert(tmp_path, pattern).der, name) is matches


# ---- 8: a taken server check is completed whatever raises before the callable -------------

def test_server_check_completed_when_preparing_it_raises(tmp_path: Path, registration: pymsquic.Registration,
                                                         monkeypatch: Any) -> None:
    """Fault injection: reading the connection's record raises before the
    callable runs; the check is still completed (rejected at once), not left
    to the handshake idle timeout (60 s here, beyond the test's wait)."""
    import pymsquic._core.listener as core_listener

    def broken(info: Any) -> Any:
        raise KeyboardInterrupt

    recorder = Recorder(True)
    with pending_client_check(tmp_path, registration, recorder) as (listener, conn):
        monkeypatch.setattr(core_listener, "_new_connection_info", broken)
        with pytest.raises(KeyboardInterrupt):
            listener.accept(timeout=WAIT)
        monkeypatch.undo()
        assert_rejected(conn)
    assert recorder.checks == []


# ---- 4: a custom callable keeps the name check with check.name_matches() ------------------

def test_name_matches_in_a_custom_callable(tmp_path: Path, registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    seen: list[bool] = []

    def verify(check: pymsquic.CertificateCheck) -> bool:
        seen.append(check.name_matches())
        return check.chain_verified and seen[-1]

    async def main() -> None:
        server, port, _ = await aioquic_server(server_cert)
        try:
            credential = pymsquic.Credential.client(verify=verify, ca_file=server_cert.certfile)
            w = worlds_asyncio()
            assert await pymsquic_connect(w, port, registration, credential, "localhost") == server_cert.der
            with pytest.raises(pymsquic.HandshakeError, match="rejected"):
                await pymsquic_connect(w, port, registration, credential, "other.example")
        finally:
            server.close()

    asyncio.run(main())
    assert seen == [True, False]
    assert not pymsquic.CertificateCheck([server_cert.der], None).name_matches()


# ---- 9: resumption and required client-certificate checks do not mix --------------------

def test_resumption_with_required_client_checks_is_refused(tmp_path: Path,
                                                           registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    required = server_cert.credential.requiring_client_auth(verify=Recorder())
    with pytest.raises(ValueError, match="resum.*certificate"):
        pymsquic.Configuration(registration, ALPN, required, pymsquic.Settings(server_resumption_level=1))
    with pytest.raises(ValueError, match="server_resumption_level"):
        pymsquic.Configuration(registration, ALPN, required, pymsquic.Settings(server_resumption_level=2))
    # Without resumption, or with checks that accept a client without certificate, it loads.
    pymsquic.Configuration(registration, ALPN, required, pymsquic.Settings(server_resumption_level=0)).close()
    optional = server_cert.credential.requiring_client_auth(verify=Recorder(), required=False)
    pymsquic.Configuration(registration, ALPN, optional, pymsquic.Settings(server_resumption_level=2)).close()


# ---- 10: the configuration cache and verify callables ---------------------------------------

class _Unhashable:
    """A verify callable with __eq__ and so no __hash__ (like a plain dataclass)."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Unhashable) and other.answer == self.answer

    def __call__(self, check: pymsquic.CertificateCheck) -> bool:
        return self.answer


def test_cache_takes_closures_and_unhashable_callables(tmp_path: Path,
                                                       registration: pymsquic.Registration) -> None:
    from pymsquic._core.server import make_configuration

    def pinned(answer: bool) -> pymsquic.Credential:
        return pymsquic.Credential.client(verify=lambda check: answer)  # a new closure each call

    first, second = (make_configuration(registration, ALPN, pinned(a), None) for a in (True, False))
    assert first.handle == second.handle  # loaded once
    assert second.credential.verify is not first.credential.verify
    unhashable = make_configuration(registration, ALPN, pymsquic.Credential.client(verify=_Unhashable(True)), None)
    assert unhashable.handle == first.handle

    # Each connection is checked by its own callable, though they share msquic's configuration.
    server_cert = make_cert(tmp_path, "localhost")

    async def main() -> None:
        server, port, _ = await aioquic_server(server_cert)
        try:
            w = worlds_asyncio()
            await pymsquic_connect(w, port, registration, pymsquic.Credential.client(verify=_Unhashable(True)))
            with pytest.raises(pymsquic.HandshakeError, match="rejected"):
                await pymsquic_connect(w, port, registration, pymsquic.Credential.client(verify=_Unhashable(False)))
            await pymsquic_connect(w, port, registration, pinned(True))
            with pytest.raises(pymsquic.HandshakeError, match="rejected"):
                await pymsquic_connect(w, port, registration, pinned(False))
        finally:
            server.close()

    asyncio.run(main())


# ---- 12: the server name table is normalised and checked before the listener opens --------

@pytest.mark.parametrize("bad", ["*", "*.", "*.com", "a b.example", "a/b.example", "a..example", "-a.example",
                                 "a.*.example", ".", "a\x00b.example"], ids=repr)
def test_bad_server_names_refused(bad: str, registration: pymsquic.Registration, tmp_path: Path) -> None:
    config = pymsquic.Configuration(registration, ALPN, make_cert(tmp_path, "a.example").credential)
    with pytest.raises(ValueError, match="server name"):
        pymsquic.sync.Listener(registration, config, server_names={bad: config})


def test_duplicate_server_names_refused(registration: pymsquic.Registration, tmp_path: Path) -> None:
    config = pymsquic.Configuration(registration, ALPN, make_cert(tmp_path, "a.example").credential)
    with pytest.raises(ValueError, match="same name"):
        pymsquic.sync.Listener(registration, config, server_names={"a.example": config, "A.Example.": config})


def test_server_name_with_trailing_dot_and_capitals_is_found(registration: pymsquic.Registration,
                                                             tmp_path: Path) -> None:
    default = pymsquic.Configuration(registration, ALPN, make_cert(tmp_path, "default.example").credential)
    named = make_cert(tmp_path, "a.example")
    config = pymsquic.Configuration(registration, ALPN, named.credential)
    client = pymsquic.Credential.client(verify=False)
    with pymsquic.sync.Listener(registration, default, server_names={"A.Example.": config}) as listener:
        listener.start(ALPN, ("127.0.0.1", 0))
        port = listener.local_address[1]  # type: ignore[index]
        with pymsquic.sync.connect("127.0.0.1", port, alpn=ALPN, credential=client, registration=registration,
                                   server_name="a.example", open_timeout=WAIT) as conn:
            assert conn.peer_certificate == named.der
            listener.accept(timeout=WAIT).close()


# ---- 15: the certificate entry points check their object (PYMSQUIC_DEBUG_MAGIC builds) -------

_USE_AFTER_RELEASE = """
import pymsquic
from pymsquic._msquic import ffi, lib
reg = pymsquic.Registration("magic")
out = ffi.new("pmq_conn **")
assert lib.pmq_conn_open(reg.handle, out) == 0
conn = out[0]
lib.pmq_conn_release(conn)  # gone: the next call must abort, not read freed memory
lib.{call}
print("no abort")
"""


@pytest.mark.parametrize("call", ["pmq_conn_config_tag(conn)", "pmq_conn_set_cert_check(conn, 0)",
                                  "pmq_conn_cert_take(conn, ffi.new('pmq_cert_taken *'))",
                                  "pmq_conn_cert_complete(conn, 1, 0)"])
def test_certificate_entry_points_check_their_object(call: str, magic_build: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _USE_AFTER_RELEASE.format(call=call)], cwd=magic_build,
                            env={**os.environ, "PYTHONPATH": str(magic_build)}, capture_output=True, text=True,
                            timeout=30)  # without the check: a hang on the freed lock
    name = call.split("(")[0]
    assert result.returncode != 0 and f"{name}: object" in result.stderr and "is not alive" in result.stderr, (
        result.stdout, result.stderr)


@pytest.fixture(scope="module")
def magic_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout built with PYMSQUIC_DEBUG_MAGIC=1, in a copy (libmsquic comes from the cache)."""
    import shutil

    repo = Path(__file__).resolve().parent.parent
    copy = tmp_path_factory.mktemp("magic")
    for name in ("setup.py", "build_msquic.py", "CMakeLists.txt", "pyproject.toml", "MANIFEST.in", "LICENSE",
                 "README.md"):
        shutil.copy(repo / name, copy / name)
    shutil.copytree(repo / "native", copy / "native")
    shutil.copytree(repo / "pymsquic", copy / "pymsquic",
                    ignore=shutil.ignore_patterns("*.so", "*.so.*", "__pycache__", "THIRD_PARTY_NOTICES"))
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"], cwd=copy, check=True,
                   env={**os.environ, "PYMSQUIC_DEBUG_MAGIC": "1"}, capture_output=True, timeout=600)
    return copy


# ---- 17: what the callable raised reaches the client's error; server logs say which handshake --

def test_client_handshake_error_chains_the_callable_exception(tmp_path: Path,
                                                              registration: pymsquic.Registration) -> None:
    server_cert = make_cert(tmp_path, "localhost")
    error = LookupError("no such pin")

    async def main() -> None:
        server, port, _ = await aioquic_server(server_cert)
        try:
            with pytest.raises(pymsquic.HandshakeError) as raised:
                await pymsquic_connect(worlds_asyncio(), port, registration,
                                       pymsquic.Credential.client(verify=Recorder(error)))
            assert raised.value.__cause__ is error
            assert "LookupError" in str(raised.value)
        finally:
            server.close()

    asyncio.run(main())


def test_server_check_log_names_the_handshake(tmp_path: Path, caplog: Any,
                                              registration: pymsquic.Registration) -> None:
    error = RuntimeError("checker broke")
    with caplog.at_level(logging.ERROR, logger="pymsquic"):
        with pending_client_check(tmp_path, registration, Recorder(error)) as (listener, conn):
            while conn.close_reason is None:  # accept runs the check once it is pending; it rejects
                with pytest.raises(TimeoutError):
                    listener.accept(timeout=0.1)
            assert_rejected(conn)
            local = conn.local_address
    [record] = [r for r in caplog.records if r.exc_info and r.exc_info[1] is error]
    assert record.remote_address == local  # type: ignore[attr-defined]
    assert f"handshake from {local}" in record.getMessage()


# ---- 13: refusals for an unknown server name are counted as such -------------------------

def test_refused_server_name_counted(registration: pymsquic.Registration, tmp_path: Path) -> None:
    config = pymsquic.Configuration(registration, ALPN, make_cert(tmp_path, "a.example").credential)
    client = pymsquic.Credential.client(verify=False)
    with pymsquic.sync.Listener(registration, config, server_names={"a.example": config},
                                refuse_unknown_names=True) as listener:
        listener.start(ALPN, ("127.0.0.1", 0))
        with pytest.raises(pymsquic.ConnectionRefused):
            pymsquic.sync.connect("127.0.0.1", listener.local_address[1], alpn=ALPN,  # type: ignore[index]
                                  credential=client, registration=registration, server_name="b.example",
                                  open_timeout=WAIT)
        # No server name at all (an IP literal sends no SNI): refused the same way.
        with pytest.raises(pymsquic.ConnectionRefused):
            pymsquic.sync.connect("127.0.0.1", listener.local_address[1], alpn=ALPN,  # type: ignore[index]
                                  credential=client, registration=registration, open_timeout=WAIT)
        stats = listener.stats()
        assert stats.refused_server_name == 2 and stats.refused_other == 0


# ---- 14: a name's configuration must have the listener's ALPN -------------------------------

def test_server_name_configuration_with_another_alpn_refused(registration: pymsquic.Registration,
                                                             tmp_path: Path) -> None:
    credential = make_cert(tmp_path, "a.example").credential
    config = pymsquic.Configuration(registration, ALPN, credential)
    other = pymsquic.Configuration(registration, "other-alpn", credential)
    with pytest.raises(ValueError, match="ALPN"):
        pymsquic.sync.Listener(registration, config, server_names={"a.example": other})
