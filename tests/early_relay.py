"""A UDP relay that holds a QUIC client's handshake completion.

:class:`HoldingRelay` sits between a client and a server on 127.0.0.1. It
forwards everything the server sends, and the client's first flight: each
datagram whose coalesced QUIC packets are all Initial or 0-RTT packets. A
client datagram holding a Handshake or 1-RTT packet (its Finished, its
acknowledgements) is held until :meth:`release`: the server then sees a
0-RTT request while its handshake cannot complete, which is exactly the
window early hand-off is about, without any timing.
"""

from __future__ import annotations

import selectors
import socket
import threading

# Long-header packet types (RFC 9000 17.2; RFC 9369 5 for v2).
_V1, _V2 = 0x00000001, 0x6B3343CF
_EARLY_TYPES = {_V1: {0: "initial", 1: "0rtt"}, _V2: {1: "initial", 2: "0rtt"}}


def _varint(data: bytes, i: int) -> tuple[int, int]:
    length = 1 << (data[i] >> 6)
    value = data[i] & 0x3F
    for b in data[i + 1:i + length]:
        value = (value << 8) | b
    return value, i + length


def packet_kinds(datagram: bytes) -> list[str]:
    """The kinds of the QUIC packets coalesced in a datagram: "initial", "0rtt",
    or "late" (Handshake, 1-RTT, anything else)."""
    return [kind for kind, _ in split_packets(datagram)]


def split_packets(datagram: bytes) -> list[tuple[str, bytes]]:
    """The QUIC packets coalesced in a datagram, each with its kind (see packet_kinds)."""
    kinds: list[tuple[str, bytes]] = []
    i = 0
    while i < len(datagram):
        first = datagram[i]
        if first == 0:  # trailing padding after the last packet
            break
        if not first & 0x80:  # short header: 1-RTT, always the last packet
            kinds.append(("late", datagram[i:]))
            break
        version = int.from_bytes(datagram[i + 1:i + 5], "big")
        kind = _EARLY_TYPES.get(version, {}).get((first >> 4) & 3, "late")
        j = i + 5
        j += 1 + datagram[j]  # destination connection id
        j += 1 + datagram[j]  # source connection id
        if kind == "initial":
            token_len, j = _varint(datagram, j)
            j += token_len
        length, j = _varint(datagram, j)
        kinds.append((kind, datagram[i:j + length]))
        i = j + length
    return kinds


class HoldingRelay:
    """Relays 127.0.0.1:``port`` (the client connects to :attr:`port`), holding
    the client's datagrams that carry anything but Initial and 0-RTT packets
    until :meth:`release`. Never released, the client seems to vanish after its
    first flight."""

    def __init__(self, server_port: int, hold_0rtt: bool = False) -> None:
        self.server = ("127.0.0.1", server_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        self.port: int = self.front.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.zero_rtt_forwarded = 0  # 0-RTT packets of the client's that reached the server
        self.held: list[bytes] = []
        # hold_0rtt: the first flight's 0-RTT packets wait for release_0rtt(); its
        # Initial goes on alone, padded to the 1200 bytes a client Initial needs
        # (the zeros after it are no packet: the server drops them).
        self.held_0rtt: list[bytes] | None = [] if hold_0rtt else None
        self.first_held = threading.Event()  # the client finished its first flight
        self._holding = True
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="holding-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.front, selectors.EVENT_READ)
        sel.register(self.back, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopped:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    if key.fileobj is self.front:
                        data, self.client = self.front.recvfrom(65536)
                        self._from_client(data)
                    else:
                        data, _ = self.back.recvfrom(65536)
                        if self.client is not None:
                            self.front.sendto(data, self.client)
        finally:
            sel.close()

    def _from_client(self, data: bytes) -> None:
        kinds = packet_kinds(data)
        if self.held_0rtt is not None and "0rtt" in kinds and "late" not in kinds:
            rest = b""
            for kind, packet in split_packets(data):
                if kind == "0rtt":
                    self.held_0rtt.append(packet)
                else:
                    rest += packet
            if not rest:
                return
            data, kinds = rest.ljust(1200, b"\0"), ["initial"]
        with self._lock:
            if self._holding and "late" in kinds:
                self.held.append(data)
                self.first_held.set()
                return
            self.zero_rtt_forwarded += kinds.count("0rtt")
        self.back.sendto(data, self.server)

    def release(self) -> None:
        """Send what was held and hold nothing more: the handshake completes."""
        with self._lock:
            self._holding = False
            held, self.held = self.held, []
            for data in held:
                self.back.sendto(data, self.server)

    def release_0rtt(self) -> None:
        """Send the 0-RTT packets held (with hold_0rtt), each in a datagram of its own."""
        assert self.held_0rtt is not None
        held, self.held_0rtt = self.held_0rtt, []
        with self._lock:
            self.zero_rtt_forwarded += len(held)
        for packet in held:
            self.back.sendto(packet, self.server)

    def close(self) -> None:
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in (self.front, self.back, self._wake_r, self._wake_w):
            sock.close()
