"""The request size limit of the web service: an ASGI middleware that refuses a body over
the limit with 413 as it streams in (from its Content-Length or the bytes received so far),
so a huge upload is never held in memory."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit"]

_DRAIN_AFTER_413 = 64 * 1024 * 1024  # read (and drop) this much more so clients see the 413


class BodyLimit:
    """ASGI middleware: buffer request bodies of at most ``limit`` bytes; answer 413 as soon
    as a Content-Length header or the bytes received so far pass it (the 413 names
    ``image_limit``, the largest image, which is what a user can act on)."""

    def __init__(self, app: ASGIApp, limit: int, image_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.image_limit = image_limit  # named in the 413 message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, f"Content-Length header {declared.decode('latin-1')!r} is not a number")
                return
            if int(declared) > self.limit:
                await self._refuse(receive, send, f"{int(declared):,} bytes")
                return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(receive, send, f"more than {self.limit:,} bytes")
                return
            chunks.append(body)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, receive: Receive, send: Send, what: str) -> None:
        await _send_json(
            send, 413,
            f"upload too large: the request body is {what}; the limit for an image is "
            f"{self.image_limit // (1024 * 1024)} MB",
        )
        dropped = 0  # read a bounded amount more so the client is not reset mid-upload
        while dropped < _DRAIN_AFTER_413:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


async def _send_json(send: Send, status: int, detail: str) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
