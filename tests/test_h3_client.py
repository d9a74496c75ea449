"""pymsquic.h3's Client against pymsquic.h3's ASGI server: certificate checks,
streaming bodies both ways, trailers, timeouts and cancellation, GOAWAY, lifespan."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from test_h3_interop import read_body

import pymsquic
import pymsquic.h3
from pymsquic.h3 import ErrorCode

state: dict[str, Any] = {}  # what the app saw, and the test's events (made on its loop)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            state.setdefault("lifespan", []).append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    state["in flight"] = state.get("in flight", 0) + 1
    state["peak"] = max(state.get("peak", 0), state["in flight"])
    try:
        await respond(scope, receive, send)
    finally:
        state["in flight"] -= 1


async def respond(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path = scope["path"]
    if path == "/host":  # the host the request named
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": dict(scope["headers"])[b"host"]})
        return
    if path == "/early":  # answers at once, without reading the body (the server then sends STOP_SENDING)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"answered early"})
        return
    if path == "/head-then-hang":  # the response's head and some body, then waits for the client to go away
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        path = "/hang"
    if path == "/hang":  # waits for the client to go away
        state["hang started"].set()
        while (await receive())["type"] != "http.disconnect":
            pass
        state["hang disconnected"].set()
        return
    if path.startswith("/held"):  # answers once 5 requests are in at once
        if state["in flight"] >= 5:
            state["full"].set()
        await state["full"].wait()
    if path == "/slow":  # answers once the test says so
        state["slow started"].set()
        await state["slow go"].wait()
    body = await read_body(receive)
    headers = [(b"x-method", scope["method"].encode())]
    if path == "/lying":
        headers.append((b"content-length", b"10"))
    if path == "/bad-header":  # a value that would split the field on HTTP/1: the server refuses it
        headers.append((b"x-split", b"1\r\nset-cookie: evil"))
    if path == "/hop-by-hop":  # HTTP/1.1 fields an app may set: the server leaves them out
        headers += [(b"Connection", b"keep-alive"), (b"Transfer-Encoding", b"chunked"), (b"X-Kept", b"yes")]
    await send({"type": "http.response.start", "status": 201, "headers": headers, "trailers": path == "/stream"})
    if path == "/stream":
        for i in range(10):
            await send({"type": "http.response.body", "body": bytes([i]) * 3000, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.trailers", "headers": [(b"x-sum", str(len(body)).encode())]})
    else:
        await send({"type": "http.response.body", "body": body or b"short"})


async def start(credential: pymsquic.Credential) -> tuple[pymsquic.h3.H3Server, str]:
    state.clear()
    for name in ("hang started", "hang disconnected", "slow started", "slow go"):
        state[name] = asyncio.Event()
    server = await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=credential)
    return server, f"https://127.0.0.1:{server.addresses[0][1]}"


def test_certificate_verified_by_default(server_credential: pymsquic.Credential, tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(server_credential.certificate_pem or b"")

    async def main() -> None:
        server, url = await start(server_credential)
        async with server:
            async with pymsquic.h3.Client(timeout=10) as client:  # the system CA store: refused
                with pytest.raises(pymsquic.ConnectionClosed):
                    await client.get(f"{url}/")
            async with pymsquic.h3.Client(ca_file=ca_file, server_name="localhost", timeout=10) as client:
                response = await client.get(f"{url}/")
                assert response.status_code == 201 and response.content == b"short"
        assert state["lifespan"] == ["lifespan.startup", "lifespan.shutdown"]

    asyncio.run(main())


def test_streaming_bodies_trailers_and_one_connection(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            payload = bytes(range(256)) * 400  # 100 KiB each way
            response = await client.post(f"{url}/stream", content=payload, stream=True)
            assert response.status_code == 201 and response.header("X-Method") == "POST"
            chunks = [chunk async for chunk in response.aiter_bytes()]
            assert b"".join(chunks) == b"".join(bytes([i]) * 3000 for i in range(10))
            assert response.trailers == [("x-sum", str(len(payload)))]
            echoes = await asyncio.gather(*(client.put(f"{url}/{i}", content=str(i).encode() * 1000)
                                            for i in range(30)))
            assert [r.content for r in echoes] == [str(i).encode() * 1000 for i in range(30)]
            assert len(client._connections) == 1
            assert len(server.quic_server._connections) == 1

    asyncio.run(main())


def test_timeout_cancels_the_request(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=0.5) as client:
            with pytest.raises(asyncio.TimeoutError):
                await client.get(f"{url}/hang")
            await asyncio.wait_for(state["hang disconnected"].wait(), 10)  # H3_REQUEST_CANCELLED reached the app
            assert (await client.get(f"{url}/after")).status_code == 201  # the connection carries on

    asyncio.run(main())


def test_timeouts_among_other_requests_and_cancellations(server_credential: pymsquic.Credential) -> None:
    """A client's requests share one deadline timer: each hanging request times out
    on its own (its cancellation reaching the app), those answered between are left
    alone, a cancellation from elsewhere stays a CancelledError, and a timeout
    shortened while a longer one is pending still bounds the next request."""
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=0.5) as client:
            paths = ["/hang", "/after", "/hang", "/after", "/hang"]
            results = await asyncio.gather(*(client.get(url + path) for path in paths), return_exceptions=True)
            for path, result in zip(paths, results):
                if path == "/hang":
                    assert isinstance(result, asyncio.TimeoutError), result
                else:
                    assert isinstance(result, pymsquic.h3.Response) and result.status_code == 201, result
            await asyncio.wait_for(state["hang disconnected"].wait(), 10)

            state["hang started"].clear()
            task = asyncio.ensure_future(client.get(f"{url}/hang"))
            await state["hang started"].wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            client.timeout = 10
            slow = asyncio.ensure_future(client.get(f"{url}/slow"))  # a deadline 10 s on, pending
            await state["slow started"].wait()
            client.timeout = 0.3  # an earlier deadline than the pending one
            with pytest.raises(asyncio.TimeoutError):
                await client.get(f"{url}/hang")
            state["slow go"].set()
            assert (await slow).status_code == 201
            assert (await client.get(f"{url}/after")).status_code == 201  # the connection carries on

    asyncio.run(main())


def test_timeout_reading_a_streamed_body_cancels_the_request(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=0.5) as client:
            response = await client.get(f"{url}/head-then-hang", stream=True)
            assert response.status_code == 200
            with pytest.raises(asyncio.TimeoutError):
                await response.read()
            # H3_REQUEST_CANCELLED reached the app at once, not at the client's close
            await asyncio.wait_for(state["hang disconnected"].wait(), 10)

    asyncio.run(main())


def test_content_length_mismatch_is_message_error(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            with pytest.raises(pymsquic.h3.H3StreamError) as info:
                await client.get(f"{url}/lying")
            assert info.value.error_code == ErrorCode.H3_MESSAGE_ERROR

    asyncio.run(main())


def test_graceful_shutdown_sends_goaway_and_finishes_requests(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        server, url = await start(server_credential)
        async with pymsquic.h3.Client(verify=False, timeout=10) as client:
            slow = asyncio.ensure_future(client.post(f"{url}/slow", content=b"in flight"))
            await asyncio.wait_for(state["slow started"].wait(), 10)
            h3 = next(iter(client._connections.values()))
            server.close(grace=10)
            await asyncio.wait_for(h3.goaway_received.wait(), 10)
            assert h3.goaway_id == 4  # stream 0 is in, nothing after it
            state["slow go"].set()
            response = await slow  # the request already in completes
            assert response.content == b"in flight"
            await asyncio.wait_for(server.wait_closed(), 10)
            assert h3.quic.close_reason is not None and h3.quic.close_reason.error_code == ErrorCode.H3_NO_ERROR

    asyncio.run(main())


def test_more_requests_than_the_server_allows_at_once(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        state.clear()
        server = await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential,
                                         max_concurrent_requests=5)
        state["full"] = asyncio.Event()
        url = f"https://127.0.0.1:{server.addresses[0][1]}"
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            # QUIC's stream limit holds the 6th and later requests until earlier ones end
            responses = await asyncio.gather(*(client.post(f"{url}/held{i}", content=b"%d" % i)
                                             for i in range(40)))
            assert [r.content for r in responses] == [b"%d" % i for i in range(40)]
            assert state["peak"] == 5  # 5 at once: the held ones waited for each other
            (conn,) = server.quic_server._connections
            assert conn.read_settings().peer_bidi_stream_count == 5  # QUIC's limit, not more, held the rest
            assert len(client._connections) == 1

    asyncio.run(main())


def test_streamed_request_body(server_credential: pymsquic.Credential) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(50):
            yield bytes([i]) * 10_000  # 500 kB, drained piece by piece

    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            response = await client.post(f"{url}/upload", content=body())
            assert response.content == b"".join(bytes([i]) * 10_000 for i in range(50))

    asyncio.run(main())


def test_connection_specific_fields_of_the_app_are_left_out(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            response = await client.get(f"{url}/hop-by-hop")  # the client would refuse them (H3_MESSAGE_ERROR)
            assert response.header("x-kept") == "yes" and response.header("connection") is None

    asyncio.run(main())


def test_header_section_over_the_servers_limit_is_refused_here(server_credential: pymsquic.Credential) -> None:
    """Over the server's SETTINGS_MAX_FIELD_SECTION_SIZE: a ValueError here, nothing sent."""
    async def main() -> None:
        state.clear()
        server = await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential,
                                         max_field_section_size=1000)
        url = f"https://127.0.0.1:{server.addresses[0][1]}"
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            assert (await client.get(f"{url}/", headers={"x-small": "1"})).status_code == 201
            h3 = next(iter(client._connections.values()))
            assert (await asyncio.wait_for(h3.peer_settings, 10))[0x6] == 1000  # SETTINGS_MAX_FIELD_SECTION_SIZE
            with pytest.raises(ValueError, match="at most 1000"):
                await client.get(f"{url}/", headers={"x-big": "v" * 2000})
            assert (await client.get(f"{url}/")).status_code == 201  # nothing was sent; all is well

            # A request without fields of the caller's is encoded once and kept (client.py
            # _PREPARED): the first goes out on a connection just made, before its SETTINGS are
            # read (nothing checked it); the next, taken from what was kept, is refused here.
            long_url = f"{url}/{'p' * 2000}"
            async with pymsquic.h3.Client(verify=False, timeout=10) as fresh:
                with pytest.raises(pymsquic.StreamReset) as first:
                    await fresh.get(long_url)
                assert first.value.error_code == ErrorCode.H3_EXCESSIVE_LOAD  # the server's refusal
                await asyncio.wait_for(next(iter(fresh._connections.values())).peer_settings, 10)
                with pytest.raises(ValueError, match="at most 1000"):
                    await fresh.get(long_url)

    asyncio.run(main())


def test_after_goaway_requests_in_flight_finish_and_new_ones_use_a_new_connection(
        server_credential: pymsquic.Credential) -> None:
    """GOAWAY on one connection only (the listener stays open): the next request opens a
    new connection, and retiring the old one must not cancel the request still in flight."""
    async def main() -> None:
        await start(server_credential)  # the state's events (the server it starts is not used)
        goaways: list[asyncio.Event] = []

        async def handler(quic: pymsquic.asyncio.Connection) -> None:
            goaways.append(asyncio.Event())
            await pymsquic.h3.server.serve_connection(app, quic, shutdown=goaways[-1])

        settings = pymsquic.Settings(peer_bidi_stream_count=100, peer_unidi_stream_count=16, idle_timeout_ms=30_000)
        async with pymsquic.asyncio.serve(handler, "127.0.0.1", 0, alpn="h3", credential=server_credential,
                                          settings=settings) as quic_server:
            url = f"https://127.0.0.1:{quic_server.addresses[0][1]}"
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                slow = asyncio.ensure_future(client.post(f"{url}/slow", content=b"in flight"))
                await asyncio.wait_for(state["slow started"].wait(), 10)
                old = next(iter(client._connections.values()))
                goaways[0].set()
                await asyncio.wait_for(old.goaway_received.wait(), 10)
                assert (await client.get(f"{url}/after")).content == b"short"  # on a new connection
                assert len(goaways) == 2 and not old.quic.is_closed
                state["slow go"].set()
                assert (await slow).content == b"in flight"  # not cancelled by the new connection
                await asyncio.wait_for(old.quic.wait_closed(), 10)  # and the old one is closed after it

    asyncio.run(main())


def test_lifespan_startup_failed_stops_serve_and_leaves_nothing_running(
        server_credential: pymsquic.Credential) -> None:
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        await receive()  # never answered: a server must not leave this waiting

    async def main() -> None:
        with pytest.raises(pymsquic.h3.LifespanStartupFailed, match="no database"):
            await pymsquic.h3.serve(failing, "127.0.0.1", 0, credential=server_credential)
        assert [task for task in asyncio.all_tasks() if task is not asyncio.current_task()] == []

    asyncio.run(main())


def test_lifespan_state_reaches_the_request_scope(server_credential: pymsquic.Credential) -> None:
    async def stateful(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                scope["state"]["db"] = "connected"
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        scope["state"]["mine"] = True  # a request's own copy (ASGI: shallow copy per request)
        body = scope["state"].get("db", "missing").encode() + b" %d" % len(scope["state"])
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})

    async def main() -> None:
        async with await pymsquic.h3.serve(stateful, "127.0.0.1", 0, credential=server_credential) as server:
            url = f"https://127.0.0.1:{server.addresses[0][1]}/"
            async with pymsquic.h3.Client(verify=False, timeout=10) as client:
                assert (await client.get(url)).content == b"connected 2"
                assert (await client.get(url)).content == b"connected 2"  # not 3: each request its copy

    asyncio.run(main())


def test_malformed_fields_are_refused_on_our_side(server_credential: pymsquic.Credential) -> None:
    """A request field the server would reset (H3_MESSAGE_ERROR) is a ValueError before anything
    is sent; a response field the app gives that way is the app's error: a 500."""
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            for headers in ({"x-a": "1\r\nx-b: 2"}, {"connection": "keep-alive"}, {"bad name": "1"}):
                with pytest.raises(ValueError, match="malformed"):
                    await client.get(f"{url}/", headers=headers)
            assert (await client.get(f"{url}/bad-header")).status_code == 500

    asyncio.run(main())


def test_lifespan_failing_at_shutdown_is_logged_as_an_error(server_credential: pymsquic.Credential,
                                                            caplog: Any) -> None:
    async def failing_shutdown(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("cleanup broke")

    async def main() -> None:
        async with await pymsquic.h3.serve(failing_shutdown, "127.0.0.1", 0, credential=server_credential):
            pass

    asyncio.run(main())
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and r.getMessage() == "ASGI lifespan failed"]
    assert failed and "cleanup broke" in str(failed[0].exc_info)


def test_serve_that_cannot_listen_shuts_its_lifespan_down(server_credential: pymsquic.Credential) -> None:
    async def main() -> None:
        server, _ = await start(server_credential)
        async with server:
            with pytest.raises(pymsquic.QuicError, match="ALPN_IN_USE"):  # the same port and ALPN: taken
                await pymsquic.h3.serve(app, "127.0.0.1", server.addresses[0][1], credential=server_credential)
            # the second app's lifespan ended (its shutdown), not left waiting
            assert state["lifespan"] == ["lifespan.startup", "lifespan.startup", "lifespan.shutdown"]

    asyncio.run(main())


def test_response_before_the_whole_streamed_body_is_kept(server_credential: pymsquic.Credential) -> None:
    """RFC 9114 4.1: a server may answer before reading the whole request and stop it with
    STOP_SENDING H3_NO_ERROR; the client must not discard that complete response."""
    async def endless() -> AsyncIterator[bytes]:
        while True:  # only the server's STOP_SENDING ends this body
            yield b"x" * 10_000

    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            response = await client.post(f"{url}/early", content=endless())
            assert response.status_code == 200 and response.content == b"answered early"

    asyncio.run(main())


def test_userinfo_of_the_url_is_not_sent(server_credential: pymsquic.Credential) -> None:
    """RFC 9114 4.3.1: :authority has no userinfo (nor does it leak the URL's password)."""
    async def main() -> None:
        server, url = await start(server_credential)
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            response = await client.get(url.replace("https://", "https://user:secret@") + "/host")
            assert response.content == url.removeprefix("https://").encode()

    asyncio.run(main())
