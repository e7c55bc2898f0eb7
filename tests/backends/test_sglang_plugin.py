"""The Parrot plugin's rules for SGLang's scheduler, on named fakes of SGLang's data shapes:
`Req` (rid, routing_key, origin_input_ids), `ScheduleBatch` (reqs), the radix tree (match,
lock refs), the `Scheduler` and `SchedulePolicy` objects the hooks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.sglang.plugin import ParrotPlugin
from engine.sglang.policy import LatencyCap, PinBook, WaitingOrder
from engine.sglang.tags import ParrotTag


@dataclass
class FakeReq:
    """The fields of sglang.srt.managers.schedule_batch.Req the plugin reads."""

    rid: str
    routing_key: str | None = None
    origin_input_ids: list[int] = field(default_factory=list)


def req(
    rid: str,
    objective: str = "latency",
    app: str | None = None,
    group: str | None = None,
    priority: int = 0,
    **declare: str,
) -> FakeReq:
    tag = ParrotTag(objective, priority, app, group, **declare)
    return FakeReq(rid, tag.encode(), [1, 2, 3, 4])


@dataclass
class FakeBatch:
    reqs: list[Any] = field(default_factory=list)


@dataclass
class FakeNode:
    tokens: tuple[int, ...]
    lock_ref: int = 0


class FakeTree:
    """A prefix tree of inserted sequences with lock counts (SGLang: RadixCache)."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, ...], FakeNode] = {}

    def insert(self, tokens: list[int]) -> None:
        self.nodes[tuple(tokens)] = FakeNode(tuple(tokens))

    def match(self, token_ids):
        best = max(
            (n for n in self.nodes.values() if tuple(token_ids[: len(n.tokens)]) == n.tokens),
            key=lambda n: len(n.tokens),
            default=None,
        )
        return (0, None) if best is None else (len(best.tokens), best)

    def lock(self, node: FakeNode) -> None:
        node.lock_ref += 1

    def unlock(self, node: FakeNode) -> None:
        node.lock_ref -= 1


def test_waiting_order_is_app_fifo_with_groups_and_objectives() -> None:
    order = WaitingOrder()
    old = req("old-1", app="A")
    order.sort([old])  # app A is seen first
    queue = [
        req("bg", "throughput", app="C"),
        req("new", app="B"),
        req("g2", app="B", group="maps"),
        req("old-2", app="A"),
        req("g1", app="B", group="maps"),
        FakeReq("plain"),  # not from Parrot: latency, an app of its own
        req("urgent", app="D", priority=5),
    ]
    order.sort(queue)
    assert [r.rid for r in queue] == ["urgent", "old-2", "new", "g2", "g1", "plain", "bg"]


def test_latency_cap_allowance() -> None:
    cap = LatencyCap(4)
    assert cap.allowance(10, latency_waiting=False, latency_running=False) == -1
    assert cap.allowance(2, latency_waiting=True, latency_running=True) == 2
    assert cap.allowance(9, latency_waiting=False, latency_running=True) == 0
    # Throughput work filling the batch cannot starve a waiting latency request.
    assert cap.allowance(9, latency_waiting=True, latency_running=False) == 1


def test_pins_lock_a_finished_fill_and_unpin_releases_it() -> None:
    tree, pins = FakeTree(), PinBook()
    fill = req("fill:px#", pin="px")
    pins.observe(tree, [fill], [])  # waiting: not in the tree yet
    assert not pins.pinned("px")
    pins.observe(tree, [], [fill])  # running
    assert not pins.pinned("px")
    tree.insert(fill.origin_input_ids)
    pins.observe(tree, [req("other#")], [])  # gone from queue and batch: it finished
    node = tree.nodes[(1, 2, 3, 4)]
    assert pins.pinned("px") and node.lock_ref == 1 and pins.num_pinned == 1
    pins.observe(tree, [req("free:px#", unpin="px")], [])
    pins.observe(tree, [req("free:px#", unpin="px")], [])  # seen again: released once
    assert not pins.pinned("px") and node.lock_ref == 0
    pins.observe(tree, [fill], [])  # a stale sighting of the old fill does not re-pin
    assert pins.num_pinned == 0


def test_plugin_hooks_wrap_sglang_methods() -> None:
    plugin = ParrotPlugin(cap=LatencyCap(2))
    tree = FakeTree()

    class FakePolicy:  # SchedulePolicy: has tree_cache; calc_priority sorts in place
        tree_cache = tree
        sorted_by_sglang = False

    def calc_priority(policy, waiting_queue, running_batch=None, processed_tokens=0):
        policy.sorted_by_sglang = True

    policy = FakePolicy()
    plugin.pins.observe = lambda t, w, r: None  # pinning is tested above; the tree is a fake
    waiting = [req("t", "throughput", app="X"), req("l", app="Y")]
    plugin.around_calc_priority(calc_priority, policy, waiting, FakeBatch(), processed_tokens=0)
    assert policy.sorted_by_sglang and [r.rid for r in waiting] == ["l", "t"]

    @dataclass
    class FakeScheduler:  # Scheduler: waiting_queue, running_batch
        waiting_queue: list
        running_batch: FakeBatch

    def allocatable(scheduler, running_bs, beam_width=None, running_batch=None, num_held_rows=0):
        return 10

    busy = FakeScheduler(waiting, FakeBatch([req("r1", "throughput")]))
    assert plugin.around_allocatable(allocatable, busy, 1, running_batch=busy.running_batch) == 1
    idle = FakeScheduler([req("t2", "throughput")], FakeBatch())
    assert plugin.around_allocatable(allocatable, idle, 0) == 10


def test_plugin_settings_from_the_environment() -> None:
    plugin = ParrotPlugin.from_env(
        {"PARROT_SGLANG_LATENCY_CAP": "3", "PARROT_SGLANG_PIN_PREFIXES": "0"}
    )
    assert plugin.cap.cap == 3 and plugin.pin_prefixes is False
