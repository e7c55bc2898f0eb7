"""Scheduler policy: ordering by objective/priority/app/group, latency cap, token budget."""

from __future__ import annotations

import pytest

from engine.builtin.block_manager import BlockManager
from engine.builtin.contexts import ContextTable
from engine.builtin.scheduler import Scheduler, SchedulerConfig
from engine.builtin.sequence import Sequence
from engine.protocol import SamplingParams, Scheduling

BS = 4


def setup(num_blocks=256, **cfg):
    table = ContextTable(BlockManager(num_blocks, BS), lambda *a: None)
    return table, Scheduler(SchedulerConfig(**cfg), table)


def add(table, sched, name, n_tokens=3, **scheduling):
    ctx = table.create(name)
    base = 1000 * (1 + sum(map(ord, name)))  # distinct tokens: no accidental prefix hits
    ctx.token_ids.extend(range(base, base + n_tokens))
    seq = Sequence(
        request_id=name,
        context=ctx,
        scheduling=Scheduling(**scheduling),
        arrival=0.0,
        sink=None,
        sampling=SamplingParams(max_tokens=4),
    )
    sched.add(seq)
    return seq


def step(table, sched, seconds=None):
    """One step; with `seconds`, the step took that long (for throughput's time share)."""
    plan = sched.schedule()
    for c in plan.chunks:
        table.commit(c.seq.context, c.num_tokens)
        if c.sample:  # pretend a token was sampled so the sequence keeps decoding
            c.seq.context.token_ids.append(1)
    if seconds is not None:
        sched.observe(seconds, plan.chunks)
    return [c.seq.request_id for c in plan.chunks]


def test_latency_work_goes_first_and_caps_the_batch():
    table, sched = setup(latency_cap=2)
    for i in range(4):
        add(table, sched, f"t{i}", objective="throughput")
    add(table, sched, "l0", objective="latency")
    add(table, sched, "l1", objective="latency")
    assert step(table, sched) == ["l0", "l1"]
    assert step(table, sched) == ["l0", "l1"]
    # once latency work is gone, throughput work runs uncapped
    for name in ("l0", "l1"):
        sched.remove(next(s for s in sched.running if s.request_id == name))
    assert sorted(step(table, sched)) == ["t0", "t1", "t2", "t3"]


def test_throughput_prefill_shrinks_to_the_latency_step_budget_while_latency_is_live():
    table, sched = setup(max_step_tokens=64, latency_step_tokens=12)
    add(table, sched, "bulk", n_tokens=40, objective="throughput")
    add(table, sched, "chat", n_tokens=5, objective="latency")
    plan = sched.schedule()
    # The latency prompt (5 tokens) first; throughput fills the step up to 12 tokens in all.
    assert [(c.seq.request_id, c.num_tokens) for c in plan.chunks] == [("chat", 5), ("bulk", 7)]
    for c in plan.chunks:
        table.commit(c.seq.context, c.num_tokens)
    sched.remove(next(s for s in sched.running if s.request_id == "chat"))
    plan = sched.schedule()  # latency work gone: the full budget again
    assert [(c.seq.request_id, c.num_tokens) for c in plan.chunks] == [("bulk", 33)]


def test_throughput_yields_latency_steps_once_it_had_its_share_of_recent_time():
    table, sched = setup(max_step_tokens=64, latency_step_tokens=16, throughput_share=0.25)
    add(table, sched, "bulk", n_tokens=200, objective="throughput")
    assert step(table, sched, seconds=1.0) == ["bulk"]  # the engine was busy with throughput
    add(table, sched, "chat", n_tokens=5, objective="latency")
    # Latency steps alone now: throughput had its share of the recent time...
    assert step(table, sched, seconds=0.03) == ["chat"]
    while sched.throughput_share >= 0.25:  # ...and latency-only steps decay that share
        assert step(table, sched, seconds=0.5) == ["chat"]
    # ...until it is below the share, when throughput joins (bounded by the step budget).
    plan = sched.schedule()
    assert [(c.seq.request_id, c.num_tokens) for c in plan.chunks] == [("chat", 1), ("bulk", 15)]


def test_throughput_on_a_latency_path_is_not_held_back():
    table, sched = setup(max_step_tokens=64, latency_step_tokens=16, throughput_share=0.0)
    add(table, sched, "map", n_tokens=40, objective="throughput", priority=1)
    add(table, sched, "background", n_tokens=40, objective="throughput")
    add(table, sched, "chat", n_tokens=5, objective="latency")
    plan = sched.schedule()
    # The prioritized map joins with its whole prompt; background work waits for its share.
    assert [(c.seq.request_id, c.num_tokens) for c in plan.chunks] == [("chat", 5), ("map", 40)]


def test_a_rescheduled_sequence_is_ranked_by_its_new_scheduling():
    table, sched = setup(max_step_tokens=64, latency_step_tokens=16, throughput_share=0.0)
    add(table, sched, "chat", n_tokens=5, objective="latency")
    add(table, sched, "late-get", n_tokens=5, objective="throughput", app_id="A")
    assert step(table, sched, seconds=0.1) == ["chat"]  # held back: a share of 0
    # The client's GET with criteria=latency arrives after the request was sent.
    assert sched.reschedule("late-get", Scheduling(objective="latency", app_id="A"))
    assert step(table, sched) == ["chat", "late-get"]
    assert sched.num_latency_live == 2
    assert not sched.reschedule("no-such-context", Scheduling())
    # The app's rank was handed over, not leaked: removing the sequence forgets it.
    sched.remove(next(s for s in sched.running if s.request_id == "late-get"))
    assert ("app", "A") not in sched._first_seen


def test_throughput_runs_when_no_latency_work_can_step():
    table, sched = setup(max_step_tokens=64, throughput_share=0.0)
    add(table, sched, "bulk", n_tokens=10, objective="throughput")
    assert step(table, sched, seconds=1.0) == ["bulk"]
    # A share of 0 holds throughput work out of every step that latency work is in...
    add(table, sched, "chat", n_tokens=3, objective="latency")
    assert step(table, sched) == ["chat"]
    # ...but never idles the engine: with the latency sequence done, throughput steps.
    sched.remove(next(s for s in sched.running if s.request_id == "chat"))
    assert step(table, sched) == ["bulk"]


def clocked(**cfg):
    """A scheduler whose clock the test moves by hand."""
    now = [100.0]
    table = ContextTable(BlockManager(256, BS), lambda *a: None)
    return table, Scheduler(SchedulerConfig(**cfg), table, clock=lambda: now[0]), now


def finish(sched, name, completed=True):
    sched.remove(next(s for s in sched.running if s.request_id == name), completed)


def after_a_link(hold_s=0.05, completed=True, prioritized=False):
    """Background work waits while a link marked `followup` runs; then the link ends."""
    table, sched, now = clocked(followup_hold_s=hold_s)
    if prioritized:
        add(table, sched, "map", n_tokens=50, objective="throughput", priority=1)
    add(table, sched, "bulk", n_tokens=100, objective="throughput")
    add(table, sched, "link", objective="latency", followup=True)
    step(table, sched)
    finish(sched, "link", completed)
    return table, sched, now


def test_throughput_holds_off_for_the_follow_up_of_a_finished_link():
    table, sched, now = after_a_link()
    # The next link is on its way: the engine waits for it instead of a long prefill.
    assert step(table, sched) == [] and sched.hold_left() == pytest.approx(0.05)
    now[0] += 0.01
    add(table, sched, "link2", objective="latency")  # it arrives: the hold ends
    assert sched.hold_left() == 0.0
    assert step(table, sched)[0] == "link2"
    finish(sched, "link2")  # the chain's last link announces nothing
    assert step(table, sched) == ["bulk"]


def test_a_hold_ends_when_no_follow_up_comes():
    table, sched, now = after_a_link()
    assert step(table, sched) == []
    now[0] += 0.051
    assert sched.hold_left() == 0.0 and step(table, sched) == ["bulk"]


def test_no_hold_after_an_abort_with_a_hold_of_0_or_for_prioritized_throughput():
    table, sched, _ = after_a_link(completed=False)  # no follow-up comes after an abort
    assert step(table, sched) == ["bulk"]
    table, sched, _ = after_a_link(hold_s=0.0)
    assert step(table, sched) == ["bulk"]
    table, sched, _ = after_a_link(prioritized=True)
    assert step(table, sched) == ["map"]  # on a latency path itself; background waits


def test_a_latency_fill_is_always_followed():
    table, sched, _ = clocked(followup_hold_s=0.05)
    add(table, sched, "bulk", n_tokens=100, objective="throughput")
    ctx = table.create("prefix")
    ctx.token_ids.extend(range(7000, 7008))
    fill = Sequence("fill:prefix", ctx, Scheduling(objective="latency"), 0.0, None)
    sched.add(fill)
    step(table, sched)
    sched.remove(fill, completed=True)  # the generate forking it comes next
    assert step(table, sched) == []


def test_scheduler_config_rejects_a_negative_hold():
    with pytest.raises(ValueError, match="followup_hold_s"):
        SchedulerConfig(followup_hold_s=-1)


def test_a_share_of_1_lets_throughput_into_every_step():
    table, sched = setup(max_step_tokens=64, latency_step_tokens=16, throughput_share=1.0)
    add(table, sched, "bulk", n_tokens=100, objective="throughput")
    assert step(table, sched, seconds=1.0) == ["bulk"]
    add(table, sched, "chat", n_tokens=5, objective="latency")
    assert step(table, sched) == ["chat", "bulk"]


def test_scheduler_config_rejects_a_share_outside_0_1():
    with pytest.raises(ValueError, match="throughput_share"):
        SchedulerConfig(throughput_share=1.5)


def test_a_latency_prompt_keeps_the_full_step_budget():
    table, sched = setup(max_step_tokens=64, latency_step_tokens=12)
    add(table, sched, "bulk", n_tokens=8, objective="throughput")
    add(table, sched, "chat", n_tokens=30, objective="latency")
    plan = sched.schedule()
    assert [(c.seq.request_id, c.num_tokens) for c in plan.chunks] == [("chat", 30)]


def test_priority_then_app_fifo_then_group_order():
    table, sched = setup(max_batch_size=8)
    add(table, sched, "late-app", objective="throughput", app_id="B")
    add(table, sched, "early-app", objective="throughput", app_id="A")
    add(table, sched, "b2", objective="throughput", app_id="B")
    add(table, sched, "urgent", objective="throughput", priority=5)
    assert step(table, sched) == ["urgent", "late-app", "b2", "early-app"]


def test_task_group_members_are_contiguous():
    table, sched = setup(max_batch_size=3)
    add(table, sched, "g1-a", objective="throughput", group_id="g1")
    add(table, sched, "x", objective="throughput")
    add(table, sched, "g1-b", objective="throughput", group_id="g1")
    add(table, sched, "g1-c", objective="throughput", group_id="g1")
    assert step(table, sched) == ["g1-a", "g1-b", "g1-c"]


def test_token_budget_chunks_long_prefills():
    table, sched = setup(max_step_tokens=10)
    add(table, sched, "long", n_tokens=25)
    add(table, sched, "short", n_tokens=3)
    plan = sched.schedule()
    assert [(c.seq.request_id, c.num_tokens, c.sample) for c in plan.chunks] == [
        ("long", 10, False)
    ]


def test_out_of_blocks_preempts_lower_ranked_work():
    table, sched = setup(num_blocks=4, max_step_tokens=64)
    low = add(table, sched, "low", n_tokens=8, objective="throughput")
    assert step(table, sched) == ["low"]
    high = add(table, sched, "high", n_tokens=9, objective="latency")
    plan = sched.schedule()
    assert [c.seq for c in plan.chunks] == [high]
    assert plan.preempted == [low] and low.context.num_computed == 0
