"""A minimal ASGI 3 server over HTTP/3: :func:`serve` runs ``app`` for every
request (``http`` scope; request and response bodies stream; trailers when
the app sends ``http.response.trailers``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, Awaitable, Callable, MutableMapping, NamedTuple, Tuple
from urllib.parse import unquote

from .. import asyncio as pymsquic_asyncio
from ..addresses import from_native
from ..configuration import Credential, Settings
from ..errors import ConnectionClosed, StreamError
from .client import bounded
from .connection import ALPN, H3Connection, RequestStream
from .errors import ErrorCode, H3Error, H3StreamError
from .frames import MAX_HEADERS_FRAME_SIZE
from .message import (
    CACHED_SECTION_MAX,
    CONNECTION_SPECIFIC,
    Headers,
    check_request,
    check_response,
    check_trailers,
    content_length,
    section_size,
)
from .qpack import DEFAULT_BLOCKED_STREAMS, DEFAULT_MAX_TABLE_CAPACITY

logger = logging.getLogger("pymsquic")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

class ClientDisconnected(OSError):
    """What the ASGI ``send()`` raises once the client is gone (it reset or stopped
    the request, or its connection closed): ASGI spec 2.4's server-specific
    OSError, as uvicorn's ``ClientDisconnected``. ``receive()`` says
    ``http.disconnect`` then."""


class LifespanStartupFailed(RuntimeError):
    """The app answered ``lifespan.startup`` with ``lifespan.startup.failed``:
    :func:`serve` raises it (its message is the app's) and serves nothing."""


#: Default seconds a request stream has to deliver its whole header section
#: (a slowloris client holds a request slot no longer).
HEADER_TIMEOUT = 10.0

#: Default maximum of requests in flight per connection (the peer's bidirectional stream limit).
MAX_CONCURRENT_REQUESTS = 100

# serve_connection() drops finished request tasks from its set once it holds this many (or
# twice what was left running at the last pruning).
_PRUNE_MIN = 64


class _Exchange:
    """One request: the ASGI ``receive``/``send`` pair over a :class:`RequestStream`."""

    __slots__ = ("request", "head", "expected_length", "body_done", "response_done", "_done_event", "status",
                 "response_headers", "_head_key", "_head_frame", "_head_size", "trailers_expected", "headers_sent",
                 "disconnected")

    def __init__(self, request: RequestStream, expected_length: int | None, head: bool = False) -> None:
        self.request = request
        self.head = head  # a HEAD response has no body, whatever the app sends (as uvicorn, hypercorn)
        self.expected_length = request.expected_length = expected_length
        self.body_done = False
        # The response is over (sent, or given up): a flag, and an Event only when
        # receive() has to wait for it (rare: no asyncio.Event per request).
        self.response_done = False
        self._done_event: asyncio.Event | None = None
        self.status: int | None = None
        self.response_headers: Headers = []
        self._head_key: tuple[Any, ...] | None = None  # the response head's key in _HEADS
        self._head_frame: bytes | None = None  # its HEADERS frame, when _HEADS had it
        self._head_size = 0  # and its field section's size (RFC 9114 section 4.2.2)
        self.trailers_expected = False
        self.headers_sent = False
        self.disconnected = False  # the client went away: receive() says so, send() drops

    def _finish(self) -> None:
        self.response_done = True
        if self._done_event is not None:
            self._done_event.set()

    async def receive(self) -> Message:
        if self.disconnected:
            return {"type": "http.disconnect"}
        if self.body_done:  # nothing more to receive: wait until the response is done or unwanted
            if not self.response_done:
                if self._done_event is None:
                    self._done_event = asyncio.Event()
                waits = [asyncio.ensure_future(self._done_event.wait()),
                         asyncio.ensure_future(self.request.wait_peer_gone())]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
            self.disconnected = not self.response_done
            return {"type": "http.disconnect"}
        try:
            chunk = self.request._receive_data_nowait()  # most often in already: no coroutine
            if chunk is None:
                chunk = await self.request.receive_data()
            if not chunk or self.request.receive_ended():  # the last piece says so itself
                self.body_done = True
                if self.expected_length is not None and self.request.data_received != self.expected_length:
                    error = H3StreamError(ErrorCode.H3_MESSAGE_ERROR, "body length differs from content-length")
                    self.request._error(error)
                    raise error
            return {"type": "http.request", "body": chunk, "more_body": not self.body_done}
        except (H3Error, StreamError, ConnectionClosed):
            self.body_done = self.disconnected = True
            return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("the client went away")
        try:
            # Body sent, more to come: wait for room in the send buffer, if it is full
            # (a coroutine only then). After the last piece nothing waits for room.
            if self._send(message) and self.request.stream._drained() is None:
                await self.request.drain()
        except (StreamError, ConnectionClosed) as exc:  # reset, STOP_SENDING, connection closed
            self.disconnected = True
            raise ClientDisconnected(f"the client went away: {exc}") from exc

    def _response_head_frame(self) -> bytes:
        """The response's HEADERS frame: from _HEADS when the same head was sent
        before (and the client's field section limit takes it), else encoded, and
        remembered when the encoder keeps to the static table (then the frame
        depends on the fields alone, whatever the connection)."""
        request = self.request
        h3 = request.h3
        frame = self._head_frame
        if frame is not None and h3._encoder_static:  # else the encoder may refer to its dynamic table
            limit = h3.peer_max_field_section_size
            if limit is None or self._head_size <= limit:
                return frame
        frame = request._headers_frame(self.response_headers)  # checks the client's limit
        key = self._head_key
        size = section_size(self.response_headers)
        if key is not None and h3._encoder_static and size <= CACHED_SECTION_MAX:
            if len(_HEADS) >= _HEADS_MAX:
                _HEADS.clear()  # the heads of now are remembered again
            _HEADS[key] = (self.response_headers, frame, size)
        return frame

    def _send(self, message: Message) -> bool:
        """Act on ``message`` (never waits); True when it wrote a body piece and more may follow."""
        kind = message["type"]
        request = self.request
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("http.response.start sent twice")
            status = int(message["status"])
            given = tuple(message.get("headers", ()))
            key = (status, given)
            try:
                head = _HEADS.get(key)
                self._head_key = key
            except TypeError:  # fields given as lists: not hashable, not remembered
                head = None
            if head is None:
                try:  # a field the client would take as malformed (a CR LF in a value...): the app's error
                    response_headers = _response_fields(status, given)
                except H3StreamError as exc:
                    raise ValueError(f"a malformed response: {exc.reason}") from None
            else:
                response_headers, self._head_frame, self._head_size = head
            self.status, self.response_headers = status, response_headers
            self.trailers_expected = bool(message.get("trailers", False))
        elif kind == "http.response.body":
            if self.status is None or self.response_done:
                raise RuntimeError("http.response.body before http.response.start or after the end")
            more = bool(message.get("more_body", False))
            end = not more and not self.trailers_expected
            body = b"" if self.head else bytes(message.get("body", b""))
            if self.headers_sent:
                request.send_data(body, end_stream=end)
            else:
                self.headers_sent = True
                request._write_frames(self._response_head_frame(), body, end)
            if end:
                self._finish()
            return not end
        elif kind == "http.response.trailers":
            if not self.trailers_expected or not self.headers_sent:
                raise RuntimeError("http.response.trailers without trailers=True or before the body")
            more = bool(message.get("more_trailers", False))
            request.send_headers(_fields(message.get("headers", [])), end_stream=not more)
            if not more:
                self._finish()
        else:
            raise RuntimeError(f"unknown ASGI message type {kind!r}")
        return False


# Response fields found valid (as check_response() would): apps send the same few
# again and again, and a set lookup is cheaper than the checks. Bounded, as the
# names check_response() remembers; long values are checked each time.
_CHECKED_FIELDS: set[tuple[bytes, bytes]] = set()
_CHECKED_FIELDS_MAX = 4096
_CHECKED_VALUE_MAX = 256
_STATUS_FIELDS = {code: (b":status", str(code).encode()) for code in range(100, 600)}


# Response heads as the app gave them, (status, fields) -> (the fields to send, checked,
# their HEADERS frame and its section size): many responses repeat their head exactly (the same type and
# length), and then neither the checks nor QPACK run again. Static-table encoding only
# (the server's default): the frame depends on the fields alone. Bounded: cleared when full.
_HEADS: dict[tuple[Any, ...], tuple[Headers, bytes, int]] = {}
_HEADS_MAX = 512


def _response_fields(status: int, headers: Any) -> Headers:
    """The response's field section, ``:status`` first: the app's fields lowercased,
    HTTP/1.1's connection-specific ones dropped (malformed in HTTP/3, section 4.2),
    each checked as :func:`check_response` would (H3StreamError)."""
    status_field = _STATUS_FIELDS.get(status)
    if status_field is None:
        status_field = (b":status", str(status).encode())
        check_response([status_field])  # three digits
    fields = [status_field]
    checked = _CHECKED_FIELDS
    for name, value in headers:
        field = (bytes(name).lower(), bytes(value))
        if field[0] in CONNECTION_SPECIFIC:
            continue
        if field not in checked:
            check_trailers([field])  # a regular field, alone: what check_response() checks of it
            if len(checked) < _CHECKED_FIELDS_MAX and len(field[1]) <= _CHECKED_VALUE_MAX:
                checked.add(field)
        fields.append(field)
    return fields


def _fields(headers: Any) -> Headers:
    """An ASGI app's header fields, names lowercase as HTTP/3 requires."""
    return [(bytes(name).lower(), bytes(value)) for name, value in headers]


def _addresses(h3: H3Connection) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """The ASGI scope's ``client`` and ``server``: read from the connection once, and
    again only after the peer's address changed (migration, NAT rebinding: see
    _watch_addresses): no native call per request."""
    cached = h3._asgi_addresses
    if cached is None:
        info = h3.quic._refresh()  # one native call: both addresses
        client, server = from_native(info.remote), from_native(info.local)
        cached = h3._asgi_addresses = ((client[0], client[1]) if client else None,
                                       (server[0], server[1]) if server else None)
    return cached


def _watch_addresses(h3: H3Connection) -> None:
    """Forget the connection's ASGI addresses when the peer's address changes (the
    connection's peer address callback, which msquic's PEER_ADDRESS_CHANGED wakes):
    the next request reads them again. A callback set before is kept and still runs."""
    quic = h3.quic
    previous = quic._peer_address_callback

    def changed(address: Any) -> object:
        h3._asgi_addresses = None
        return previous(address) if previous is not None else None

    quic.set_peer_address_callback(changed)


# Decoded once: most requests use a few methods and one scheme.
_METHODS = {method.encode(): method for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
_SCHEMES = {b"https": "https", b"http": "http"}


class _RequestHead(NamedTuple):
    """What a request's header section gives its ASGI scope, checked (check_request)."""

    method: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: Tuple[Tuple[bytes, bytes], ...]  # the regular fields, host first when only :authority named it
    content_length: int | None


# Request header sections already checked, and what they gave: clients repeat whole
# requests (the same URL and fields: polling, health checks, API calls), and then neither
# the checks nor the decoding run again. Bounded: cleared when full; large sections are
# not kept. A malformed one raises before it could be kept.
_REQUEST_HEADS: dict[Tuple[Tuple[bytes, bytes], ...], _RequestHead] = {}
_REQUEST_HEADS_MAX = 512


def _request_head(headers: Headers) -> _RequestHead:
    """The request's head, checked: H3StreamError (H3_MESSAGE_ERROR) if malformed."""
    key = tuple(headers)
    head = _REQUEST_HEADS.get(key)
    if head is None:
        head = _check_request_head(headers)
        if section_size(headers) <= CACHED_SECTION_MAX:
            if len(_REQUEST_HEADS) >= _REQUEST_HEADS_MAX:
                _REQUEST_HEADS.clear()  # the requests of now are remembered again
            _REQUEST_HEADS[key] = head
    return head


def _check_request_head(headers: Headers) -> _RequestHead:
    pseudo = check_request(headers)
    # check_request() found the pseudo-header fields first and each once: the rest
    # is a slice, with no Python step per field.
    regular = headers[len(pseudo):]
    length = content_length(regular)
    raw_path, _, query = pseudo.get(b":path", b"").partition(b"?")
    authority = pseudo.get(b":authority")
    scheme = pseudo.get(b":scheme", b"https")
    if authority is not None:
        if scheme in _SCHEMES:  # check_request(): a host field there has the :authority's value
            has_host = (b"host", authority) in regular
        else:
            has_host = any(name == b"host" for name, _ in regular)
        if not has_host:
            regular.insert(0, (b"host", authority))
    method = pseudo[b":method"]
    path = raw_path.decode("latin-1")
    return _RequestHead(_METHODS.get(method) or method.decode("latin-1"),
                        _SCHEMES.get(scheme) or scheme.decode("latin-1"),
                        unquote(path) if "%" in path else path, raw_path, query, tuple(regular), length)


def _scope(h3: H3Connection, head: _RequestHead, state: dict[str, Any] | None) -> Scope:
    client, server = _addresses(h3)
    scope: Scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "3",
        "method": head.method, "scheme": head.scheme,
        "path": head.path, "raw_path": head.raw_path, "query_string": head.query_string,
        "root_path": "", "headers": list(head.headers),  # the app's own list: it may change it
        "client": client, "server": server,
        "extensions": {"http.response.trailers": {}},
    }
    if state is not None:  # the lifespan's state, a shallow copy for each request (ASGI lifespan "state")
        scope["state"] = dict(state)
    return scope


async def _handle_request(app: ASGIApp, h3: H3Connection, request: RequestStream,
                          state: dict[str, Any] | None, header_timeout: float | None) -> None:
    try:
        # Most often the whole header section came with the stream: no timer then.
        headers = request.receive_headers_nowait()
        if headers is None:
            headers = await bounded(request.receive_headers(), header_timeout)
        head = _request_head(headers)
        exchange = _Exchange(request, head.content_length, head=head.method == "HEAD")
    except H3StreamError as exc:
        request._error(exc)
        return
    except (H3Error, StreamError, ConnectionClosed):
        return  # acted on (connection error) or gone
    except asyncio.TimeoutError:
        logger.info("request stream %s: no whole header section in %s s, rejected", request.stream.id, header_timeout)
        request.abort(ErrorCode.H3_REQUEST_REJECTED)  # nothing of it was processed
        return
    scope = _scope(h3, head, state)
    try:
        await app(scope, exchange.receive, exchange.send)
        if not exchange.response_done and not exchange.disconnected:
            raise RuntimeError("the app returned before finishing its response")
    except (StreamError, ConnectionClosed, ClientDisconnected) as exc:
        logger.info("request stream %s ended early: %s", request.stream.id, exc)
    except Exception:
        logger.exception("ASGI app failed on %s %s", scope["method"], scope["path"])
        if exchange.headers_sent:
            request.abort(ErrorCode.H3_INTERNAL_ERROR)
        else:
            exchange.status = 500  # what the access log says
            try:
                request.send_headers([(b":status", b"500"), (b"content-length", b"0")], end_stream=True)
            except (StreamError, ConnectionClosed):
                pass
    finally:
        exchange._finish()
        # Answered without reading it all: the rest is not wanted (section 4.1). Not once
        # the request's FIN is in (a GET's, most often): nothing is left to stop then, and
        # STOP_SENDING would cost a native call and a loop wake-up per request. A FIN
        # that came with the bytes read is known without asking msquic.
        stream = request.stream
        if not exchange.body_done and not stream._eof_read and not stream.at_eof():
            with contextlib.suppress(StreamError, ConnectionClosed):
                stream.stop_sending(ErrorCode.H3_NO_ERROR)
    if logger.isEnabledFor(logging.INFO):  # the access log
        client = scope["client"]
        logger.info('%s:%s - "%s %s HTTP/3" %s', client[0] if client else "-", client[1] if client else "-",
                    scope["method"], scope["path"], exchange.status)


async def serve_connection(app: ASGIApp, quic: pymsquic_asyncio.Connection, *,
                           shutdown: asyncio.Event | None = None, state: dict[str, Any] | None = None,
                           header_timeout: float | None = HEADER_TIMEOUT, **h3_options: Any) -> None:
    """Serve HTTP/3 on one accepted QUIC connection until it ends, or until
    ``shutdown`` is set: then GOAWAY, the requests already in finish, and the
    connection closes with H3_NO_ERROR. ``state``: the ASGI lifespan's state,
    copied into each request's scope. A request whose header section is not all
    in within ``header_timeout`` seconds (None: no limit) is reset with
    H3_REQUEST_REJECTED. It sets ``quic``'s peer address callback (a callback set
    before still runs): the scopes' ``client`` follows the peer when it moves."""
    h3 = H3Connection(quic, is_client=False, **h3_options)
    tasks: set[asyncio.Task[None]] = set()
    create_task = asyncio.get_running_loop().create_task
    prune_at = _PRUNE_MIN

    def on_request(request: RequestStream) -> None:
        nonlocal prune_at
        tasks.add(create_task(_handle_request(app, h3, request, state, header_timeout)))
        # Finished tasks leave the set in batches, not by a done callback each (one
        # more call_soon and turn of the loop per request); amortized O(1).
        if len(tasks) >= prune_at:
            tasks.difference_update([task for task in tasks if task.done()])
            prune_at = max(_PRUNE_MIN, 2 * len(tasks))

    h3.on_request = on_request  # a task per request, started as its stream comes
    _watch_addresses(h3)
    h3.start()

    async def stop_on_shutdown() -> None:
        await (shutdown or asyncio.Event()).wait()
        h3.stop_accepting()

    stop = asyncio.ensure_future(stop_on_shutdown())
    try:
        await h3.accept_request()  # None once no more requests come (GOAWAY sent, or the connection over)
        # Only the requests still running: finished ones stay in the set until the
        # next pruning, and gathering finished tasks completes without yielding
        # (Python 3.12+), so waiting for the set to empty would spin forever.
        running = [task for task in tasks if not task.done()]
        while running:
            await asyncio.gather(*running, return_exceptions=True)
            running = [task for task in tasks if not task.done()]
    finally:
        stop.cancel()
        for task in tasks:
            task.cancel()
        await h3.close()


class H3Server:
    """An HTTP/3 server running an ASGI app (see :func:`serve`).

    :meth:`close` shuts down gracefully: GOAWAY on every connection, the
    requests already in finish (up to ``grace`` seconds), then the connections
    close with H3_NO_ERROR and the ASGI lifespan ends. ``async with`` closes on
    the way out.
    """

    def __init__(self, quic_server: pymsquic_asyncio.Server, shutdown: asyncio.Event, lifespan: _Lifespan) -> None:
        self.quic_server = quic_server
        self._shutdown = shutdown
        self._lifespan = lifespan
        self._closing: asyncio.Task[None] | None = None

    @property
    def addresses(self) -> list[Any]:
        """The addresses listened on (port 0 picked a free port: it is here)."""
        return list(self.quic_server.addresses)

    def close(self, grace: float = 5.0) -> None:
        """Start the graceful shutdown (does not wait: see :meth:`wait_closed`)."""
        if self._closing is None:
            self._shutdown.set()
            self._closing = asyncio.ensure_future(self._close(grace))

    async def _close(self, grace: float) -> None:
        self.quic_server.close(grace)
        try:
            await self.quic_server.wait_closed()
        finally:
            await self._lifespan.shutdown()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` is over."""
        if self._closing is not None:
            await asyncio.shield(self._closing)

    async def serve_forever(self) -> None:
        """Serve until cancelled (then close gracefully)."""
        try:
            await self.quic_server.serve_forever()
        finally:
            self.close()
            await self.wait_closed()

    async def __aenter__(self) -> H3Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class _Lifespan:
    """The ASGI lifespan protocol: startup before serving, shutdown after. An
    app that does not support it (raises at once) is served without it."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.supported = True
        self.started = False  # lifespan.startup.complete came
        #: The lifespan scope's "state": what the app keeps there goes to every request's scope.
        self.state: dict[str, Any] = {}

    async def startup(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._to_app.put_nowait({"type": "lifespan.startup"})
        message = await self._from_app.get()
        self.started = message["type"] == "lifespan.startup.complete"
        if message["type"] == "lifespan.startup.failed":
            self._task.cancel()  # the app waits for a shutdown that will never come
            await asyncio.gather(self._task, return_exceptions=True)
            raise LifespanStartupFailed(f"ASGI lifespan startup failed: {message.get('message', '')}")

    async def _run(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self._app(scope, self._to_app.get, self._send)
        except Exception:
            if self.started:  # after its startup: a failure of the app's, not missing support
                logger.exception("ASGI lifespan failed")
            else:  # as uvicorn's "auto": an app that raises before its startup has no lifespan support
                logger.debug("the ASGI app does not support lifespan", exc_info=True)
        finally:
            self.supported = False
            self._from_app.put_nowait({"type": "lifespan.unsupported"})

    async def _send(self, message: Message) -> None:
        self._from_app.put_nowait(message)

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        self._to_app.put_nowait({"type": "lifespan.shutdown"})
        message = await self._from_app.get()
        if message["type"] == "lifespan.shutdown.failed":
            logger.error("ASGI lifespan shutdown failed: %s", message.get("message", ""))
        self._task.cancel()


async def serve(app: ASGIApp, host: str | None, port: int, *, credential: Credential,
                settings: Settings | None = None, max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS,
                max_field_section_size: int = MAX_HEADERS_FRAME_SIZE,
                qpack_max_table_capacity: int = DEFAULT_MAX_TABLE_CAPACITY,
                qpack_blocked_streams: int = DEFAULT_BLOCKED_STREAMS, qpack_encoder_max_table_capacity: int = 0,
                header_timeout: float | None = HEADER_TIMEOUT, **serve_options: Any) -> H3Server:
    """Serve the ASGI 3 ``app`` over HTTP/3 on ``host:port`` (port 0: any free
    one, see :attr:`H3Server.addresses`), after the app's lifespan startup
    (:class:`LifespanStartupFailed` if the app says it failed).
    ``max_concurrent_requests`` is the number of request streams a client may
    have open at once; ``max_field_section_size`` bounds a request's header
    section (larger: stream error H3_EXCESSIVE_LOAD), which must all be in within
    ``header_timeout`` seconds (else H3_REQUEST_REJECTED); ``qpack_max_table_capacity``
    and ``qpack_blocked_streams`` bound the client's use of our QPACK decoder; ``qpack_encoder_max_table_capacity``
    lets our encoder use a dynamic table for the responses (0: the static table only,
    see :class:`~pymsquic.h3.connection.H3Connection`). Other keyword arguments go
    to :func:`pymsquic.asyncio.serve`."""
    if qpack_encoder_max_table_capacity < 0:  # (each connection's H3Connection would refuse it only then)
        raise ValueError(f"qpack_encoder_max_table_capacity must be >= 0, not {qpack_encoder_max_table_capacity}")
    settings = dataclasses.replace(settings or Settings(idle_timeout_ms=30_000),
                                   peer_bidi_stream_count=max_concurrent_requests, peer_unidi_stream_count=16)
    shutdown = asyncio.Event()
    lifespan = _Lifespan(app)
    await lifespan.startup()

    async def handler(quic: pymsquic_asyncio.Connection) -> None:
        await serve_connection(app, quic, shutdown=shutdown, state=lifespan.state if lifespan.started else None,
                               header_timeout=header_timeout,
                               max_field_section_size=max_field_section_size,
                               qpack_max_table_capacity=qpack_max_table_capacity,
                               qpack_blocked_streams=qpack_blocked_streams,
                               qpack_encoder_max_table_capacity=qpack_encoder_max_table_capacity)

    try:
        quic_server = await pymsquic_asyncio.serve(handler, host, port, alpn=ALPN, credential=credential,
                                                   settings=settings, **serve_options)
    except BaseException:  # cannot listen (port taken...): the app's lifespan ends as it began
        await lifespan.shutdown()
        raise
    return H3Server(quic_server, shutdown, lifespan)
