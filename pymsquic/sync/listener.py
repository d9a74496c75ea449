"""Blocking listeners: :class:`Listener`.

Everything but the waiting is in :class:`pymsquic._core.listener.ListenerCore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from .. import _native
from .._core.listener import ListenerCore
from ..addresses import AddressLike
from ..configuration import AlpnLike
from ..errors import Finished
from .connection import Connection

if TYPE_CHECKING:
    from typing_extensions import Self


class Listener(ListenerCore[Connection]):
    __doc__ = (ListenerCore.__doc__ or "") + """
    Blocking: ``accept(timeout)`` or ``for connection in listener`` (ends
    quietly once the listener is stopped and drained); ``stop(timeout)``;
    ``close()``; ``with listener:`` closes on the way out. Waits release the
    GIL; a TimeoutError never loses a connection.
    """

    _connection_class = Connection

    def start(self, alpn: AlpnLike, address: AddressLike = None) -> None:
        """Start listening for ``alpn`` on ``address``: ``(host, port)``, ``"host:port"``
        or None for every local address. Port 0 picks a free port (see :attr:`local_address`)."""
        super().start(alpn, address)
        # Execution mode "loop": handshakes are answered from now on, not only
        # from the first blocking wait (no-op in the default mode).
        _native.ensure_driver("Listener.start()")

    def accept(self, timeout: float | None = None) -> Connection:
        """The next connection whose handshake completed, or whose 0-RTT request
        arrived (``accepted_early``, see the class docstring).

        :class:`~pymsquic.NotStarted` before :meth:`start`,
        :class:`~pymsquic.Finished` once stopped and no connection is left,
        TimeoutError after ``timeout`` seconds.
        """
        return _native.wait_blocking(self._native_obj, self._try_accept, timeout, "accept()")

    def __iter__(self) -> Iterator[Connection]:
        while True:
            try:
                yield self.accept()
            except Finished:
                return

    def stop(self, timeout: float | None = None) -> None:
        """Stop listening and wait for msquic's STOP_COMPLETE. Safe from any thread,
        more than once. Accepted connections keep running; queued ones can still
        be accepted."""
        _native.wait_blocking(self._native_obj, self._stop_settled, timeout, "stop()")

    def close(self) -> None:
        """Stop if needed and release the listener; connections still queued are shut down."""
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
