"""HTTP/3 (RFC 9114) for asyncio on pymsquic, with QPACK (RFC 9204) through pylsqpack.

- :class:`Client`: ``async with pymsquic.h3.Client() as client: response = await client.get(url)``.
- :func:`serve`: an ASGI 3 app served over HTTP/3.
- :class:`H3Connection` and :class:`RequestStream`: the protocol over a
  :class:`pymsquic.asyncio.Connection`, for other uses.

No server push. HTTP/3 framing is in :mod:`pymsquic.h3.frames`, QPACK in
:mod:`pymsquic.h3.qpack`, message checks in :mod:`pymsquic.h3.message`.
"""

from .client import Client, Response
from .connection import ALPN, H3Connection, RequestStream
from .errors import ErrorCode, H3ConnectionError, H3Error, H3StreamError
from .server import (
    ASGIApp,
    ClientDisconnected,
    H3Server,
    LifespanStartupFailed,
    Message,
    Receive,
    Scope,
    Send,
    serve,
    serve_connection,
)

__all__ = ["ALPN", "ASGIApp", "Client", "ClientDisconnected", "ErrorCode", "H3Connection", "H3ConnectionError",
           "H3Error", "H3StreamError", "H3Server", "LifespanStartupFailed", "Message", "Receive", "RequestStream",
           "Response", "Scope", "Send", "serve", "serve_connection"]
