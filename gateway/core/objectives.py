"""Objective deduction on the call graph: which calls are latency-critical, which form groups.

- A GET with `criteria=latency` marks the producer of the value and, transitively, every
  call upstream of it (`latency_goal`): the application waits on all of them.
- Calls whose outputs fan in to one consumer form a task group (the map stage of a
  map-reduce). The consumer can only start when the whole group is done, so the group's
  objective is its completion time: it runs as throughput work, batched together, with a
  higher priority when a latency goal sits downstream of it.
- Everything else is throughput work; an explicit per-call hint overrides both.

Only calls not yet dispatched can change: an engine request keeps the scheduling it was
sent with.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.protocol import Objective
from gateway.core.graph import Call, CallState, Variable

_UNDISPATCHED = (CallState.WAITING, CallState.QUEUED)


def _mark(variables: Iterable[Variable]) -> list[Call]:
    changed: list[Call] = []
    stack = list(variables)
    while stack:
        call = stack.pop().producer
        # A marked call had its whole upstream marked with it, so the walk can stop there.
        if call is None or call.latency_goal:
            continue
        call.latency_goal = True
        changed.append(call)
        stack.extend(call.input_vars)
    return changed


def upstream_calls(variable: Variable) -> list[Call]:
    """The call producing `variable` and every call it transitively depends on."""
    calls: list[Call] = []
    seen: set[int] = set()
    stack = [variable]
    while stack:
        call = stack.pop().producer
        if call is None or id(call) in seen:
            continue
        seen.add(id(call))
        calls.append(call)
        stack.extend(call.input_vars)
    return calls


def request_criteria(variable: Variable, criteria: Objective | None) -> list[Call]:
    """A client waits on `variable` with `criteria`; returns the calls newly marked latency."""
    if criteria is None:
        return []
    if criteria == "latency" or variable.criteria is None:
        variable.criteria = criteria
    return _mark([variable]) if criteria == "latency" else []


def hinted_latency(call: Call) -> list[Call]:
    """A call hinted latency-critical needs its inputs fast too: mark its upstream."""
    return _mark(call.input_vars) if call.hint == "latency" else []


def followed_by_latency(call: Call, k: int) -> bool:
    """Whether latency-critical work goes out the moment output `k` of `call` is done.

    That is the call's own next output, or a consumer for which this value is the last
    missing input (the next link of a chain, the reduce after its last map). The engine
    keeps throughput work off for a moment so the follow-up does not wait behind it.
    """
    if k + 1 < len(call.outputs) and call.objective == "latency":
        return True
    variable = call.outputs[k].variable
    return any(
        consumer.objective == "latency"
        and consumer.state is CallState.WAITING
        and all(v.done or v is variable for v in consumer.input_vars)
        for consumer in variable.consumers
    )


def _ancestors(call: Call) -> set[int]:
    seen: set[int] = set()
    stack = list(call.input_vars)
    while stack:
        producer = stack.pop().producer
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        stack.extend(producer.input_vars)
    return seen


def form_task_group(consumer: Call) -> list[Call]:
    """Group the undispatched calls that fan in to `consumer`; returns the new members.

    A producer upstream of another producer must finish first anyway, so it stays out
    of the group; so do calls already in a group (the first consumer seen claims them).
    """
    producers: dict[int, Call] = {}
    for variable in consumer.input_vars:
        producer = variable.producer
        if producer is not None and producer.state in _UNDISPATCHED and producer.group_id is None:
            producers[id(producer)] = producer
    if len(producers) < 2:
        return []
    upstream_of_others: set[int] = set()
    for producer in producers.values():
        upstream_of_others |= _ancestors(producer)
    members = [p for key, p in producers.items() if key not in upstream_of_others]
    if len(members) < 2:
        return []
    group_id = f"group-{consumer.call_id}"
    for member in members:
        member.group_id = group_id
    return members
