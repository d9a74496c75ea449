"""A small ASGI app served over HTTP/3 by pymsquic.h3 (run from this folder):

    python -m pymsquic.h3 hello_app:app --port 4433 --ca-out ca.pem
    python fetch.py https://127.0.0.1:4433/ --ca ca.pem
    python fetch.py https://127.0.0.1:4433/echo --ca ca.pem --data "echo me"

GET / says hello; POST /echo sends the request body back as it streams in.
"""

from __future__ import annotations

from pymsquic.h3 import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI 3 app: lifespan, and http."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["method"] == "POST" and scope["path"] == "/echo":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        while True:  # each piece of the request body goes straight back
            message = await receive()
            more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": more})
            if not more:
                return
    body = b"hello over HTTP/3\n" if scope["path"] == "/" else b"not found\n"
    await send({"type": "http.response.start", "status": 200 if scope["path"] == "/" else 404,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
