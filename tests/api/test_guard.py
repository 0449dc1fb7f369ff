"""api.guard: the Host header on loopback connections, API keys, and the body-size limit."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings, settings_from
from api.guard import host_name
from tests.api.support import chat_body, tiny_steered_model


def error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["message"] and set(body) == {"message", "type", "param", "code"}
    return body


@pytest.fixture
def app_with(tiny_llama, tiny_tokenizer):
    def make(**settings):
        return create_app(Settings(presets_dir=None, default_max_tokens=4, **settings),
                          tiny_steered_model(tiny_llama, tiny_tokenizer))
    return make


@pytest.mark.parametrize("header,name", [("localhost:8000", "localhost"), ("127.0.0.1", "127.0.0.1"),
                                          ("[::1]:8000", "[::1]"), ("Evil.Example:80", "evil.example")])
def test_host_name_drops_the_port(header, name):
    assert host_name(header) == name


def test_loopback_connections_serve_loopback_names_only(app_with):
    with TestClient(app_with(), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/ready").status_code == 200
        assert c.get("/ready", headers={"Host": "localhost:8000"}).status_code == 200
        rebound = c.post("/v1/chat/completions", json=chat_body(), headers={"Host": "attacker.example:8000"})
        error(rebound, 400, "invalid_host")
    with TestClient(app_with(allowed_hosts=("steer.lan",)), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/ready", headers={"Host": "steer.lan:8000"}).status_code == 200
    with TestClient(app_with(), base_url="http://10.1.2.3:8000") as c:  # not loopback: no list, no check
        assert c.get("/ready", headers={"Host": "anything.example"}).status_code == 200


def test_api_keys_close_everything_but_health(app_with):
    with TestClient(app_with(api_keys=("key-one", "key-two"))) as c:
        assert c.get("/health").status_code == 200
        error(c.get("/v1/models"), 401, "invalid_api_key")
        wrong = c.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer nope"})
        assert "Incorrect API key" in error(wrong, 401, "invalid_api_key")["message"]
        error(c.get("/ready", headers={"Authorization": "Basic key-one"}), 401, "invalid_api_key")
        ok = c.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer key-two"})
        assert ok.status_code == 200
    with TestClient(app_with()) as c:  # no keys: open, whatever the client sends
        assert c.get("/v1/models", headers={"Authorization": "Bearer anything"}).status_code == 200


def test_bodies_over_the_limit_are_413(app_with):
    with TestClient(app_with(max_body_bytes=2000)) as c:
        big = chat_body(content="x" * 3000)
        error(c.post("/v1/chat/completions", json=big), 413, "request_too_large")

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"model": "x", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        streamed = c.post("/v1/chat/completions", content=chunks(), headers={"Content-Type": "application/json"})
        error(streamed, 413, "request_too_large")
        assert c.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_settings_read_lists_from_flags_and_environment():
    s = settings_from({"api_keys": ["a"]}, {"STEERING_API_KEYS": "x, y", "STEERING_ALLOWED_HOSTS": "h1,h2",
                                            "STEERING_MAX_BODY_BYTES": "1000", "STEERING_DRAIN_TIMEOUT": "7"})
    assert s.api_keys == ("a",) and s.allowed_hosts == ("h1", "h2") and s.max_body_bytes == 1000
    assert s.drain_timeout == 7
    assert settings_from({}, {"STEERING_API_KEYS": "x, y"}).api_keys == ("x", "y")
