"""The scheduler end to end over two named fake engines that record where work went."""

from __future__ import annotations

import asyncio

import msgspec
from core.parrot_fakes import CopyFakeEngine

from gateway.protocol.semantic import CallRequest

TENANT = "t"
SYSTEM = "You are a meticulous assistant who answers in one short sentence. " * 2


def call(template: str, **inputs) -> CallRequest:
    bindings = {k: v if isinstance(v, dict) else {"value": v} for k, v in inputs.items()}
    return msgspec.convert({"model": "fake", "template": template, "inputs": bindings}, CallRequest)


def engines() -> list[CopyFakeEngine]:
    return [CopyFakeEngine("e0"), CopyFakeEngine("e1")]


async def test_a_get_right_after_submission_sets_the_objective_before_dispatch(services):
    fakes = engines()
    # A roomy window: the test must not depend on how fast this machine runs the submits.
    async with services(fakes, admission_quiet_s=0.1, admission_max_hold_s=0.5) as s:
        core = s.core
        sid = (await core.create_session(TENANT)).session_id
        (a,) = await core.submit(sid, TENANT, [call("<<{{input:x}}>> {{output:y}}", x="a")], False)
        (b,) = await core.submit(sid, TENANT, [call("<<{{input:x}}>> {{output:y}}", x="b")], False)
        view = await core.get_variable(sid, TENANT, a.outputs["y"], "latency", 5)
        assert view.value == "A"
        await core.get_variable(sid, TENANT, b.outputs["y"], None, 5)
        seen = {g.text: g for f in fakes for g in f.generates()}
        assert seen["<<a>> "].objective == "latency"
        assert seen["<<b>> "].objective == "throughput"  # nobody asked for it with latency
        assert seen["<<a>> "].app_id == f"{TENANT}/{sid}"


async def two_links(core, sid):
    """a, then b reading a's output."""
    (a,) = await core.submit(sid, TENANT, [call("<<{{input:x}}>> {{output:y}}", x="a")], False)
    (b,) = await core.submit(
        sid, TENANT, [call("b<<{{input:x}}>> {{output:y}}", x={"var": a.outputs["y"]})], False
    )
    return a, b


async def test_each_link_of_a_latency_chain_announces_its_follow_up(services):
    fake = CopyFakeEngine("e0")
    async with services([fake], admission_quiet_s=0.1, admission_max_hold_s=0.5) as s:
        core = s.core
        sid = (await core.create_session(TENANT)).session_id
        _, b = await two_links(core, sid)
        # Two outputs: the second one's generate follows the first at once.
        (c,) = await core.submit(
            sid,
            TENANT,
            [call("c<<{{input:x}}>> {{output:y}} <<z>> {{output:z}}", x={"var": b.outputs["y"]})],
            False,
        )
        (bg,) = await core.submit(sid, TENANT, [call("<<{{input:x}}>> {{output:y}}", x="q")], False)
        view = await core.get_variable(sid, TENANT, c.outputs["z"], "latency", 5)
        assert view.value == "Z"
        await core.get_variable(sid, TENANT, bg.outputs["y"], None, 5)
    seen = {g.text: g for g in fake.generates()}
    assert seen["<<a>> "].followup and seen["b<<A>> "].followup  # b, c wait on them
    assert seen["b<<A>> "].objective == "latency"
    assert seen["c<<A>> "].followup  # the call's own second output comes next
    assert not seen["c<<A>> A <<z>> "].followup  # the last output: only the GET waits on it
    assert not seen["<<q>> "].followup  # throughput, and nothing waits on it


async def test_a_promoted_link_announces_the_follow_up_the_get_made_latency_critical(services):
    fake = CopyFakeEngine("e0")
    fake.delay_s = 0.3
    async with services([fake], admission_quiet_s=0.0, admission_max_hold_s=0.0) as s:
        core = s.core
        sid = (await core.create_session(TENANT)).session_id
        a, b = await two_links(core, sid)
        await fake.started.wait()  # a went out as throughput: nobody was waiting yet
        view = await core.get_variable(sid, TENANT, b.outputs["y"], "latency", 5)
        assert view.value == "A"
    seen = {g.text: g for g in fake.generates()}
    assert seen["<<a>> "].objective == "throughput" and not seen["<<a>> "].followup
    (promoted,) = [r.scheduling for r in fake.rescheduled if r.context_id == f"call-{a.id}"]
    assert promoted.objective == "latency" and promoted.followup  # b goes out right after
    assert seen["b<<A>> "].objective == "latency" and not seen["b<<A>> "].followup


async def test_a_get_after_dispatch_promotes_the_call_and_the_prefix_fill_it_waits_on(services):
    fake = CopyFakeEngine("e0")
    fake.fill_delay_s = 0.3  # the shared prefix is still filling when the GETs arrive
    fake.delay_s = 0.3
    # No admission window: both calls are sent before any GET (a slow or busy client).
    async with services([fake], admission_quiet_s=0.0, admission_max_hold_s=0.0) as s:
        core = s.core
        sid = (await core.create_session(TENANT)).session_id
        template = SYSTEM + "<<{{input:x}}>> {{output:y}}"
        (a,) = await core.submit(sid, TENANT, [call(template, x="a")], False)
        (b,) = await core.submit(sid, TENANT, [call(template, x="b")], False)
        while not any(seen.kind == "fill" for seen in fake.seen):
            await asyncio.sleep(0.01)
        view = await core.get_variable(sid, TENANT, a.outputs["y"], "latency", 5)
        assert view.value == "A"
        await core.get_variable(sid, TENANT, b.outputs["y"], None, 5)
    (fill,) = [seen for seen in fake.seen if seen.kind == "fill"]
    assert fill.objective == "throughput"  # sent before anyone asked for latency
    promoted = {r.context_id: r.scheduling for r in fake.rescheduled}
    # The prefix fill that the call waits on, then the call's own generate.
    assert promoted.keys() == {fill.context_id, f"call-{a.id}"}
    assert {sch.objective for sch in promoted.values()} == {"latency"}
    seen = {g.text: g for g in fake.generates()}
    assert seen[SYSTEM + "<<a>> "].objective == "latency"  # sent after the GET: as promoted
    assert seen[SYSTEM + "<<b>> "].objective == "throughput"


async def test_a_task_group_is_tagged_as_one_and_spread_over_the_engines(services):
    fakes = engines()
    for fake in fakes:
        fake.delay_s = 0.05  # the maps run together, so their placement sees each other
    async with services(fakes) as s:
        core = s.core
        sid = (await core.create_session(TENANT)).session_id
        requests = [
            call(f"map{i} <<{{{{input:x}}}}>> {{{{output:y}}}}", x=f"c{i}") for i in range(6)
        ]
        template = "reduce <<" + "".join(f"{{{{input:y{i}}}}}" for i in range(6)) + ">> "
        requests.append(
            call(template + "{{output:r}}", **{f"y{i}": {"ref": f"{i}.y"} for i in range(6)})
        )
        created = await core.submit(sid, TENANT, requests, True)
        view = await core.get_variable(sid, TENANT, created[-1].outputs["r"], "latency", 5)
        assert view.value == "C0C1C2C3C4C5"
        maps = {g.text[:4]: (f.info.engine_id, g) for f in fakes for g in f.generates()}
        groups = {maps[f"map{i}"][1].group_id for i in range(6)}
        assert len(groups) == 1 and None not in groups  # the engines see one task group
        assert {maps[f"map{i}"][0] for i in range(6)} == {"e0", "e1"}  # by load, not pinned


async def test_latency_and_throughput_apps_use_different_engines(services):
    fakes = engines()
    for fake in fakes:
        fake.delay_s = 0.2  # keep the first call running while the second is placed
    async with services(fakes) as s:
        core = s.core
        lat = (await core.create_session(TENANT)).session_id
        bulk = (await core.create_session(TENANT)).session_id
        (a,) = await core.submit(
            lat, TENANT, [call("chat <<{{input:x}}>> {{output:y}}", x="hi")], False
        )
        getter = asyncio.create_task(core.get_variable(lat, TENANT, a.outputs["y"], "latency", 5))
        await asyncio.sleep(0.05)
        (b,) = await core.submit(
            bulk, TENANT, [call("bulk <<{{input:x}}>> {{output:y}}", x="yo")], False
        )
        await core.get_variable(bulk, TENANT, b.outputs["y"], "throughput", 5)
        await getter
        where = {g.text[:4]: (f.info.engine_id, g.objective) for f in fakes for g in f.generates()}
        assert where["chat"][1] == "latency" and where["bulk"][1] == "throughput"
        assert where["chat"][0] != where["bulk"][0]


async def test_calls_sharing_a_prefix_go_where_it_lives(services):
    fakes = engines()
    async with services(fakes) as s:
        core = s.core
        for i in range(3):
            sid = (await core.create_session(TENANT)).session_id
            (c,) = await core.submit(
                sid, TENANT, [call(SYSTEM + "Q <<{{input:x}}>> {{output:y}}", x=f"q{i}")], False
            )
            await core.get_variable(sid, TENANT, c.outputs["y"], "latency", 5)
        fills = [(f.info.engine_id, g) for f in fakes for g in f.seen if g.kind == "fill"]
        assert len(fills) == 1  # the system prompt was filled once, on one engine
        engine_id, fill = fills[0]
        generates = [(f.info.engine_id, g) for f in fakes for g in f.generates()]
        assert all(e == engine_id and g.parent == fill.context_id for e, g in generates)
