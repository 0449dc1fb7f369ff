"""POST /v1/chat/completions: submit to the engine, then stream or collect its events.

The async side only moves tokens: the engine's compute thread runs the model,
and events arrive through the handle's asyncio queue. A client that goes away
cancels its group (`handle.cancel()`), which the worker honours before its
next decoding step:

- streamed: sse-starlette cancels the response task on disconnect, which
  raises CancelledError inside `_stream` at its current await;
- non-streamed: a watcher polls `request.is_disconnected()`.

Either way the gate (`api.gate`) counts the group until the worker is done.

With `steering.concept`, auto-steer picks the features first (`api.concepts`;
an uncached concept takes the gate alone while its search runs), and the
response reports the steering used (the completion's, or the first chunk's,
`steering`).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from fastapi import Request
from sse_starlette import EventSourceResponse

from api.concepts import applied_steering, resolve_concept
from api.errors import APIError, from_exception, sse_error_event
from api.protocol import ChatCompletion, ChatCompletionRequest
from api.render import Chunker, Collector, ResponseMeta
from api.translate import to_engine

DISCONNECT_POLL_S = 0.2
SSE_PING_S = 15


async def _submit(state: Any, requests: Any) -> Any:
    await state.gate.enter()
    try:
        return state.engine.submit(requests, loop=asyncio.get_running_loop())
    except BaseException:
        state.gate.leave()
        raise


def _finish(state: Any, handle: Any, finished: bool) -> None:
    """Hand the group back to the gate: now if the worker is done, else after cancelling and draining it."""
    if finished:
        state.gate.leave()
    else:
        handle.cancel()
        state.gate.release_when_done(handle)


async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Any:
    state = request.app.state.server.require_ready()
    auto = await resolve_concept(state, body)
    job = to_engine(body, state.served, state.presets, auto)
    meta = ResponseMeta(
        model=state.served.model_id,
        steered=job.steered,
        prompt_tokens=job.prompt_tokens,
        logprobs=body.logprobs,
        system_fingerprint=state.fingerprint,
        steering=applied_steering(body, job.spec, auto, state.features),
    )
    try:
        handle = await _submit(state, job.requests)
    except Exception as exc:
        raise from_exception(exc) from None
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunker = Chunker(meta, state.texts, include_usage)
        return EventSourceResponse(_stream(state, handle, chunker), sep="\n", ping=SSE_PING_S)
    return await _collect(state, handle, Collector(meta, state.texts), request)


async def _stream(state: Any, handle: Any, chunker: Chunker) -> AsyncIterator[dict[str, str]]:
    finished = False
    events_in = handle.__aiter__()
    try:
        try:
            for chunk in chunker.first():
                yield {"data": chunk}
            while True:
                try:
                    events = await events_in.__anext__()
                except StopAsyncIteration:
                    finished = True
                    break
                except Exception:
                    finished = True  # the worker raised for this group: it is done with it
                    raise
                for chunk in chunker.step(events):
                    yield {"data": chunk}
            for chunk in chunker.last():
                yield {"data": chunk}
        except Exception as exc:  # the status line is gone: the error is the last event
            yield {"data": sse_error_event(exc)}
        yield {"data": "[DONE]"}
    finally:
        _finish(state, handle, finished)


async def _watch_disconnect(request: Request, handle: Any) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    handle.cancel()


async def _collect(state: Any, handle: Any, collector: Collector, request: Request) -> ChatCompletion:
    finished = False
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(request, handle))
    try:
        try:
            async for events in handle:
                collector.add(events)
            finished = True
        except Exception as exc:
            finished = True
            raise from_exception(exc) from None
    finally:
        watcher.cancel()
        _finish(state, handle, finished)
    if handle.cancelled.is_set():
        raise APIError(499, "The client closed the request.", None, "client_closed_request")
    return collector.result()
