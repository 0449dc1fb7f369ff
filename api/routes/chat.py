"""POST /v1/chat/completions: submit to the engine, then stream or collect its events.

The request is checked and translated once (`api.translate`): the cheap
checks first, then, for `steering.concept`, auto-steer's choice (the state's
`AutoSteerer`; a cached concept is resolved at once; one it has not seen
runs its forwards and a short probe through the engine, alongside other
requests, `auto_steer`), then the engine job. The response renders the resolved steering (`steering` on the
completion or on the stream's first chunk).

The async side only moves tokens: the engine's compute thread runs the model,
and events arrive through the handle's asyncio queue. A client that goes away
cancels its group (`handle.cancel()`), which the worker honours before its
next decoding step:

- streamed: sse-starlette cancels the response task on disconnect, which
  raises CancelledError inside `_stream` at its current await;
- non-streamed: a watcher polls `request.is_disconnected()`.

Either way the gate (`api.gate`) counts the group until the worker is done.
A request still generating `max_request_seconds` after it was submitted is
cancelled the same way and ends with a `request_timeout` error (408, or the
stream's last event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from sse_starlette import EventSourceResponse

from api.errors import APIError, bad_request, from_exception, request_timeout, sse_error_event
from api.metrics import RequestTimer
from api.protocol import ChatCompletion, ChatCompletionRequest
from api.render import Chunker, Collector, ResponseMeta, steering_report
from api.routes import server
from api.searches import client_of
from api.state import ServerState
from api.translate import SteeringLayers, check_steering, resolve_steering, to_engine
from steering.concepts import AutoSteerResult
from steering.engine import QueueFullError, RequestHandle, SequenceRequest
from steering.errors import SteeringError
from steering.evaluation.run import engine_runner

log = logging.getLogger("api")
DISCONNECT_POLL_S = 0.2
SSE_PING_S = 15

router = APIRouter()


async def auto_steer(state: ServerState, layers: SteeringLayers | None, client: str) -> AutoSteerResult | None:
    """Auto-steer's result for the request's concept (None without one); raises APIError.

    A concept not seen before is searched in a worker thread whose forwards run as short calls on the compute
    thread and whose probe answers are rows of the engine's batch, so other requests keep generating
    meanwhile; `state.searches` bounds how many run, in total and per client (then a 429 with a
    Retry-After from the running searches)."""
    if layers is None or layers.concept is None:
        return None
    steerer = state.autosteer
    assert steerer is not None  # check_steering refused a concept without an SAE
    concept, strength, method = layers.concept, layers.strength, layers.method
    try:
        if steerer.is_cached(concept, method=method):
            state.metrics.concepts.labels(result="cached").inc()
            return steerer.steer(concept, strength, method=method)
        slots = state.searches
        ticket = slots.admit(client, state.metrics, "steering.concept",
                             " (a concept searched once is answered at once)")
        state.metrics.concepts.labels(result="search").inc()
        t0 = time.perf_counter()
        log.info("concept search %r started", concept)
        work = asyncio.get_running_loop().run_in_executor(
            None, lambda: steerer.steer(concept, strength, runner=engine_runner(state.engine), method=method))
        work.add_done_callback(lambda _: slots.give(ticket))  # when the thread ends, even if the client left
        result = await asyncio.shield(work)
        log.info("concept search %r done in %.1f s: features %s", concept, time.perf_counter() - t0,
                 [f.index for f in result.features])
        return result
    except SteeringError as e:  # params are already steering.concept / steering.strength / steering
        raise bad_request(str(e), e.param) from None
    except QueueFullError as e:
        raise from_exception(e) from None


async def _submit(state: ServerState, requests: tuple[SequenceRequest, ...], request_id: str) -> RequestHandle:
    await state.gate.enter()
    try:
        return state.engine.submit(requests, loop=asyncio.get_running_loop())
    except BaseException as exc:
        state.gate.leave()
        if isinstance(exc, QueueFullError):
            state.metrics.rejections.labels(reason="queue_full").inc()
            log.warning("%s rejected: queue full (%d waiting), retry after %.0f s", request_id,
                        state.engine.waiting, exc.retry_after)
        raise


def _finish(state: ServerState, handle: RequestHandle, finished: bool, request_id: str, timer: RequestTimer,
            deadline: Deadline) -> None:
    """Hand the group back to the gate: now if the worker is done, else after cancelling and draining it."""
    seconds = time.perf_counter() - timer.start
    if finished:
        state.gate.leave()
        ttft = "-" if timer.first_ms is None else f"{timer.first_ms:.0f}"
        log.info("%s done: %d tokens in %.2f s, first after %s ms", request_id, timer.count, seconds, ttft)
    else:
        handle.cancel()
        state.gate.release_when_done(handle)
        state.metrics.cancellations.inc()
        why = f"past --max-request-seconds {deadline.limit_s:g}" if deadline.expired else "client gone"
        log.info("%s cancelled after %d tokens, %.2f s (%s)", request_id, timer.count, seconds, why)


STREAM_DOC = ("With `stream: true`: server-sent events, one `data: {chat.completion.chunk}` line each, an error "
              "(OpenAI's shape) as the last event if one happens mid-stream, then `data: [DONE]`.")


@router.post("/v1/chat/completions", response_model=ChatCompletion, response_model_exclude_none=False,
             summary="Create a chat completion (OpenAI-compatible, with the `steering` extension)",
             responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                              "description": "A chat.completion (JSON), or with `stream: true` " + STREAM_DOC}})
async def create_chat_completion(body: ChatCompletionRequest, request: Request,
                                 state: ServerState = Depends(server)) -> Any:
    state.require_ready()
    layers = check_steering(body, state.served, state.presets)
    concept = await auto_steer(state, layers, client_of(request, keyed=bool(state.settings.api_keys)))
    job = to_engine(body, state.served, resolve_steering(layers, concept))
    meta = ResponseMeta(
        model=state.served.model_id,
        steered=job.steered,
        prompt_tokens=job.prompt_tokens,
        logprobs=body.logprobs,
        system_fingerprint=state.fingerprint,
        steering=steering_report(job.steering, state.features),
        inspect=job.steering is not None and job.steering.inspect is not None,
        monitors=job.steering is not None and bool(job.steering.monitors),
        features=state.features,
    )
    steered = any(job.steered)
    state.metrics.chats.labels(steered=str(steered).lower()).inc()
    log.info("%s: %d row(s), max %d tokens, steered %s, stream %s", meta.id, len(job.requests),
             job.requests[0].sampling.max_tokens, steered, body.stream)
    try:
        handle = await _submit(state, job.requests, meta.id)
    except Exception as exc:
        raise from_exception(exc) from None
    timer = RequestTimer(state.metrics, job.steered)
    deadline = Deadline(state.settings.max_request_seconds)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunker = Chunker(meta, state.texts, include_usage)
        return EventSourceResponse(_stream(state, handle, chunker, timer, deadline), sep="\n", ping=SSE_PING_S)
    return await _collect(state, handle, Collector(meta, state.texts), request, timer, deadline)


class Deadline:
    """The wall-time budget of one request, from its submission: `next_events` past it raises request_timeout."""

    def __init__(self, limit_s: float):
        self.limit_s = limit_s
        self.at = time.monotonic() + limit_s
        self.expired = False

    async def next_events(self, events_in: AsyncIterator[Any], timer: RequestTimer) -> Any:
        try:
            return await asyncio.wait_for(events_in.__anext__(), max(0.0, self.at - time.monotonic()))
        except TimeoutError:
            self.expired = True
            raise request_timeout(self.limit_s, timer.count) from None


async def _stream(state: ServerState, handle: RequestHandle, chunker: Chunker,
                  timer: RequestTimer, deadline: Deadline) -> AsyncIterator[dict[str, str]]:
    finished = False
    events_in = handle.__aiter__()
    try:
        try:
            for chunk in chunker.first():
                yield {"data": chunk}
            while True:
                try:
                    events = await deadline.next_events(events_in, timer)
                except StopAsyncIteration:
                    finished = True
                    break
                except APIError:
                    raise  # timed out: the group is still running, and `_finish` cancels it
                except Exception:
                    finished = True  # the worker raised for this group: it is done with it
                    raise
                timer.on_events(events)
                for chunk in chunker.step(events):
                    yield {"data": chunk}
            for chunk in chunker.last():
                yield {"data": chunk}
        except Exception as exc:  # the status line is gone: the error is the last event
            yield {"data": sse_error_event(exc)}
        yield {"data": "[DONE]"}
    finally:
        _finish(state, handle, finished, chunker.meta.id, timer, deadline)


async def _watch_disconnect(request: Request, handle: RequestHandle) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    handle.cancel()


async def _collect(state: ServerState, handle: RequestHandle, collector: Collector, request: Request,
                   timer: RequestTimer, deadline: Deadline) -> ChatCompletion:
    finished = False
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(request, handle))
    events_in = handle.__aiter__()
    try:
        try:
            while True:
                try:
                    events = await deadline.next_events(events_in, timer)
                except StopAsyncIteration:
                    break
                timer.on_events(events)
                collector.add(events)
            finished = True
        except APIError:
            raise  # timed out: `_finish` cancels the group
        except Exception as exc:
            finished = True
            raise from_exception(exc) from None
    finally:
        watcher.cancel()
        _finish(state, handle, finished, collector.meta.id, timer, deadline)
    if handle.cancelled.is_set():
        raise APIError(499, "The client closed the request.", None, "client_closed_request")
    return collector.result()
