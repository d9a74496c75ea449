"""A small real ASGI app (Starlette, from PyPI) served by pymsquic.h3 and
fetched by its client: routing, path parameters, JSON, streaming responses,
request bodies, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator

import pytest

import pymsquic
import pymsquic.h3

starlette = pytest.importorskip("starlette")
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

events: list[str] = []


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    events.append("startup")
    yield
    events.append("shutdown")


async def home(request: Request) -> Response:
    return PlainTextResponse("hello from starlette over HTTP/3")


async def item(request: Request) -> Response:
    return JSONResponse({"id": request.path_params["item_id"], "q": request.query_params.get("q"),
                         "http_version": request.scope["http_version"]})


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body[::-1], media_type="application/octet-stream", headers={"x-length": str(len(body))})


async def numbers(request: Request) -> Response:
    async def produce() -> AsyncIterator[bytes]:
        for i in range(100):
            yield b"%d\n" % i
    return StreamingResponse(produce(), media_type="text/plain")


app = Starlette(routes=[Route("/", home), Route("/items/{item_id:int}", item), Route("/echo", echo, methods=["POST"]),
                        Route("/numbers", numbers)], lifespan=lifespan)


def test_starlette_app_over_http3(server_credential: pymsquic.Credential) -> None:
    async def main() -> Any:
        events.clear()
        server = await pymsquic.h3.serve(app, "127.0.0.1", 0, credential=server_credential)
        url = f"https://127.0.0.1:{server.addresses[0][1]}"
        async with server, pymsquic.h3.Client(verify=False, timeout=10) as client:
            assert events == ["startup"]
            response = await client.get(f"{url}/")
            assert response.status_code == 200 and response.text == "hello from starlette over HTTP/3"
            assert response.header("content-type") == "text/plain; charset=utf-8"
            response = await client.get(f"{url}/items/42?q=yes")
            assert json.loads(response.content) == {"id": 42, "q": "yes", "http_version": "3"}
            payload = bytes(range(256)) * 64
            response = await client.post(f"{url}/echo", content=payload)
            assert response.content == payload[::-1] and response.header("x-length") == str(len(payload))
            response = await client.get(f"{url}/numbers")
            assert response.text == "".join(f"{i}\n" for i in range(100))
            response = await client.request("HEAD", f"{url}/")  # content-length without a body
            assert response.status_code == 200 and response.content == b""
            assert response.header("content-length") == str(len("hello from starlette over HTTP/3"))
            assert (await client.get(f"{url}/missing")).status_code == 404
            assert (await client.request("DELETE", f"{url}/echo")).status_code == 405
        assert events == ["startup", "shutdown"]

    asyncio.run(main())
