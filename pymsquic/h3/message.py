"""HTTP message checks of RFC 9114 section 4.3: pseudo-header fields, field
names, connection-specific fields. A malformed message is a stream error
H3_MESSAGE_ERROR (section 4.1.2): other requests carry on."""

from __future__ import annotations

import re
from itertools import chain
from typing import List, Tuple

from .errors import ErrorCode, H3StreamError

Headers = List[Tuple[bytes, bytes]]

_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# :protocol only where extended CONNECT (RFC 9220) is offered (SETTINGS_ENABLE_CONNECT_PROTOCOL).
_EXTENDED_CONNECT_PSEUDO = _REQUEST_PSEUDO | {b":protocol"}
_RESPONSE_PSEUDO = frozenset({b":status"})
# Section 4.2: fields that only mean something to HTTP/1.1 connections.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"})


# RFC 9110 section 5.1 (a token, lowercase here) and 5.5: a value has no NUL, CR or LF and
# no leading or trailing whitespace (section 4.2: else malformed; "x: a\r\nhost: b" smuggles).
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_WHITESPACE = b" \t"


def _malformed(reason: str) -> H3StreamError:
    return H3StreamError(ErrorCode.H3_MESSAGE_ERROR, reason)


# Field names already found valid: most messages repeat a few names, and a set lookup
# is several times cheaper than the checks. Bounded: a peer sending ever new names
# only stops filling it.
_VALID_NAMES: set[bytes] = set()
_VALID_NAMES_MAX = 1024


def _check_name(name: bytes) -> None:
    if not name:
        raise _malformed("empty field name")
    if name.lower() != name:
        raise _malformed(f"field name {name!r} is not lowercase")
    if not _FIELD_NAME.fullmatch(name[1:] if name[:1] == b":" else name):
        raise _malformed(f"field name {name!r} has a character not allowed")


def _split(headers: Headers, allowed: frozenset[bytes]) -> dict[bytes, bytes]:
    """The pseudo-header fields, checked; the regular fields checked too."""
    pseudo: dict[bytes, bytes] = {}
    regular_seen = False
    valid_names = _VALID_NAMES
    for name, value in headers:
        if name not in valid_names:
            _check_name(name)
            if len(valid_names) < _VALID_NAMES_MAX:
                valid_names.add(name)
        # No NUL, CR or LF (translate() drops them: one C pass, cheaper than a regex
        # search), and no whitespace around the value.
        if len(value.translate(None, b"\x00\r\n")) != len(value) or (
                value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE)):
            raise _malformed(f"field {name!r} has a value with NUL, CR, LF or surrounding whitespace")
        if name[:1] == b":":
            if regular_seen:
                raise _malformed(f"pseudo-header {name!r} after a regular field")
            if name not in allowed:
                raise _malformed(f"pseudo-header {name!r} not allowed here")
            if name in pseudo:
                raise _malformed(f"pseudo-header {name!r} given twice")
            pseudo[name] = value
            continue
        regular_seen = True
        if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise _malformed(f"connection-specific field {name!r}")
    return pseudo


#: The largest field section (section_size) the client and server keep in their caches of
#: heads met before: larger ones (long cookies, paths echoed into a header) are checked each
#: time rather than held for the life of the process.
CACHED_SECTION_MAX = 4096


def section_size(headers: Headers) -> int:
    """A field section's size as RFC 9114 section 4.2.2 measures it: each field's
    name and value lengths plus 32 (summed in C: no Python step per field)."""
    return 32 * len(headers) + sum(map(len, chain.from_iterable(headers)))


def check_request(headers: Headers, extended_connect: bool = False) -> dict[bytes, bytes]:
    """A request's header section; returns its pseudo-header fields. With
    ``extended_connect``, a CONNECT may carry :protocol (RFC 9220)."""
    pseudo = _split(headers, _EXTENDED_CONNECT_PSEUDO if extended_connect else _REQUEST_PSEUDO)
    method = pseudo.get(b":method")
    if method is None:
        raise _malformed("request without :method")
    if b":protocol" in pseudo:  # extended CONNECT: like any request, plus :protocol
        if method != b"CONNECT":
            raise _malformed(":protocol in a request that is not a CONNECT")
        if not pseudo.get(b":scheme") or not pseudo.get(b":path") or not pseudo.get(b":authority"):
            raise _malformed("extended CONNECT needs :scheme, :path and :authority")
        return pseudo
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            raise _malformed("CONNECT needs :authority and no :scheme or :path")
        return pseudo
    for name in (b":scheme", b":path"):
        if not pseudo.get(name):
            raise _malformed(f"request without {name.decode()}")
    if pseudo[b":scheme"] in (b"http", b"https"):  # section 4.3.1: an authority, and one only
        hosts = {value for field, value in headers if field == b"host"}
        authority = pseudo.get(b":authority")
        if authority is not None:
            hosts.add(authority)
        if len(hosts) != 1 or not next(iter(hosts)):
            raise _malformed(f":authority and host: {sorted(hosts)!r}, not one non-empty value")
    return pseudo


def check_response(headers: Headers) -> int:
    """A response's header section; returns its status code."""
    pseudo = _split(headers, _RESPONSE_PSEUDO)
    status = pseudo.get(b":status")
    if status is None or len(status) != 3 or not status.isdigit():
        raise _malformed(f"response :status {status!r}")
    return int(status)


def check_trailers(headers: Headers) -> None:
    """A trailer section: no pseudo-header fields."""
    _split(headers, frozenset())


def content_length(headers: Headers) -> int | None:
    """The content-length field's value, None without one (H3_MESSAGE_ERROR if invalid)."""
    values = {value for name, value in headers if name == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise _malformed(f"content-length {sorted(values)!r}")
    return int(next(iter(values)))
