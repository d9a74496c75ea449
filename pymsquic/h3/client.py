"""An HTTP/3 client: ``async with Client() as client: response = await client.get(url)``.

One QUIC connection per authority (host, port), reused by every request to it
and opened again once it is closed or the server sent GOAWAY. Certificates
are verified unless ``verify=False``; ``ca_file`` trusts a private CA.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import sys
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Coroutine,
    Mapping,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)
from urllib.parse import urlsplit

from .. import asyncio as pymsquic_asyncio
from ..configuration import Credential, Settings
from ..errors import StreamStopped
from .connection import ALPN, H3Connection, RequestStream
from .errors import ErrorCode, H3StreamError
from .message import CACHED_SECTION_MAX, Headers, check_request, check_response, content_length, section_size

if TYPE_CHECKING:
    from typing_extensions import Self

HeadersLike = Union[Mapping[str, str], Sequence[Tuple[str, str]]]

_TARGETS: dict[str, tuple[str, int, bytes, bytes]] = {}  # _target()'s answers, by URL
_TARGETS_MAX = 256
# The requests without headers of the caller's, by (method, URL, body length or -1 for
# none): (host, port, HEADERS frame, section size). A client's QPACK encoder keeps to
# the static table (H3Connection), so a frame depends on its fields alone and serves
# on any connection: a repeated request is neither built, checked nor encoded again.
_PREPARED: dict[tuple[str, str, int], tuple[str, int, bytes, int]] = {}
# Final response header sections met, as tuples: (status, content-length). Most
# responses repeat a few: one dict lookup instead of the checks of section 4.3.
_RESPONSE_HEADS: dict[tuple[tuple[bytes, bytes], ...], tuple[int, int | None]] = {}


def _usable(h3: H3Connection) -> bool:
    """Whether new requests may go on ``h3`` (else the client connects anew)."""
    return h3.error is None and not h3.goaway_received.is_set() and not h3.quic.is_closed


def _target(url: str) -> tuple[str, int, bytes, bytes]:
    """(host, port, :authority, :path) of an https URL; ValueError for another.
    Kept for the URLs seen last: a client often requests the same ones again."""
    target = _TARGETS.get(url)
    if target is None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"an HTTP/3 URL is https://host[:port]/path, not {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # No userinfo in :authority (RFC 9114 4.3.1): nor a password sent on.
        target = (parts.hostname, parts.port or 443, parts.netloc.rpartition("@")[2].encode(), path.encode())
        if len(_TARGETS) >= _TARGETS_MAX:
            _TARGETS.clear()
        _TARGETS[url] = target
    return target

T = TypeVar("T")

_UNCANCEL = sys.version_info >= (3, 11)  # Task.cancelling() and uncancel(), which _Deadlines needs

if sys.version_info >= (3, 11):
    async def bounded(awaitable: Awaitable[T], timeout: float | None) -> T:
        """``awaitable`` within ``timeout`` seconds (asyncio.timeout: no task per wait, unlike wait_for)."""
        if timeout is None:
            return await awaitable
        async with asyncio.timeout(timeout):
            return await awaitable
else:  # pragma: no cover - Python 3.10
    async def bounded(awaitable: Awaitable[T], timeout: float | None) -> T:
        """``awaitable`` within ``timeout`` seconds."""
        return await asyncio.wait_for(awaitable, timeout)

class _Deadline:
    __slots__ = ("when", "task", "cancelling", "state")

    def __init__(self, when: float, task: asyncio.Task[Any], cancelling: int) -> None:
        self.when = when
        self.task: asyncio.Task[Any] | None = task
        self.cancelling = cancelling  # the task's cancel requests before (as asyncio.timeout keeps)
        self.state = _PENDING


_PENDING, _ENDED, _EXPIRED = 0, 1, 2


class _Deadlines:
    """The timeouts of one client's requests, as ``asyncio.timeout()`` would
    bound each (cancel the task at the deadline, TimeoutError out of it), with
    one loop timer for them all instead of a timer handle in the loop's heap,
    and a context manager, per request. Requests of one timeout end in the
    order they began: a FIFO of deadlines, the timer at its head's."""

    def __init__(self) -> None:
        self._reset(None)

    def _reset(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._queue: collections.deque[_Deadline] = collections.deque()
        self._live = 0  # deadlines not ended nor expired
        self._timer: asyncio.TimerHandle | None = None
        self._loop = loop

    def start(self, timeout: float) -> _Deadline | None:
        """The current task's deadline ``timeout`` seconds on; None where this
        cannot bound it (Python 3.10, no uncancel(); a deadline before the last
        one, the timeout shortened): the caller uses ``bounded()`` then."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a client used on another loop: start afresh there
            if not _UNCANCEL:  # pragma: no cover - Python 3.10
                return None
            self._reset(loop)
        when = loop.time() + timeout
        queue = self._queue
        if queue and queue[-1].when > when:
            return None
        task = asyncio.current_task(loop)
        if task is None:  # pragma: no cover - not in a task: nothing to cancel
            return None
        deadline = _Deadline(when, task, task.cancelling())  # type: ignore[attr-defined]
        queue.append(deadline)
        self._live += 1
        if self._timer is None:
            self._timer = loop.call_at(queue[0].when, self._expire)
        return deadline

    def end(self, deadline: _Deadline) -> bool:
        """The bounded wait is over: True when its deadline cancelled the task
        and no other cancellation is pending (raise TimeoutError then)."""
        state, deadline.state = deadline.state, _ENDED
        task, deadline.task = deadline.task, None
        if state == _PENDING:
            self._live -= 1
            queue = self._queue
            while queue and queue[0].state:
                queue.popleft()
            if len(queue) > 2 * self._live + 1024:  # a long wait at the head: drop the ended behind it
                self._queue = collections.deque(d for d in queue if not d.state)
            return False
        if state == _EXPIRED:
            assert task is not None
            return task.uncancel() <= deadline.cancelling  # type: ignore[attr-defined,no-any-return]
        return False  # ended already

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        queue = self._queue
        while queue and (queue[0].state or queue[0].when <= now):
            deadline = queue.popleft()
            if deadline.state == _PENDING:
                deadline.state = _EXPIRED
                self._live -= 1
                assert deadline.task is not None
                deadline.task.cancel()
        if queue:
            self._timer = loop.call_at(queue[0].when, self._expire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


#: Settings a client connection needs: the server opens 3 unidirectional streams (more with grease).
CLIENT_SETTINGS = Settings(peer_unidi_stream_count=16, idle_timeout_ms=30_000)


class Response:
    """An HTTP/3 response. The body streams: ``async for chunk in
    response.aiter_bytes()``, or ``await response.read()`` for all of it
    (:attr:`content` after). :attr:`trailers` once the body was read."""

    def __init__(self, status: int, headers: Headers, request: RequestStream, timeout: float | None,
                 method: str = "GET", length: int | None = -1) -> None:
        self.status_code = status
        self._raw_headers = headers
        self._headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None
        self._request = request
        self._timeout = timeout
        # A HEAD response's content-length, or a 204's or 304's, is not its body's (RFC 9110 8.6).
        # ``length``: the content-length field's, when the caller read it already (-1: not yet).
        if method == "HEAD" or status in (204, 304):
            length = None
        elif length == -1:
            length = content_length(headers)
        self._expected_length = request.expected_length = length
        self._content: bytes | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The regular header fields, names lowercase, as str."""
        if self._headers is None:  # made when first asked for: many callers only want the body
            self._headers = [(n.decode("latin-1"), v.decode("latin-1"))
                             for n, v in self._raw_headers if not n.startswith(b":")]
        return self._headers

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header field ``name`` (case-insensitive)."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), default)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives (each wait bounded by the client's timeout).
        Left before its end (a timeout, cancellation, ``break``): the request is
        cancelled (H3_REQUEST_CANCELLED), the server need not send the rest."""
        request = self._request
        try:
            while True:
                chunk = await bounded(request.receive_data(), self._timeout)
                if not chunk:
                    break
                yield chunk
        except BaseException:
            request.cancel()
            raise
        self._body_done()

    def _body_done(self) -> None:
        """The body's end: its length checked against content-length, the trailers taken."""
        request = self._request
        if self._expected_length is not None and request.data_received != self._expected_length:
            error = H3StreamError(ErrorCode.H3_MESSAGE_ERROR, f"content-length {self._expected_length}, "
                                  f"{request.data_received} bytes of body")
            request.abort(error.error_code)
            raise error
        if request.trailers is not None:
            self.trailers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.trailers]

    async def read(self) -> bytes:
        """The whole body."""
        if self._content is None:
            self._content = b"".join([chunk async for chunk in self.aiter_bytes()])
        return self._content

    async def _read_all(self) -> None:
        """:meth:`read` for a response not yet read, waits unbounded (the caller bounds
        the whole): no async generator and no timeout per piece."""
        request = self._request
        chunks: list[bytes] = []
        try:
            while True:
                chunk = request._receive_data_nowait()  # most often in already: no coroutine
                if chunk is None:
                    chunk = await request.receive_data()
                if not chunk:
                    break
                chunks.append(chunk)
                if request.receive_ended():  # the FIN came with it: no round for the end
                    break
        except BaseException:
            request.cancel()
            raise
        self._body_done()
        self._content = chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def content(self) -> bytes:
        """The body, after :meth:`read` (``request()`` reads it unless ``stream=True``)."""
        if self._content is None:
            raise RuntimeError("the body was not read: await response.read()")
        return self._content

    @property
    def text(self) -> str:
        """The body as UTF-8 text."""
        return self.content.decode()

    def cancel(self) -> None:
        """Stop receiving the body: reset the stream with H3_REQUEST_CANCELLED."""
        self._request.cancel()

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class Client:
    """An HTTP/3 client over pymsquic.

    ``verify`` (default True) checks the server's certificate against the
    system CA store or ``ca_file``; ``timeout`` (seconds, None: no limit)
    bounds connecting and every wait for the response. ``server_name``
    overrides the name sent and checked (default: the URL's host).
    """

    def __init__(self, *, verify: bool = True, ca_file: str | os.PathLike[str] | None = None,
                 timeout: float | None = 30.0, server_name: str | None = None,
                 settings: Settings | None = None) -> None:
        self._credential = Credential.client(verify, ca_file)
        self._settings = dataclasses.replace(settings or CLIENT_SETTINGS,
                                             peer_unidi_stream_count=CLIENT_SETTINGS.peer_unidi_stream_count)
        self.timeout = timeout
        self._server_name = server_name
        self._connections: dict[tuple[str, int], H3Connection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Lock] = {}
        # Connections that received GOAWAY: closed once their requests in flight are done.
        self._retired: dict[H3Connection, asyncio.Task[None]] = {}
        self._deadlines = _Deadlines()

    async def _connection(self, host: str, port: int) -> H3Connection:
        key = (host, port)
        lock = self._connecting.setdefault(key, asyncio.Lock())
        async with lock:  # concurrent requests to one authority share one connection
            h3 = self._connections.get(key)
            if h3 is not None and (h3.error is not None or h3.quic.is_closed):
                del self._connections[key]
                await h3.close()
                h3 = None
            elif h3 is not None and h3.goaway_received.is_set():
                del self._connections[key]  # GOAWAY (section 5.2): the requests already in still finish
                self._retire(h3)
                h3 = None
            if h3 is None:
                quic = await pymsquic_asyncio.connect(host, port, alpn=ALPN, credential=self._credential,
                                                     settings=self._settings, server_name=self._server_name,
                                                     open_timeout=self.timeout)
                h3 = H3Connection(quic, is_client=True)
                h3.start()
                self._connections[key] = h3
            return h3

    def _retire(self, h3: H3Connection) -> None:
        async def close_when_done() -> None:
            await h3.wait_requests_done()
            await h3.close()

        task = asyncio.ensure_future(close_when_done())
        self._retired[h3] = task
        task.add_done_callback(lambda _: self._retired.pop(h3, None))

    async def request(self, method: str, url: str, *, headers: HeadersLike | None = None,
                      content: bytes | AsyncIterable[bytes] | None = None, stream: bool = False) -> Response:
        """Send a request, return the response (its body read, unless ``stream=True``).
        ``content``: the body, bytes or an async iterable of bytes (sent as it comes,
        waiting for room in the stream; then without content-length unless given).

        Raises ValueError for a URL that is not https or a malformed request field;
        :class:`asyncio.TimeoutError` after ``timeout``; :class:`~pymsquic.ConnectionClosed`
        when the connection failed or closed (a certificate refused included);
        :class:`~pymsquic.StreamError` when the server reset the request (its ``error_code``:
        H3_REQUEST_REJECTED after a GOAWAY, retry elsewhere); :class:`H3StreamError` /
        :class:`H3ConnectionError` for a response that breaks RFC 9114. The request is
        cancelled (H3_REQUEST_CANCELLED) on any of them."""
        body, chunks = (content, None) if content is None or isinstance(content, bytes) else (None, content)
        key = (method, url, -1 if body is None else len(body)) if chunks is None and not headers else None
        prepared = None if key is None else _PREPARED.get(key)
        if prepared is None:
            h3, frame = await self._prepare(method, url, headers, content, key)
        else:
            host, port, frame, size = prepared
            found = self._connections.get((host, port))
            h3 = found if found is not None and _usable(found) else await self._connection(host, port)
            limit = h3.peer_max_field_section_size  # section 4.2.2, as headers_frame() checks it
            if limit is not None and size > limit:
                raise ValueError(f"a header section of {size} bytes: the peer takes at most {limit}")
        if chunks is None:
            request = h3.open_request(frame, body or b"", end_stream=True)  # the whole request in one write
        else:
            request = h3.open_request(frame)
        try:
            # Attached to the loop's waker before its first read, which is then the only check
            # before waiting (RequestStream._next_frame): most responses are waited for.
            request.stream._attach_to_running_loop()
            if chunks is not None:
                await self._send_body(request, chunks)
            if stream:  # the body's waits are bounded one by one, as the caller reads
                return await bounded(self._response(request, self.timeout, method), self.timeout)
            timeout = self.timeout
            deadline = None if timeout is None else self._deadlines.start(timeout)
            if deadline is None:
                return await bounded(self._whole_response(request, method), timeout)  # one bound for it all
            try:  # _whole_response() inline: one coroutine less in every wait's chain
                response = await self._response(request, timeout, method)
                await response._read_all()
            except BaseException as exc:
                if self._deadlines.end(deadline) and isinstance(exc, asyncio.CancelledError):
                    raise asyncio.TimeoutError from exc  # as asyncio.timeout() turns its cancellation
                raise
            self._deadlines.end(deadline)
            return response
        except BaseException:  # cancelled, timed out, refused: the server need not go on
            request.cancel()
            raise

    async def _prepare(self, method: str, url: str, headers: HeadersLike | None,
                       content: bytes | AsyncIterable[bytes] | None,
                       key: tuple[str, str, int] | None) -> tuple[H3Connection, bytes]:
        """(connection, HEADERS frame) of a request; its fields checked (ValueError
        for what the server would reset, H3_MESSAGE_ERROR) and, given a ``key``,
        kept in _PREPARED for its next time."""
        host, port, authority, path = _target(url)
        fields: Headers = [(b":method", method.encode()), (b":scheme", b"https"),
                           (b":authority", authority), (b":path", path)]
        if headers:
            items = headers.items() if isinstance(headers, Mapping) else headers
            fields += [(name.lower().encode(), value.encode()) for name, value in items]
        if isinstance(content, bytes) and not (headers and any(name == b"content-length" for name, _ in fields)):
            fields.append((b"content-length", str(len(content)).encode()))
        try:
            check_request(fields)
        except H3StreamError as exc:
            raise ValueError(f"a malformed request: {exc.reason}") from None
        found = self._connections.get((host, port))
        h3 = found if found is not None and _usable(found) else await self._connection(host, port)
        frame = h3.headers_frame(fields)
        if key is not None:
            if len(_PREPARED) >= _TARGETS_MAX:
                _PREPARED.clear()
            _PREPARED[key] = (host, port, frame, section_size(fields))
        return h3, frame

    async def _send_body(self, request: RequestStream, content: AsyncIterable[bytes]) -> None:
        """Stream ``content`` as DATA, waiting for room. The server's STOP_SENDING ends it
        quietly: it answered without the rest (RFC 9114 4.1: that response is not to be
        discarded); a reset or an error shows when the response is read."""
        try:
            async for chunk in content:
                request.send_data(chunk)
                await bounded(request.drain(), self.timeout)
            request.end()
        except StreamStopped:
            aclose = getattr(content, "aclose", None)
            if aclose is not None:  # an async generator: let it clean up now
                await aclose()

    async def _whole_response(self, request: RequestStream, method: str) -> Response:
        response = await self._response(request, None, method)
        await response._read_all()
        response._timeout = self.timeout
        return response

    async def _response(self, request: RequestStream, body_timeout: float | None, method: str) -> Response:
        """The final response's head (after any interim ones)."""
        while True:  # interim (1xx) responses come before the final one
            response_headers = await request.receive_headers()
            key = tuple(response_headers)
            head = _RESPONSE_HEADS.get(key)
            if head is not None:  # met before: valid, final, its content-length read
                return Response(head[0], response_headers, request, body_timeout, method, head[1])
            try:
                status = check_response(response_headers)
                if status == 101:  # no Upgrade in HTTP/3 (RFC 9114 section 4.5)
                    raise H3StreamError(ErrorCode.H3_MESSAGE_ERROR, "101 response in HTTP/3")
            except H3StreamError as exc:
                request.abort(exc.error_code)
                raise
            if status >= 200:
                break
            request.interim_received()
        response = Response(status, response_headers, request, body_timeout, method)
        # (Not HEAD, 204, 304: their content-length is not the body's. Not a large head: the
        # server chooses its values, and they would outlive this client.)
        if method != "HEAD" and status not in (204, 304) and section_size(response_headers) <= CACHED_SECTION_MAX:
            if len(_RESPONSE_HEADS) >= _TARGETS_MAX:
                _RESPONSE_HEADS.clear()
            _RESPONSE_HEADS[key] = (status, response._expected_length)
        return response

    def get(self, url: str, **kwargs: object) -> Coroutine[Any, Any, Response]:
        """``request("GET", url, ...)`` (its coroutine itself: no layer more in each wait)."""
        return self.request("GET", url, **kwargs)  # type: ignore[arg-type]

    def post(self, url: str, **kwargs: object) -> Coroutine[Any, Any, Response]:
        """``request("POST", url, ...)`` (its coroutine itself: no layer more in each wait)."""
        return self.request("POST", url, **kwargs)  # type: ignore[arg-type]

    def put(self, url: str, **kwargs: object) -> Coroutine[Any, Any, Response]:
        """``request("PUT", url, ...)`` (its coroutine itself: no layer more in each wait)."""
        return self.request("PUT", url, **kwargs)  # type: ignore[arg-type]

    def delete(self, url: str, **kwargs: object) -> Coroutine[Any, Any, Response]:
        """``request("DELETE", url, ...)`` (its coroutine itself: no layer more in each wait)."""
        return self.request("DELETE", url, **kwargs)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Close every connection (GOAWAY, then H3_NO_ERROR), those retired after
        a GOAWAY too (their responses not read to the end are cancelled)."""
        connections, self._connections = list(self._connections.values()), {}
        self._deadlines.close()
        for h3, task in list(self._retired.items()):
            task.cancel()
            connections.append(h3)
        await asyncio.gather(*(h3.close() for h3 in connections), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
