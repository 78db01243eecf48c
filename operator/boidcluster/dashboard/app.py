"""The web app: the page, its vendored assets, a JSON snapshot and a server-sent event stream.

Read only by construction: every route is GET (HEAD); there is no handler that writes. Everything
the page loads comes from this package (Content-Security-Policy 'self'): no CDN, so it works on
clusters without Internet access.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .live import LiveView

STATIC = Path(__file__).parent / "static"
KEEPALIVE = 15.0
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
       "connect-src 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(live: LiveView) -> Starlette:
    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def snapshot(_: Request) -> Response:
        return Response(live.state_json, media_type="application/json", headers={"Cache-Control": "no-store"})

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def events(request: Request) -> Response:
        q = live.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                sent = live.version
                yield f"retry: 2000\nid: {sent}\nevent: snapshot\ndata: {live.state_json}\n\n"
                while not live.stopped:
                    try:
                        v = await asyncio.wait_for(q.get(), KEEPALIVE)
                    except asyncio.TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    if v is None:
                        return
                    if live.version != sent:
                        sent = live.version
                        yield f"id: {sent}\nevent: snapshot\ndata: {live.state_json}\n\n"
            finally:
                live.unsubscribe(q)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/api/snapshot", snapshot, methods=["GET"]),
            Route("/api/events", events, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(SecurityHeaders)],
    )
