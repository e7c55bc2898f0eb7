"""Ops endpoints: health, readiness, Prometheus metrics, OpenAPI docs, engine admin."""

from __future__ import annotations

import httpx
from gateway_support import DownEngine, Live, assert_openai_error, serve, settings_for_tests
from prometheus_client import REGISTRY

from gateway.app import create_app


def test_health_and_ready(echo_gateway: Live) -> None:
    assert httpx.get(f"{echo_gateway.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{echo_gateway.url}/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "engines_up": 1,
        "engines_total": 1,
        "state_store": True,
    }


def test_not_ready_without_a_healthy_engine() -> None:
    live = serve(create_app(settings_for_tests(), engines=[DownEngine()]))
    try:
        response = httpx.get(f"{live.url}/ready")
        assert response.status_code == 503
        assert response.json()["engines_up"] == 0
    finally:
        live.stop()


def test_metrics(echo_gateway: Live) -> None:
    body = {"model": "echo", "messages": [{"role": "user", "content": "count me"}]}
    with httpx.Client(base_url=echo_gateway.url) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        http.post("/v1/chat/completions", json={"model": "nope", "messages": body["messages"]})
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        'parrot_requests_total{route="chat.completions",status="200"}',
        'parrot_requests_total{route="chat.completions",status="404"}',
        'parrot_prompt_tokens_total{model="echo"}',
        'parrot_completion_tokens_total{model="echo"}',
        "parrot_time_to_first_token_seconds_bucket",
        "parrot_request_latency_seconds_count",
        "parrot_requests_in_flight",
        'parrot_engine_up{engine="echo-0"} 1.0',
        'parrot_engine_gateway_inflight_requests{engine="echo-0"}',
    ):
        assert name in text, name
    # Each app has its own registry: nothing leaks into prometheus_client's global one.
    assert REGISTRY.get_sample_value("parrot_requests_total") is None


def test_openapi_docs(echo_gateway: Live) -> None:
    schema = httpx.get(f"{echo_gateway.url}/docs/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ChatCompletionRequest")
    assert "ChatCompletion" in schema["components"]["schemas"]
    assert "/v1/completions" in schema["paths"] and "/v1/models" in schema["paths"]
    assert httpx.get(f"{echo_gateway.url}/docs").status_code == 200


def test_admin_lists_and_rejects_bad_registrations(echo_gateway: Live) -> None:
    with httpx.Client(base_url=echo_gateway.url) as http:
        [engine] = http.get("/admin/engines").json()
        assert engine["engine_id"] == "echo-0" and engine["healthy"] is True
        response = http.post("/admin/engines", json={"url": "ftp://x"})
        assert_openai_error(response, 400, None, "url")
        response = http.post("/admin/engines", json={})
        assert_openai_error(response, 400, "missing_required_parameter", "url")
