"""What the server counts, for Prometheus (`GET /metrics`, prometheus-client's text format).

One registry per app (a test process builds many apps). Names and labels:

    steering_http_requests_total{route, status}      every response, by route template and status
    steering_requests_in_flight                      chat groups on the engine (the gate's count)
    steering_queue_waiting                           groups submitted, not yet all started
    steering_chat_requests_total{steered}            chat requests: does steering act on them
    steering_generated_tokens_total{steered}         tokens sent to clients, per kind of choice
    steering_time_to_first_token_seconds             submit -> first token of a choice
    steering_inter_token_latency_seconds             between two tokens of one choice
    steering_cancellations_total                     groups whose client went away
    steering_rejections_total{reason}                429 queue_full / concept_searches / attribution_graphs,
                                                     503 shutting_down / model_busy
    steering_concept_requests_total{result}          auto-steer: cache hit or search

`RequestTimer` turns one request's events into the token figures; the
`MetricsMiddleware` counts responses by route.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from steering.engine import TokenEvent

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The app's metrics (see the module docstring)."""

    def __init__(self, in_flight: Callable[[], float], waiting: Callable[[], float]):
        r = self.registry = CollectorRegistry()
        self.http = Counter("steering_http_requests", "HTTP responses by route and status", ["route", "status"],
                            registry=r)
        Gauge("steering_requests_in_flight", "chat groups on the engine", registry=r).set_function(in_flight)
        Gauge("steering_queue_waiting", "groups waiting for a slot", registry=r).set_function(waiting)
        self.chats = Counter("steering_chat_requests", "chat requests", ["steered"], registry=r)
        self.tokens = Counter("steering_generated_tokens", "tokens sent", ["steered"], registry=r)
        self.ttft = Histogram("steering_time_to_first_token_seconds", "submit to a choice's first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("steering_inter_token_latency_seconds", "between two tokens of a choice",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.cancellations = Counter("steering_cancellations", "groups cancelled by their client", registry=r)
        self.rejections = Counter("steering_rejections", "requests refused for load", ["reason"], registry=r)
        self.concepts = Counter("steering_concept_requests", "auto-steer concepts", ["result"], registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestTimer:
    """One chat request's token figures: time to first token and gaps, per choice (row)."""

    def __init__(self, metrics: Metrics | None, steered: Sequence[bool]):
        self.metrics, self.steered = metrics, list(steered)
        self.start = time.perf_counter()
        self.last: dict[int, float] = {}
        self.count = 0
        self.first_ms: float | None = None

    def on_events(self, events: Sequence[TokenEvent]) -> None:
        now = time.perf_counter()
        m = self.metrics
        for e in events:
            if e.token_id is None:
                continue
            self.count += 1
            before = self.last.get(e.index)
            self.last[e.index] = now
            if self.first_ms is None:
                self.first_ms = (now - self.start) * 1e3
            if m is None:
                continue
            m.tokens.labels(steered=str(self.steered[e.index]).lower()).inc()
            if before is None:
                m.ttft.observe(now - self.start)
            else:
                m.itl.observe(now - before)


class MetricsMiddleware:
    """Counts every HTTP response by route template (`/v1/features/{index}`, not each index) and status."""

    def __init__(self, app: Any, metrics: Callable[[], Metrics | None]):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            m = self.metrics()
            if m is not None:
                route = scope.get("route")
                m.http.labels(route=getattr(route, "path", "unmatched"), status=str(status)).inc()
