"""Scale-out on Ray Serve: N replicas of the server behind one gateway (`python -m api.scale_out`).

Two Ray Serve deployments make one application:

    SteeringReplica   the whole server (`api.app.create_app`: model, SAE, engine,
                      every route) in a Ray actor; `handle(request)` runs one HTTP
                      request through the app in process and streams back its
                      status, headers and body chunks. Autoscaled by Ray Serve on
                      ongoing requests (its queue length): between `min_replicas`
                      and `max_replicas`, adding one when a replica holds more than
                      `target_ongoing_requests` (the engine's batch).
    Gateway           the HTTP ingress (Ray Serve's proxy hands it every request):
                      forwards the request, whole, to a replica through a
                      DeploymentHandle (Ray's router picks the replica with the
                      shorter queue of two) and relays the response as it streams,
                      with the replica's name in `x-steering-replica`.

Ray owns placement, routing, health checks, restarts and autoscaling; this
module only carries requests across. What it adds is OpenAI-shaped failure:
a replica that dies before answering becomes one retry on another replica,
then a 503 `replica_unavailable` error; one that dies mid-stream ends the
stream with an SSE error event and `[DONE]`, so a client never hangs.

State that differs between replicas: none that a client can see. Presets are
read from the presets folder every replica is given (the same files);
auto-steer's concept cache lives in each replica and is recomputed there,
deterministically (the same SAE, catalogue and probe seeds choose the same
features; bit for bit on the Llama path, whose kernels are batch-invariant,
up to float rounding in a near tie on other models), so only the first
request for a concept on each replica pays the search; estimated max units
are cached next to the SAE. /metrics reports the replica that answered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.errors import APIError, sse_error_event
from api.settings import Settings

REPLICA_HEADER = "x-steering-replica"
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection"}


def replica_unavailable(detail: str) -> APIError:
    return APIError(503, f"The replica serving this request stopped ({detail}); retry the request.", None,
                    "replica_unavailable", headers={"Retry-After": "1"})


@dataclass(frozen=True)
class Scaling:
    """How many replicas, and when Ray Serve adds one."""

    min_replicas: int = 2
    max_replicas: int = 2
    target_ongoing_requests: int = 8  # per replica: above this average Ray Serve scales up
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0


class SteeringReplica:
    """One server (model, SAE, engine, routes) inside a Ray actor."""

    async def __init__(self, settings: Settings):
        from api.app import create_app

        self.settings = settings
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        failed: list[BaseException] = []
        self.app = create_app(settings, on_fatal=failed.append)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        state = self.app.state.server
        while not state.ready and not failed and state.error is None:  # Serve routes here once __init__ returns
            await asyncio.sleep(0.2)
        if failed or state.error is not None:
            raise RuntimeError(f"replica start-up failed: {state.error or failed[0]}")

    def check_health(self) -> None:
        """Ray Serve calls this periodically; raising marks the replica unhealthy (it is replaced)."""
        if self.app.state.server.error is not None:
            raise RuntimeError(self.app.state.server.error)

    async def handle(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any] | bytes]:
        """Run one HTTP request through the app: yields {"status", "headers", "replica"}, then body chunks."""
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
            "method": request["method"], "path": request["path"], "raw_path": request["path"].encode(),
            "query_string": request["query"].encode(), "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request["headers"]],
            "client": tuple(request["client"]) if request["client"] else None,
            "server": (self.settings.host, self.settings.port),
        }
        messages: asyncio.Queue[dict] = asyncio.Queue()
        gone = asyncio.Event()
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request["body"], "more_body": False}
            await gone.wait()  # the client went away (Ray cancels this generator), or the answer ended
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            await messages.put(message)

        app = asyncio.create_task(self.app(scope, receive, send))
        try:
            while True:
                next_message = asyncio.create_task(messages.get())
                await asyncio.wait({next_message, app}, return_when=asyncio.FIRST_COMPLETED)
                if not next_message.done():
                    next_message.cancel()
                    app.result()  # the app returned without finishing its response: raise what it raised
                    return
                message = next_message.result()
                if message["type"] == "http.response.start":
                    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                    yield {"status": message["status"], "headers": headers, "replica": self.name}
                elif message["type"] == "http.response.body":
                    if message.get("body"):
                        yield bytes(message["body"])
                    if not message.get("more_body", False):
                        return
        finally:
            gone.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(app, timeout=10)


class Gateway:
    """The HTTP ingress: forwards each request to a replica and relays its streamed answer."""

    def __init__(self, replicas: Any, attempts: int = 2):
        self.replicas = replicas.options(stream=True)
        self.attempts = attempts

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        payload = {"method": request.method, "path": request.url.path, "query": request.url.query,
                   "headers": list(request.headers.items()), "body": body,
                   "client": [request.client.host, request.client.port] if request.client else None}
        last = "no replica answered"
        for _ in range(self.attempts):  # nothing was sent yet: another replica may take the request
            stream = self.replicas.handle.remote(payload)
            try:
                head = await stream.__anext__()
            except Exception as exc:  # ActorDiedError, ActorUnavailableError, a replica that failed to start...
                last = f"{type(exc).__name__}"
                continue
            headers = {k: v for k, v in head["headers"] if k.lower() not in _HOP_HEADERS}
            headers[REPLICA_HEADER] = head["replica"]
            sse = headers.get("content-type", "").startswith("text/event-stream")
            return StreamingResponse(_relay(stream, sse), status_code=head["status"], headers=headers)
        return replica_unavailable(last).response()


async def _relay(stream: Any, sse: bool) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except Exception as exc:
        if not sse:  # a JSON body comes in one chunk: a death after it cannot be reported
            raise
        error = replica_unavailable(type(exc).__name__)
        yield f"data: {sse_error_event(error)}\n\ndata: [DONE]\n\n".encode()


def build_application(settings: Settings, scaling: Scaling) -> Any:
    """The Ray Serve application: a Gateway in front of autoscaled SteeringReplicas."""
    from ray import serve

    fixed = scaling.min_replicas == scaling.max_replicas
    replica = serve.deployment(
        SteeringReplica, name="SteeringReplica",
        ray_actor_options={"num_cpus": scaling.cpus_per_replica, "num_gpus": scaling.gpus_per_replica},
        # The engine queues and batches on its own: let it hold what it would hold as one server.
        max_ongoing_requests=settings.max_queue + settings.max_batch,
        health_check_period_s=5, health_check_timeout_s=30, graceful_shutdown_timeout_s=settings.drain_timeout,
        **({"num_replicas": scaling.min_replicas} if fixed else {"autoscaling_config": {
            "min_replicas": scaling.min_replicas, "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests}}),
    )
    gateway = serve.deployment(Gateway, name="Gateway", ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=10_000)
    return gateway.bind(replica.bind(settings))
