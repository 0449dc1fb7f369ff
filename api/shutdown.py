"""Graceful shutdown: uvicorn's server, draining on the first SIGTERM or SIGINT.

    first signal    new requests and GET /ready get a 503 (server_shutting_down, Retry-After);
                    the answers in flight run on for up to the drain timeout (`--drain-timeout`),
                    then what remains ends with an error event and `data: [DONE]` (`ServerState.drain`);
                    then uvicorn is told to exit (status 0)
    second signal   exit at once (uvicorn's own handling)

uvicorn's handler would close the listening socket and sse-starlette's would
end every stream at once; both run only after the drain.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn


class DrainingServer(uvicorn.Server):
    """A `uvicorn.Server` for `app` (whose `state.server` is the `ServerState`) that drains first."""

    def __init__(self, config: uvicorn.Config, app: Any, drain_timeout: float):
        super().__init__(config)
        self._app, self._drain_timeout = app, drain_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signalled = False

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        state = getattr(self._app.state, "server", None)
        loop = self._loop
        if self._signalled or loop is None or state is None or not self.started:
            super().handle_exit(sig, frame)
            return
        self._signalled = True
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain(state, sig)))

    async def _drain(self, state: Any, sig: int) -> None:
        try:
            await state.drain(self._drain_timeout)
        finally:
            super().handle_exit(sig, None)
            # uvicorn would raise the signal again once it has stopped, so the process would end "killed by
            # SIGTERM"; a drained server has shut down as asked, and exits 0.
            self._captured_signals.clear()
