"""asyncio listeners: :class:`Listener`.

Everything but the waiting is in :class:`pymsquic._core.listener.ListenerCore`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator

from .._core.listener import ListenerCore
from .._native import forbid_in_callback, loop_mode
from ..addresses import AddressLike
from ..configuration import AlpnLike
from ..errors import Finished
from .bridge import NativeWaitable
from .connection import Connection

if TYPE_CHECKING:
    from typing_extensions import Self


class Listener(ListenerCore[Connection], NativeWaitable):
    __doc__ = (ListenerCore.__doc__ or "") + """
    asyncio: ``await accept()`` or ``async for connection in listener`` (ends
    quietly once the listener is stopped and drained); ``await stop()``;
    ``await close()``; ``async with listener:`` closes on the way out.
    Cancelling an accept never loses a connection.
    """

    _connection_class = Connection

    def start(self, alpn: AlpnLike, address: AddressLike = None) -> None:
        """Start listening for ``alpn`` on ``address``: ``(host, port)``, ``"host:port"``
        or None for every local address. Port 0 picks a free port (see :attr:`local_address`)."""
        loop = asyncio._get_running_loop()
        if loop is not None and loop_mode():
            # Execution mode "loop": this loop drives msquic from now on (or
            # RuntimeError, before listening, if another loop does), so
            # handshakes are answered before the first accept().
            self._attach_to_running_loop(loop)
        super().start(alpn, address)

    async def accept(self) -> Connection:
        """The next connection whose handshake completed, or whose 0-RTT request
        arrived (``accepted_early``, see the class docstring).

        :class:`~pymsquic.NotStarted` before :meth:`start`,
        :class:`~pymsquic.Finished` once stopped and no connection is left.
        """
        conn = self._try_accept()
        if conn is None:
            conn = await self._wait(self._try_accept, "accept()")
        return conn

    def __aiter__(self) -> AsyncIterator[Connection]:
        return self

    async def __anext__(self) -> Connection:
        try:
            return await self.accept()
        except Finished:
            raise StopAsyncIteration from None

    async def stop(self) -> None:
        """Stop listening and wait for msquic's STOP_COMPLETE. Safe more than once.
        Accepted connections keep running; queued ones can still be accepted."""
        forbid_in_callback("stop()")  # before the stop starts: refused in a hook, it does nothing, as in sync
        if self._stop_settled() is None:
            await self._wait(self._stop_settled, "stop()")

    async def close(self) -> None:
        """Stop, then release the listener; connections still queued are shut down."""
        await self.stop()
        self._release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
