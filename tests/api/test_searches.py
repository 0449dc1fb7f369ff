"""The concept-search bound (api/searches.py): refusals and the Retry-After they give."""

from __future__ import annotations

import time

import pytest
from starlette.requests import Request

from api.searches import INITIAL_SEARCH_S, SearchSlots, client_of


def test_refusal_in_total_and_per_client():
    slots = SearchSlots(total=2, per_client=1)
    assert slots.refusal("a") is None
    ticket = slots.take("a")
    assert "this client" in slots.refusal("a") and slots.refusal("b") is None
    slots.take("b")
    assert "2 concept searches are running" in slots.refusal("c")
    slots.give(ticket)
    assert slots.refusal("a") is None and len(slots) == 1


def test_retry_after_counts_down_from_the_mean_search():
    slots = SearchSlots()
    now = time.monotonic()
    slots.running[1] = ("a", now - 3.0)
    slots.running[2] = ("b", now - 1.0)
    assert slots.retry_after(now) == pytest.approx(INITIAL_SEARCH_S - 3.0)  # the earliest to end
    slots.running[1] = ("a", now - 60.0)  # overdue: still at least a second
    assert slots.retry_after(now) == 1


def test_finished_searches_set_the_mean():
    slots = SearchSlots()
    ticket = slots.take("a")
    slots.running[ticket] = ("a", time.monotonic() - 4.0)
    slots.give(ticket)
    assert slots.mean_s == pytest.approx(4.0, abs=0.1) and slots.finished == 1


def _request(headers: dict[str, str], host: str = "10.0.0.7") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "headers": raw, "client": (host, 5000)})


def test_a_client_is_its_key_on_a_keyed_server_else_its_address():
    k1, k1_elsewhere = _request({"Authorization": "Bearer k1"}), _request({"Authorization": "Bearer k1"}, "10.0.0.8")
    assert client_of(k1, keyed=True) == client_of(k1_elsewhere, keyed=True)
    assert client_of(k1, keyed=True) != client_of(_request({"Authorization": "Bearer k2"}), keyed=True)
    assert "k1" not in client_of(k1, keyed=True)
    # Without keys a token proves nothing: one address is one client whatever it sends.
    assert client_of(k1, keyed=False) == client_of(_request({"Authorization": "Bearer k2"}), keyed=False) == "addr:10.0.0.7"
    assert client_of(k1, keyed=False) != client_of(k1_elsewhere, keyed=False)
