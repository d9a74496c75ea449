"""The ASGI app of the HTTP/3 rows (bench/h3.py), the same for every server:
GET /get: 4000 bytes; POST /echo: the request body back (512 bytes in the rows)."""

from __future__ import annotations

from typing import Any

BODY = bytes(range(250)) * 16  # 4000 bytes
GET_HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", b"4000")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["method"] == "POST":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": GET_HEADERS})
    await send({"type": "http.response.body", "body": BODY})
