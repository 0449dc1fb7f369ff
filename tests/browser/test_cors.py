"""--cors-origins: a demo page on another origin (docs/examples/cors-demo.html) streams from the server."""

from __future__ import annotations

import functools
import http.server
import tempfile
import threading

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.servers import ROOT, free_port, start_api

EXAMPLES = ROOT / "docs" / "examples"


@pytest.fixture(scope="module")
def page_origin():
    """docs/examples served by a plain static server on another port: another origin."""
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(EXAMPLES))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()


@pytest.fixture(scope="module")
def server(page_origin):
    with tempfile.TemporaryFile("w+") as log:
        proc, base = start_api(["--cors-origins", page_origin], log)
        try:
            yield base
        finally:
            proc.terminate()
            proc.wait(60)


def test_preflight_allows_the_listed_origin_only(server, page_origin):
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(server + "/v1/chat/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})

    ok = preflight(page_origin)
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == page_origin
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in preflight("http://evil.example").headers
    error = httpx.post(server + "/v1/chat/completions", json={"model": "default", "messages": []},
                       headers={"Origin": page_origin})
    assert error.status_code == 400 and error.headers["access-control-allow-origin"] == page_origin  # errors readable


def test_the_demo_page_on_another_origin_streams_a_compare(browser, server, page_origin):
    browser.get(f"{page_origin}/cors-demo.html")
    box = browser.find_element(By.ID, "server")
    box.clear()
    box.send_keys(server)
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 120).until(lambda d: d.find_element(By.ID, "error").text)
    assert browser.find_element(By.ID, "error").text == "done"
    assert browser.find_element(By.ID, "steered").text and browser.find_element(By.ID, "baseline").text


def test_without_the_flag_there_is_no_cors(tmp_path):
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    with TestClient(create_app(Settings(presets_dir=tmp_path))) as c:  # still loading: the headers come first
        r = c.options("/v1/models", headers={"Origin": "http://127.0.0.1:3000", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in r.headers
