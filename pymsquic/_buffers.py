"""Bytes out of any buffer-protocol object, counted in bytes (shared by stream
writes and datagrams).

``len(obj)`` counts items, not bytes: a memoryview of ``array('I')`` or a 2-D
view has fewer items than bytes. Like ``socket.send``, what is sent is every
byte of the buffer (``memoryview(obj).nbytes``).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Tuple

from ._msquic import ffi

if TYPE_CHECKING:
    if sys.version_info >= (3, 12):
        from collections.abc import Buffer
    else:
        from typing_extensions import Buffer
    BufferLike = Buffer
else:
    BufferLike = Any  # any object with the buffer protocol (PEP 688)


#: The most any single buffer handed to msquic holds (one QUIC_BUFFER's uint32 length).
MAX_BUFFER = 0xFFFFFFFF


def c_buffer(data: object, what: str = "data") -> Tuple[Any, int]:
    """``(cdata, nbytes)`` for any object supporting the buffer protocol: bytes,
    bytearray, memoryview of any format and shape, array.array, ctypes or numpy
    arrays. A non-contiguous buffer (e.g. ``memoryview(b)[::2]``) is copied into
    bytes in logical order first. The cdata borrows ``data``'s memory (or the
    copy's): keep the returned cdata alive while the pointer is used.

    TypeError if ``data`` does not support the buffer protocol, and for ``str``
    (text must be encoded first); ValueError for a non-contiguous one of more
    than :data:`MAX_BUFFER` bytes (no caller takes that much: not copied first).
    """
    try:
        cdata = ffi.from_buffer(data)
    except BufferError:  # has a buffer, but not a C-contiguous one
        view = memoryview(data)  # type: ignore[arg-type]
        if view.nbytes > MAX_BUFFER:  # refused before a copy of that size is made
            raise ValueError(f"a single write takes at most {MAX_BUFFER} bytes, not {view.nbytes}") from None
        cdata = ffi.from_buffer(view.tobytes())
    except TypeError:
        raise TypeError(f"{what} must be a bytes-like object (buffer protocol), not {type(data).__name__}") from None
    return cdata, len(cdata)  # from_buffer's char[] spans the buffer's nbytes
