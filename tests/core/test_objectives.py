"""Objective deduction and task-group formation, as unit tests on hand-built graphs."""

from __future__ import annotations

from engine.protocol import SamplingParams
from gateway.core.graph import Call, CallState, OutputSlot, SessionGraph, Variable
from gateway.core.objectives import (
    followed_by_latency,
    form_task_group,
    hinted_latency,
    request_criteria,
)
from gateway.core.template import Output, Text


def node(graph: SessionGraph, name: str, inputs: list[Variable], hint=None) -> Call:
    """A call reading `inputs` and producing one variable named after it."""
    out = Variable(f"v-{name}", name, graph.session_id)
    call = Call(f"c-{name}", graph, "m", (Text(name), Output(name)), {}, [], hint=hint)
    call.inputs = {v.name: v for v in inputs}
    call.outputs = [OutputSlot(name, out, SamplingParams())]
    out.producer = call
    for v in inputs:
        v.consumers.append(call)
    return call


def out(call: Call) -> Variable:
    return call.outputs[0].variable


def test_latency_get_marks_the_producer_and_everything_upstream() -> None:
    g = SessionGraph("s", "t")
    a = node(g, "a", [])
    b = node(g, "b", [out(a)])
    unrelated = node(g, "u", [])
    c = node(g, "c", [out(b)])
    changed = request_criteria(out(c), "latency")
    assert {x.call_id for x in changed} == {"c-a", "c-b", "c-c"}
    assert [x.objective for x in (a, b, c)] == ["latency"] * 3
    assert unrelated.objective == "throughput"  # nobody waits on it with latency


def test_throughput_get_marks_nothing_and_values_default_to_throughput() -> None:
    g = SessionGraph("s", "t")
    a = node(g, "a", [])
    assert request_criteria(out(a), "throughput") == []
    assert request_criteria(out(a), None) == []
    assert a.objective == "throughput" and a.priority == 0


def test_fan_in_forms_a_task_group_that_runs_as_prioritised_throughput() -> None:
    g = SessionGraph("s", "t")
    maps = [node(g, f"m{i}", []) for i in range(4)]
    reduce = node(g, "r", [out(m) for m in maps])
    members = form_task_group(reduce)
    assert {m.call_id for m in members} == {m.call_id for m in maps}
    assert len({m.group_id for m in maps}) == 1 and maps[0].group_id == "group-c-r"
    request_criteria(out(reduce), "latency")
    assert reduce.objective == "latency"
    # The group finishes as a whole: batched throughput work, ahead of background work.
    assert all(m.objective == "throughput" and m.priority == 1 for m in maps)


def test_a_producer_upstream_of_another_stays_out_of_the_group() -> None:
    g = SessionGraph("s", "t")
    a = node(g, "a", [])
    b = node(g, "b", [out(a)])
    c = node(g, "c", [out(a)])
    d = node(g, "d", [out(a), out(b), out(c)])  # diamond plus a direct edge from a
    members = form_task_group(d)
    assert {m.call_id for m in members} == {"c-b", "c-c"}
    assert a.group_id is None


def test_no_group_for_one_producer_or_dispatched_calls() -> None:
    g = SessionGraph("s", "t")
    a = node(g, "a", [])
    assert form_task_group(node(g, "b", [out(a)])) == []
    x, y = node(g, "x", []), node(g, "y", [])
    x.state = CallState.RUNNING  # already sent to an engine: its scheduling is fixed
    assert form_task_group(node(g, "z", [out(x), out(y)])) == []


def test_hints_override_deduction_and_latency_hints_mark_upstream() -> None:
    g = SessionGraph("s", "t")
    a = node(g, "a", [])
    b = node(g, "b", [out(a)], hint="latency")
    assert {c.call_id for c in hinted_latency(b)} == {"c-a"}
    assert a.objective == "latency" and b.objective == "latency"
    t = node(g, "t", [], hint="throughput")
    request_criteria(out(t), "latency")
    assert t.objective == "throughput"  # the explicit hint wins


def test_a_follow_up_is_announced_only_when_the_value_releases_latency_work() -> None:
    g = SessionGraph("s", "t")
    maps = [node(g, f"m{i}", []) for i in range(3)]
    reduce = node(g, "r", [out(m) for m in maps])
    bulk = node(g, "b", [out(maps[0])])
    assert not followed_by_latency(maps[0], 0)  # nobody waits with latency yet
    request_criteria(out(reduce), "latency")
    # The reduce still misses the other maps' values: finishing m0 releases nothing.
    assert not followed_by_latency(maps[0], 0)
    out(maps[1]).resolve("x")
    out(maps[2]).resolve("y")
    assert followed_by_latency(maps[0], 0)  # now the reduce goes out right after it
    reduce.state = CallState.QUEUED
    assert not followed_by_latency(maps[0], 0)  # already released (e.g. failed inputs)
    assert bulk.objective == "throughput"


def test_a_latency_call_with_more_outputs_is_its_own_follow_up() -> None:
    g = SessionGraph("s", "t")
    two = node(g, "two", [])
    second = Variable("v-two-2", "two2", g.session_id, producer=two)
    two.outputs.append(OutputSlot("two2", second, SamplingParams()))
    assert not followed_by_latency(two, 0)  # throughput: its next output may wait
    request_criteria(second, "latency")
    assert followed_by_latency(two, 0)
    assert not followed_by_latency(two, 1)  # the last one: only the GET waits on it
