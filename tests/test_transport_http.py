"""transport/http.py: the one /healthz, /metrics and token helper for every websocket
server (the chain server and the remote stage host)."""

from __future__ import annotations

import json
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request

from transport.http import http_endpoints, request_token, response, token_matches


def _req(path: str, **headers: str) -> Request:
    return Request(path, Headers(list(headers.items())))


def _endpoints(token: str | None, healthy: bool = True, fallback: Any = None) -> Any:
    calls: list[str] = []

    def metrics() -> str:
        calls.append("metrics")
        return "chains_items_total 3\n"

    def health() -> dict[str, Any]:
        return {"status": "ok" if healthy else "unhealthy", "sessions": 2}

    return http_endpoints(metrics, health, token, fallback=fallback), calls


def test_healthz_is_open_and_says_unhealthy_with_503() -> None:
    pr, _ = _endpoints("s3cret")
    r = pr(None, _req("/healthz"))
    assert r.status_code == 200 and json.loads(r.body) == {"status": "ok", "sessions": 2}
    pr, _ = _endpoints("s3cret", healthy=False)
    assert pr(None, _req("/healthz")).status_code == 503


def test_metrics_need_the_token_when_one_is_set() -> None:
    pr, calls = _endpoints("s3cret")
    assert pr(None, _req("/metrics")).status_code == 401
    assert pr(None, _req("/metrics?token=wrong")).status_code == 401
    assert pr(None, _req("/metrics", Authorization="Bearer wrong")).status_code == 401
    assert calls == []  # nothing computed for a refused request
    ok = pr(None, _req("/metrics", Authorization="Bearer s3cret"))
    assert ok.status_code == 200 and ok.body == b"chains_items_total 3\n"
    assert ok.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert pr(None, _req("/metrics?token=s3cret")).status_code == 200


def test_metrics_are_open_without_a_token_and_bytes_are_served_as_is() -> None:
    pr = http_endpoints(lambda: b"x 1\n", lambda: {"status": "ok"}, None)
    r = pr(None, _req("/metrics"))
    assert r.status_code == 200 and r.body == b"x 1\n"


def test_websocket_upgrades_pass_through_and_other_paths_fall_back() -> None:
    pr, _ = _endpoints(None, fallback=lambda path: response(200, path.encode(), "text/plain"))
    assert pr(None, _req("/", Upgrade="websocket")) is None
    assert pr(None, _req("/app.js?v=2")).body == b"/app.js"
    pr, _ = _endpoints(None)
    assert pr(None, _req("/nothing")).status_code == 404


def test_token_helpers() -> None:
    assert request_token(_req("/x", Authorization="Bearer  abc ")) == "abc"
    assert request_token(_req("/x?token=q")) == "q"
    assert request_token(_req("/x")) is None and request_token(None) is None
    assert token_matches(None, None) and token_matches("a", None)
    assert not token_matches(None, "a") and not token_matches("b", "a") and token_matches("a", "a")
