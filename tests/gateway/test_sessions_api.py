"""The semantic-variable HTTP API on a named fake engine: every 400 and 404, tenant
isolation, timeouts, conflicts, failures, expiry, streaming and the OpenAPI spec."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from core.parrot_fakes import CopyFakeEngine
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.core.config import CoreConfig
from gateway.settings import Settings

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:
    keys = tmp_path / "keys"
    keys.write_text("key-a tenant-a\nkey-b tenant-b\n")
    app = create_app(
        Settings(keys_file=str(keys)),
        engines=[CopyFakeEngine()],
        core=CoreConfig(reap_interval_s=0.1),
    )
    async with AsyncTestClient(app) as c:
        c.engine = app.state.services.local[0]
        yield c


async def new_session(c: AsyncTestClient, headers: dict[str, str] = A) -> str:
    r = await c.post("/v1/sessions", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def body(template: str, **extra: Any) -> dict[str, Any]:
    return {"model": "fake", "template": template, **extra}


def assert_error(r: Any, status: int, code: str | None = None, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


BAD_CALLS = [
    (body("x {{input:a"), "invalid_template", "template"),
    (body("x }} {{output:y}}"), "invalid_template", "template"),
    (body("x {{in:a}} {{output:y}}"), "invalid_template", "template"),
    (body("x {{a}} {{output:y}}"), "invalid_template", "template"),
    (body("x {{input:1a}} {{output:y}}"), "invalid_template", "template"),
    (body("no outputs here"), "invalid_template", "template"),
    (body("x {{output:y}} {{output:y}}"), "invalid_template", "template"),
    (
        body("x {{input:y}} {{output:y}}", inputs={"y": {"value": "v"}}),
        "invalid_template",
        "template",
    ),
    (body("x {{output:y}} trailing text"), "invalid_template", "template"),
    (body("{{output:y}}"), "invalid_template", "template"),
    (body("x {{input:a}} {{output:y}}"), "unbound_input", "inputs.a"),
    (body("x {{output:y}}", inputs={"zz": {"value": "v"}}), "invalid_template", "inputs.zz"),
    (body("x {{output:y}}", outputs={"zz": {}}), "invalid_template", "outputs.zz"),
    (
        body("x {{input:a}} {{output:y}}", inputs={"a": {"var": "var-nope"}}),
        "unknown_variable",
        "inputs.a.var",
    ),
    (
        body("x {{input:a}} {{output:y}}", inputs={"a": {"ref": "0.y"}}),
        "invalid_graph",
        "inputs.a.ref",
    ),
    (
        body("x {{output:y}}", outputs={"y": {"temperature": -1}}),
        "invalid_value",
        "outputs.y.temperature",
    ),
    (
        body("x {{input:a}} {{output:y}}", inputs={"a": {"var": "v", "value": "w"}}),
        "invalid_value",
        None,
    ),
    ({"model": "fake"}, "invalid_value", None),
    (
        {
            "model": "fake",
            "template": "x {{output:y}}",
            "messages": [{"role": "user", "content": "x"}],
        },
        "invalid_value",
        None,
    ),
    (body("x {{output:y}}", surprise=1), None, None),
    (
        {"model": "fake", "messages": [{"role": "user", "content": "{{output:y}} hi"}]},
        "invalid_template",
        "messages[0].content",
    ),
]


@pytest.mark.parametrize(("payload", "code", "param"), BAD_CALLS)
async def test_bad_calls_are_400s_naming_the_problem(client, payload, code, param) -> None:
    sid = await new_session(client)
    r = await client.post(f"/v1/sessions/{sid}/calls", json=payload, headers=A)
    assert_error(r, 400, code, param)


async def test_malformed_json_and_unknown_model(client) -> None:
    sid = await new_session(client)
    r = await client.post(f"/v1/sessions/{sid}/calls", content=b"{nope", headers=A)
    assert_error(r, 400, "invalid_json")
    r = await client.post(
        f"/v1/sessions/{sid}/calls", json={**body("x {{output:y}}"), "model": "nope"}, headers=A
    )
    assert_error(r, 404, "model_not_found")
    r = await client.get(f"/v1/sessions/{sid}/variables/v?criteria=fast", headers=A)
    assert_error(r, 400)


async def test_cycles_and_second_producers_are_400s(client) -> None:
    sid = await new_session(client)
    x = (await client.post(f"/v1/sessions/{sid}/variables", json={"name": "x"}, headers=A)).json()[
        "id"
    ]
    y = (await client.post(f"/v1/sessions/{sid}/variables", json={"name": "y"}, headers=A)).json()[
        "id"
    ]
    calls = f"/v1/sessions/{sid}/calls"
    r = await client.post(
        calls,
        json=body("{{input:a}} {{output:b}}", inputs={"a": {"var": x}}, outputs={"b": {"var": x}}),
        headers=A,
    )
    assert_error(r, 400, "cycle")
    r = await client.post(
        calls,
        json=body("{{input:a}} {{output:b}}", inputs={"a": {"var": y}}, outputs={"b": {"var": x}}),
        headers=A,
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        calls,
        json=body("{{input:a}} {{output:b}}", inputs={"a": {"var": x}}, outputs={"b": {"var": y}}),
        headers=A,
    )
    assert_error(r, 400, "cycle")
    r = await client.post(calls, json=body("k {{output:b}}", outputs={"b": {"var": x}}), headers=A)
    assert_error(r, 400, "variable_already_bound")
    graph = {
        "calls": [
            body("{{input:a}} {{output:b}}", inputs={"a": {"ref": "1.b"}}),
            body("{{input:a}} {{output:b}}", inputs={"a": {"ref": "0.b"}}),
        ]
    }
    r = await client.post(f"/v1/sessions/{sid}/graph", json=graph, headers=A)
    assert_error(r, 400, "cycle")
    # Nothing of a rejected request was kept: y is still settable.
    r = await client.put(f"/v1/sessions/{sid}/variables/{y}", json={"value": "v"}, headers=A)
    assert r.status_code == 200, r.text


async def test_unknown_or_foreign_ids_are_404_on_every_route(client) -> None:
    sid = await new_session(client, A)
    vid = (
        await client.post(
            f"/v1/sessions/{sid}/variables", json={"name": "n", "value": "v"}, headers=A
        )
    ).json()["id"]
    call = body("<<{{input:a}}>> {{output:b}}", inputs={"a": {"var": vid}})
    for session, headers in (("sess-nope", A), (sid, B)):
        base = f"/v1/sessions/{session}"
        assert_error(await client.get(base, headers=headers), 404, "session_not_found")
        assert_error(
            await client.post(f"{base}/variables", json={"name": "n"}, headers=headers),
            404,
            "session_not_found",
        )
        assert_error(
            await client.put(f"{base}/variables/{vid}", json={"value": "x"}, headers=headers),
            404,
            "session_not_found",
        )
        assert_error(
            await client.get(f"{base}/variables/{vid}", headers=headers), 404, "session_not_found"
        )
        assert_error(
            await client.get(f"{base}/variables/{vid}/stream", headers=headers),
            404,
            "session_not_found",
        )
        assert_error(
            await client.post(f"{base}/calls", json=call, headers=headers), 404, "session_not_found"
        )
        assert_error(
            await client.post(f"{base}/graph", json={"calls": [call]}, headers=headers),
            404,
            "session_not_found",
        )
        assert_error(await client.delete(base, headers=headers), 404, "session_not_found")
    base = f"/v1/sessions/{sid}"
    for method, path in (
        ("GET", "variables/var-x"),
        ("GET", "variables/var-x/stream"),
        ("PUT", "variables/var-x"),
    ):
        kwargs = {"json": {"value": "v"}} if method == "PUT" else {}
        r = await client.request(method, f"{base}/{path}", headers=A, **kwargs)
        assert_error(r, 404, "variable_not_found")
    assert (await client.get(f"{base}/variables/{vid}", headers=A)).json()["value"] == "v"
    assert_error(await client.get(f"{base}/variables/{vid}"), 401)


async def test_get_timeout_conflicts_and_failures(client) -> None:
    sid = await new_session(client)
    base = f"/v1/sessions/{sid}"
    slot = (await client.post(f"{base}/variables", json={"name": "later"}, headers=A)).json()
    assert slot == {"id": slot["id"], "name": "later", "ready": False, "status": "pending"}
    r = await client.post(
        f"{base}/calls",
        json=body("<<{{input:a}}>> {{output:b}}", inputs={"a": {"var": slot["id"]}}),
        headers=A,
    )
    out = r.json()["outputs"]["b"]
    r = await client.get(f"{base}/variables/{out}?timeout=0.05", headers=A)
    assert r.status_code == 200 and r.json()["ready"] is False
    assert_error(
        await client.put(f"{base}/variables/{out}", json={"value": "x"}, headers=A),
        409,
        "variable_set",
    )
    await client.put(f"{base}/variables/{slot['id']}", json={"value": "go"}, headers=A)
    assert_error(
        await client.put(f"{base}/variables/{slot['id']}", json={"value": "x"}, headers=A),
        409,
        "variable_set",
    )
    r = await client.get(f"{base}/variables/{out}?criteria=latency", headers=A)
    assert r.json() == {"id": out, "name": "b", "ready": True, "status": "ready", "value": "GO"}
    client.engine.fail_on = "BOOM"
    r = await client.post(f"{base}/calls", json=body("BOOM {{output:b}}"), headers=A)
    bad = r.json()["outputs"]["b"]
    r = await client.post(
        f"{base}/calls",
        json=body("<<{{input:a}}>> {{output:c}}", inputs={"a": {"var": bad}}),
        headers=A,
    )
    downstream = r.json()["outputs"]["c"]
    for vid in (bad, downstream):
        r = await client.get(f"{base}/variables/{vid}", headers=A)
        assert_error(r, 400, "invalid_request")
        assert "fake failure on 'BOOM'" in r.json()["error"]["message"]
    r = await client.get(f"{base}/variables/{bad}/stream", headers=A)
    assert_error(r, 400, "invalid_request")


async def test_stream_sends_the_text_then_the_value(client) -> None:
    sid = await new_session(client)
    r = await client.post(
        f"/v1/sessions/{sid}/calls",
        json=body("<<{{input:a}}>> {{output:b}}", inputs={"a": {"value": "s"}}),
        headers=A,
    )
    out = r.json()["outputs"]["b"]
    r = await client.get(f"/v1/sessions/{sid}/variables/{out}/stream?criteria=latency", headers=A)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    assert '"delta":"S"' in frames[0] and '"value":"S"' in frames[-2]


async def test_idle_sessions_expire(client) -> None:
    r = await client.post("/v1/sessions", json={"idle_ttl_s": 0.3}, headers=A)
    sid = r.json()["id"]
    assert r.json()["idle_ttl_s"] == 0.3
    assert (await client.get(f"/v1/sessions/{sid}", headers=A)).status_code == 200
    # The reaper looks every 0.1 s; on a loaded machine its turn may come late, so wait for
    # it (bounded) rather than for a fixed time.
    sessions = client.app.state.services.core.sessions
    for _ in range(50):
        await asyncio.sleep(0.1)
        if sessions.find(sid) is None:
            break
    assert sessions.find(sid) is None  # reaped, engines freed
    assert_error(await client.get(f"/v1/sessions/{sid}", headers=A), 404, "session_not_found")


async def test_openapi_documents_the_semantic_api(client) -> None:
    spec = (await client.get("/docs/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/v1/sessions",
        "/v1/sessions/{session_id}/calls",
        "/v1/sessions/{session_id}/graph",
        "/v1/sessions/{session_id}/variables/{variable_id}",
        "/v1/sessions/{session_id}/variables/{variable_id}/stream",
    ):
        assert path in paths, sorted(paths)
    assert "CallRequest" in str(spec["components"])
