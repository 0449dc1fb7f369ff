"""A client that goes away stops its generation within a step (real uvicorn, tiny model).

The model is the tiny GPT-2: the engine runs it through its Hugging Face
forward, so a forward pre-hook can slow every decoding step down and count it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx
import pytest

from api.app import create_app
from api.settings import Settings
from tests.api.support import chat_body, tiny_steered_model
from tests.servers import served

MAX_TOKENS = 200
STEP_S = 0.02


@pytest.fixture
def server(tiny_gpt2, tiny_tokenizer):
    forwards = []

    def slow(module, args, kwargs):  # a decoding step takes STEP_S: generation outlives the client
        forwards.append(time.monotonic())
        time.sleep(STEP_S)

    def no_eos(module, args, output):  # never end early: only a cancel can stop it
        output[..., tiny_tokenizer.eos_token_id] = -1e9
        return output

    sm = tiny_steered_model(tiny_gpt2, tiny_tokenizer)
    tiny_gpt2.register_forward_pre_hook(slow, with_kwargs=True)
    tiny_gpt2.lm_head.register_forward_hook(no_eos)
    app = create_app(Settings(presets_dir=None), sm)
    stack = contextlib.ExitStack()
    url, _ = stack.enter_context(served(app))
    state = app.state.server
    handles = []
    submit = state.engine.submit

    def recording_submit(requests, loop=None):
        handle = submit(requests, loop=loop)
        cancel = handle.cancel

        def recording_cancel():
            handle.cancelled_at = time.monotonic()
            cancel()

        handle.cancel = recording_cancel
        handles.append(handle)
        return handle

    state.engine.submit = recording_submit
    with stack:
        yield url, state, handles, forwards


def _wait_idle(state, timeout=5.0) -> float:
    start = time.monotonic()
    while state.gate.in_flight and time.monotonic() - start < timeout:
        time.sleep(0.01)
    assert state.gate.in_flight == 0
    return time.monotonic()


def test_streaming_client_disconnect_cancels_generation(server):
    url, state, handles, forwards = server
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, max_tokens=MAX_TOKENS)) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data:")
                if seen >= 4:
                    break
        gone = time.monotonic()
    _wait_idle(state)
    (handle,) = handles
    assert handle.cancelled.is_set()
    assert handle.cancelled_at - gone < 3.0  # the server noticed the disconnect
    # At most the step already under way when cancel() came: no new step starts after it.
    assert len([t for t in forwards if t > handle.cancelled_at]) <= 1
    assert 3 <= len(forwards) < MAX_TOKENS // 2


def _wait(predicate, timeout=20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_non_streaming_client_disconnect_cancels_generation(server):
    url, state, handles, forwards = server
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(chat_body(max_tokens=MAX_TOKENS)).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert _wait(lambda: len(forwards) >= 3)  # generating
    sock.close()
    gone = time.monotonic()
    assert _wait(lambda: handles and handles[0].cancelled.is_set(), timeout=5)
    (handle,) = handles
    assert handle.cancelled_at - gone < 3.0  # the watcher polls every 0.2 s
    _wait_idle(state)
    assert len([t for t in forwards if t > handle.cancelled_at]) <= 1
    assert 3 <= len(forwards) < MAX_TOKENS // 2


def test_event_loop_stays_free_while_generating(server):
    url, state, handles, forwards = server
    with httpx.Client(base_url=url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True, max_tokens=60)) as r:
            next(r.iter_lines())
            start = time.monotonic()
            assert client.get("/health").status_code == 200  # answered while the worker decodes
            assert time.monotonic() - start < 0.5
