"""What every request passes before a route: the Host header, the API key, the body's size.

An ASGI middleware (it sees a streamed body as it arrives, which a route
cannot), answering in OpenAI's error shape:

    Host      on a connection to a loopback address (the socket's own
              address, whatever the bind), only loopback names (localhost,
              127.0.0.1, [::1]) and `--allowed-hosts` are served: a page on
              another site cannot reach a local server by rebinding its own
              name to 127.0.0.1 (DNS rebinding). 400 invalid_host. Other
              connections are checked only against `--allowed-hosts`, if given.
    API key   with keys set (`--api-key`, `STEERING_API_KEYS`), every route
              but GET /health and the playground's static page (/ and
              /playground/*) needs `Authorization: Bearer KEY`, compared in
              constant time with each key. 401 invalid_api_key. A CORS
              preflight (OPTIONS) carries no key and is answered by the CORS
              layer outside this one.
    body      at most `max_body_bytes` (Content-Length, or counted as a
              chunked body arrives). 413 request_too_large.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Awaitable, Callable, Iterable

from api.errors import APIError

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/playground/",)  # static files of the page

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _TooLarge(Exception):
    pass


def host_name(host_header: str) -> str:
    """'example.com:8000' -> 'example.com'; '[::1]:8000' -> '[::1]'."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[: h.index("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class RequestGuard:
    """The middleware; see the module docstring."""

    def __init__(self, app: Any, *, allowed_hosts: Iterable[str] = (), api_keys: Iterable[str] = (),
                 max_body_bytes: int = 4 * 1024 * 1024):
        self.app = app
        self.extra_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.loopback_hosts = LOOPBACK_NAMES | self.extra_hosts
        self.keys = tuple(k.encode() for k in api_keys if k)
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        error = self._check(scope, headers)
        if error is not None:
            await _send_error(error, scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send_error(self._too_large(), scope, receive, send)
            return
        seen = 0
        tripped = replied = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen, tripped
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    tripped = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            # Once the body went over the limit, whatever the app answers (FastAPI turns the failed read
            # into a 400) is replaced by the 413.
            nonlocal replied
            if not tripped:
                await send(message)
            elif not replied:
                replied = True
                await _send_error(self._too_large(), scope, None, send)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        if tripped and not replied:
            await _send_error(self._too_large(), scope, None, send)

    def _check(self, scope: Scope, headers: dict[str, str]) -> APIError | None:
        allowed = self.loopback_hosts if _is_loopback(scope) else (self.extra_hosts or None)
        if allowed is not None and host_name(headers.get("host", "")) not in allowed:
            return APIError(400, "This server does not serve the host name in your Host header (see "
                            "--allowed-hosts).", None, "invalid_host")
        path = scope.get("path", "")
        if self.keys and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            given = token.strip().encode() if scheme.lower() == "bearer" else b""
            # Compare with every key, always, so the time taken says nothing about which one nearly matched.
            ok = False
            for key in self.keys:
                ok |= hmac.compare_digest(given, key)
            if not ok:
                return APIError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer KEY'."
                                if given else "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                                None, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return None

    def _too_large(self) -> APIError:
        return APIError(413, f"The request body is larger than {self.max_body} bytes.", None, "request_too_large")


def _is_loopback(scope: Scope) -> bool:
    server = scope.get("server")
    try:
        return server is not None and ipaddress.ip_address(server[0]).is_loopback
    except ValueError:  # a name (a test client's "testserver") or a unix socket path
        return False


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def _send_error(error: APIError, scope: Scope, receive: Receive | None, send: Send) -> None:
    await error.response()(scope, receive or _nothing, send)
