"""Graph shapes run server-side and values arrive right: chain, map-reduce, diamond,
multi-output templates, graph requests, chat form, inputs set later, failure propagation."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from core.parrot_fakes import CopyFakeEngine

from gateway.core.errors import CallFailed
from gateway.protocol.semantic import CallRequest

TENANT = "t1"


def call(template: str, **inputs: Any) -> CallRequest:
    bindings = {k: v if isinstance(v, dict) else {"value": v} for k, v in inputs.items()}
    return msgspec.convert({"model": "fake", "template": template, "inputs": bindings}, CallRequest)


def var(vid: str) -> dict[str, str]:
    return {"var": vid}


async def value(core, sid: str, vid: str, criteria: str | None = "latency") -> str | None:
    view = await core.get_variable(sid, TENANT, vid, criteria, 5.0)
    assert view.ready, view
    return view.value


@pytest.fixture
async def core(services):
    engine = CopyFakeEngine()
    async with services([engine]) as s:
        s.core.engine = engine
        yield s.core


async def session(core) -> str:
    return (await core.create_session(TENANT)).session_id


async def test_chain_runs_server_side(core) -> None:
    sid = await session(core)
    (first,) = await core.submit(
        sid, TENANT, [call("A <<{{input:x}}>> {{output:y}}", x="ab")], False
    )
    (second,) = await core.submit(
        sid, TENANT, [call("B <<{{input:y}}-c>> {{output:z}}", y=var(first.outputs["y"]))], False
    )
    assert await value(core, sid, second.outputs["z"]) == "AB-C"
    assert await value(core, sid, first.outputs["y"]) == "AB"


async def test_map_reduce_fan_out_fan_in(core) -> None:
    sid = await session(core)
    doc = await core.create_variable(sid, TENANT, "doc", "part")
    maps = []
    for i in range(4):
        (created,) = await core.submit(
            sid,
            TENANT,
            [call(f"map{i} <<{{{{input:d}}}}{i}>> {{{{output:s}}}}", d=var(doc.id))],
            False,
        )
        maps.append(created.outputs["s"])
    template = "reduce <<" + "+".join(f"{{{{input:s{i}}}}}" for i in range(4)) + ">> {{output:r}}"
    (reduce,) = await core.submit(
        sid, TENANT, [call(template, **{f"s{i}": var(v) for i, v in enumerate(maps)})], False
    )
    assert await value(core, sid, reduce.outputs["r"]) == "PART0+PART1+PART2+PART3"
    generates = core.engine.generates()
    groups = {s.group_id for s in generates if s.text.startswith("map")}
    assert len(groups) == 1 and None not in groups  # the map stage ran as one task group
    assert all(s.objective == "throughput" for s in generates if s.text.startswith("map"))


async def test_diamond(core) -> None:
    sid = await session(core)
    (top,) = await core.submit(
        sid, TENANT, [call("top <<{{input:x}}>> {{output:a}}", x="q")], False
    )
    a = var(top.outputs["a"])
    (left,) = await core.submit(sid, TENANT, [call("L <<{{input:a}}l>> {{output:b}}", a=a)], False)
    (right,) = await core.submit(sid, TENANT, [call("R <<{{input:a}}r>> {{output:c}}", a=a)], False)
    (bottom,) = await core.submit(
        sid,
        TENANT,
        [
            call(
                "J <<{{input:b}}|{{input:c}}>> {{output:d}}",
                b=var(left.outputs["b"]),
                c=var(right.outputs["c"]),
            )
        ],
        False,
    )
    assert await value(core, sid, bottom.outputs["d"]) == "QL|QR"


async def test_multi_output_template_continues_one_context(core) -> None:
    sid = await session(core)
    (created,) = await core.submit(
        sid,
        TENANT,
        [call("<<{{input:x}}>> first {{output:a}} then <<{{output:b}}", x="go")],
        False,
    )
    a = await value(core, sid, created.outputs["a"])
    b = await value(core, sid, created.outputs["b"])
    assert a == "GO"
    assert b == "ok"  # no closed '<<..>>' after the last '<<': the fake's default
    second = core.engine.generates()[-1]
    assert second.parent is None and "first GO then <<" in second.text


async def test_graph_request_with_refs(core) -> None:
    sid = await session(core)
    requests = [
        call("one <<{{input:x}}>> {{output:y}}", x="a"),
        call("two <<{{input:y}}b>> {{output:z}}", y={"ref": "0.y"}),
    ]
    created = await core.submit(sid, TENANT, requests, True)
    assert await value(core, sid, created[1].outputs["z"]) == "AB"


async def test_input_set_later_wakes_the_call(core) -> None:
    sid = await session(core)
    slot = await core.create_variable(sid, TENANT, "later", None)
    (created,) = await core.submit(
        sid, TENANT, [call("<<{{input:v}}>> {{output:o}}", v=var(slot.id))], False
    )
    pending = await core.get_variable(sid, TENANT, created.outputs["o"], None, 0.05)
    assert not pending.ready
    await core.set_variable(sid, TENANT, slot.id, "now")
    assert await value(core, sid, created.outputs["o"]) == "NOW"


async def test_chat_form_renders_with_the_chat_template(core) -> None:
    sid = await session(core)
    request = msgspec.convert(
        {
            "model": "fake",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "say <<{{input:w}}>>"},
            ],
            "inputs": {"w": {"value": "hi"}},
            "outputs": {"reply": {"max_tokens": 8}},
        },
        CallRequest,
    )
    (created,) = await core.submit(sid, TENANT, [request], False)
    assert await value(core, sid, created.outputs["reply"]) == "HI"
    assert core.engine.generates()[-1].text == "<system>be brief\n<user>say <<hi>>\n<assistant>"


async def test_failure_propagates_downstream_and_session_stays_usable(core) -> None:
    sid = await session(core)
    core.engine.fail_on = "BOOM"
    (bad,) = await core.submit(
        sid, TENANT, [call("BOOM <<{{input:x}}>> {{output:y}}", x="a")], False
    )
    (after,) = await core.submit(
        sid, TENANT, [call("<<{{input:y}}>> {{output:z}}", y=var(bad.outputs["y"]))], False
    )
    (last,) = await core.submit(
        sid, TENANT, [call("<<{{input:z}}>> {{output:w}}", z=var(after.outputs["z"]))], False
    )
    for vid in (bad.outputs["y"], after.outputs["z"], last.outputs["w"]):
        with pytest.raises(CallFailed) as info:
            await core.get_variable(sid, TENANT, vid, "latency", 5.0)
        assert info.value.status == 400 and "fake failure on 'BOOM'" in info.value.message
    (fine,) = await core.submit(sid, TENANT, [call("<<{{input:x}}>> {{output:y}}", x="ok")], False)
    assert await value(core, sid, fine.outputs["y"]) == "OK"


async def test_many_concurrent_sessions(core) -> None:
    async def app(i: int) -> str | None:
        sid = await session(core)
        (c,) = await core.submit(
            sid, TENANT, [call("<<{{input:x}}>> {{output:y}}", x=f"s{i}")], False
        )
        return await value(core, sid, c.outputs["y"])

    results = await asyncio.gather(*(app(i) for i in range(20)))
    assert results == [f"S{i}" for i in range(20)]
