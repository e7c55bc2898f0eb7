"""API keys -> tenants, enforced on every /v1 and /admin route; ops routes stay open."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gateway_support import Live, assert_openai_error, serve, settings_for_tests

from gateway.app import create_app
from gateway.auth import DEFAULT_TENANT, ApiKeys, read_keys_file
from gateway.errors import ApiError

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("# team keys\nsk-team-b team-b\n\nsk-plain\n")
    settings = settings_for_tests(api_keys=("sk-one",), keys_file=str(keys))
    live = serve(create_app(settings))
    yield live
    live.stop()


def test_keys_file_format(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("a tenant-a  # comment\nb\n")
    assert read_keys_file(str(path)) == [("a", "tenant-a"), ("b", DEFAULT_TENANT)]
    path.write_text("a b c\n")
    with pytest.raises(ValueError, match="KEY"):
        read_keys_file(str(path))


def test_tenants() -> None:
    keys = ApiKeys([("k1", "alpha"), ("k2", "beta")])
    assert keys.tenant("Bearer k1") == "alpha"
    assert keys.tenant("bearer k2") == "beta"
    for header in (None, "", "Bearer", "Basic k1", "Bearer nope"):
        with pytest.raises(ApiError) as info:
            keys.tenant(header)
        assert info.value.status == 401
    assert ApiKeys().tenant(None) == DEFAULT_TENANT


def test_missing_and_wrong_keys_are_401(keyed: Live) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-one"}):
            response = http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert_openai_error(response, 401, "invalid_api_key")
            assert_openai_error(http.get("/v1/models", headers=headers), 401, "invalid_api_key")
            assert_openai_error(http.get("/admin/engines", headers=headers), 401, "invalid_api_key")


def test_ops_routes_need_no_key(keyed: Live) -> None:
    with httpx.Client(base_url=keyed.url) as http:
        assert http.get("/health").status_code == 200
        assert http.get("/ready").status_code == 200
        assert http.get("/metrics").status_code == 200


def test_valid_keys_work_with_the_sdk(keyed: Live) -> None:
    for key in ("sk-one", "sk-team-b", "sk-plain"):
        client = openai.OpenAI(base_url=keyed.base_url, api_key=key, max_retries=0)
        assert client.chat.completions.create(**CHAT).choices[0].message.content
    bad = openai.OpenAI(base_url=keyed.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_rate_limit_per_tenant() -> None:
    live = serve(create_app(settings_for_tests(rate_limit_per_minute=2)))
    try:
        with httpx.Client(base_url=live.url) as http:
            statuses = [http.post("/v1/chat/completions", json=CHAT).status_code for _ in range(2)]
            assert statuses == [200, 200]
            response = http.post("/v1/chat/completions", json=CHAT)
            assert_openai_error(response, 429, "rate_limit_exceeded")
            assert int(response.headers["retry-after"]) <= 60
    finally:
        live.stop()
