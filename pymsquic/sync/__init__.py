"""pymsquic for threads: blocking calls that release the GIL while they wait.

The same names as :mod:`pymsquic.asyncio`: :func:`serve`, :func:`connect`,
:class:`Server`, :class:`Listener`, :class:`Connection`, :class:`Stream`.
Every wait takes ``timeout=`` (seconds for the whole call, None for ever) and
raises TimeoutError after it, losing nothing.
"""

from .connection import Connection, connect
from .listener import Listener
from .server import Handler, Server, serve
from .stream import Stream

__all__ = ["Connection", "Handler", "Listener", "Server", "Stream", "connect", "serve"]
