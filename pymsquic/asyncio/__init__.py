"""pymsquic for asyncio: coroutines that never wait for the network on the
event loop's thread (a few calls that ask msquic's worker for a value, such as
``Connection.stats()`` or ``Stream.priority``, wait for it briefly).

The same names as :mod:`pymsquic.sync`, with ``await``: :func:`serve`,
:func:`connect`, :class:`Server`, :class:`Listener`, :class:`Connection`,
:class:`Stream`, and :class:`StreamProtocol` for callback-driven streams.
Waits take no timeout argument: use ``asyncio.timeout()`` or
``asyncio.wait_for()``; a cancelled wait loses nothing.
"""

from .connection import Connection, connect
from .listener import Listener
from .server import Handler, Server, serve
from .stream import Stream, StreamProtocol, StreamProtocolFactory

__all__ = ["Connection", "Handler", "Listener", "Server", "Stream", "StreamProtocol", "StreamProtocolFactory",
           "connect", "serve"]
