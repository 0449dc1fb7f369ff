"""Who may start a long shared job now (a new concept search, an attribution graph): a bound in total and
per client, and an honest Retry-After.

A concept the auto-steerer has not seen is searched and probed (seconds of
shared model work: `steering.concepts.autosteer`). Searches run beside other
requests, but each one takes a share of the batch and the compute thread, so
the server runs at most `total` at once and at most `per_client` for one
client (a client is its API key on a server with keys, which the guard has
checked, else its address: `client_of`). A refusal says when to come back:
the time the earliest running search still needs, from the mean duration of
the last few finished searches (an initial guess until one finishes).
Attribution graphs are bounded the same way, by a `SearchSlots` of their own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from api.errors import APIError

log = logging.getLogger("api")

INITIAL_SEARCH_S = 10.0  # a first guess at a search's duration (the shipped model on 2 cores: ~9 s idle)


def client_of(request: Request, keyed: bool) -> str:
    """A client's identity for fairness: on a server with API keys (`keyed`: the guard let only valid ones
    in) a digest of its key, else its address (an unchecked token would let one client be many)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if keyed and scheme.lower() == "bearer" and token.strip():
        return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:16]
    return "addr:" + (request.client.host if request.client else "unknown")


@dataclass
class SearchSlots:
    """Running jobs of one kind (`what`, `plural`): `refusal` says whether a client may start one (None:
    it may), `take` a ticket when it starts, `give` it back when it ends."""

    total: int = 2
    per_client: int = 1
    what: str = "concept search"
    plural: str = "concept searches"
    reason: str = "concept_searches"  # the label of a refusal in steering_rejections_total
    running: dict[int, tuple[str, float]] = field(default_factory=dict)  # ticket -> (client, start)
    mean_s: float = INITIAL_SEARCH_S
    finished: int = 0
    _next: int = 0

    def __len__(self) -> int:
        return len(self.running)

    def refusal(self, client: str) -> str | None:
        """Why `client` may not start a search now (None: it may)."""
        if len(self.running) >= self.total:
            return f"{len(self.running)} {self.plural} are running (at most {self.total} at once)"
        mine = sum(1 for c, _ in self.running.values() if c == client)
        if mine >= self.per_client:
            return f"this client already has {mine} {self.what}(s) running (at most {self.per_client})"
        return None

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds until the earliest running search is expected to end (at least 1)."""
        now = time.monotonic() if now is None else now
        left = min((self.mean_s - (now - start) for _, start in self.running.values()), default=0.0)
        return max(1, math.ceil(left))

    def admit(self, client: str, metrics: Any, param: str | None = None, hint: str = "") -> int:
        """A ticket for `client`'s new job, or an APIError 429 saying why not and when to come back (with
        `hint` after it), counted in `metrics.rejections` under `reason` and logged."""
        refusal = self.refusal(client)
        if refusal is None:
            return self.take(client)
        if metrics is not None:
            metrics.rejections.labels(reason=self.reason).inc()
        retry = self.retry_after()
        log.warning("%s refused: %s", self.what, refusal)
        raise APIError(429, f"{refusal}; retry in about {retry} s{hint}.", param, "rate_limit_exceeded",
                       headers={"Retry-After": str(retry)})

    def take(self, client: str) -> int:
        """A ticket for a search that may start (check `refusal` first)."""
        self._next += 1
        self.running[self._next] = (client, time.monotonic())
        return self._next

    def give(self, ticket: int) -> None:
        """The search ended; its duration joins the running mean."""
        _, start = self.running.pop(ticket)
        self.finished += 1
        self.mean_s += (time.monotonic() - start - self.mean_s) / min(self.finished, 8)
