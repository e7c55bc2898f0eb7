"""Placement policies as unit tests on engine views (what the gateway knows of engines)."""

from __future__ import annotations

from gateway.core.policies import (
    AdaptiveCap,
    AppFifo,
    CapacityFit,
    Demand,
    EngineView,
    LatencyCap,
)
from gateway.core.scheduler import Placer


def demand(cid: str, objective: str = "throughput", **kw) -> Demand:
    fields = {
        "app_rank": 0,
        "seq": int(cid.strip("abcdefghijklmnopqrstuvwxyz") or 0),
        "est_tokens": 100,
    }
    fields.update(kw)
    return Demand(call_id=cid, objective=objective, **fields)  # type: ignore[arg-type]


def test_app_fifo_orders_latency_priority_started_apps_then_submission() -> None:
    ds = [
        demand("t1", app_rank=5, seq=1),
        demand("t2", app_rank=1, seq=9),
        demand("l3", "latency", app_rank=7, seq=3),
        demand("p4", app_rank=9, seq=4, priority=1),
    ]
    assert [d.call_id for d in AppFifo.order(ds)] == ["l3", "p4", "t2", "t1"]


def test_app_fifo_keeps_group_members_together() -> None:
    ds = [demand("g1", seq=1, group_id="g"), demand("x2", seq=2), demand("g3", seq=3, group_id="g")]
    assert [d.call_id for d in AppFifo.order(ds)] == ["g1", "g3", "x2"]


def test_capacity_counts_a_shared_prefix_once_and_idle_engines_take_anything() -> None:
    fit = CapacityFit(max_fill=1.0)
    view = EngineView("e", capacity_tokens=1000, prefixes={b"p"})
    big = demand("a1", est_tokens=5000)
    assert fit.admits(view, big)  # idle: an oversized call fails on the engine, not here
    view.take(demand("a2", est_tokens=400, prefix_key=b"p", prefix_tokens=500))
    assert view.reserved_tokens == 400  # the prefix was already there
    assert fit.admits(view, demand("a3", est_tokens=600))
    assert not fit.admits(view, demand("a4", est_tokens=601))
    assert not fit.admits(view, demand("a5", est_tokens=100, prefix_key=b"q", prefix_tokens=501))


def test_latency_cap_limits_latency_calls_per_engine() -> None:
    view = EngineView("e", latency_cap=2)
    for i in range(2):
        assert LatencyCap.admits(view, demand(f"l{i}", "latency"))
        view.take(demand(f"l{i}", "latency"))
    assert not LatencyCap.admits(view, demand("l9", "latency"))
    assert LatencyCap.admits(view, demand("t9"))  # throughput is not capped


def test_placer_sends_throughput_away_from_latency_engines_and_balances_it() -> None:
    busy = EngineView("busy", latency_calls=1)
    free1, free2 = EngineView("free1"), EngineView("free2")
    placed, held = Placer().place([demand("t1"), demand("t2")], [busy, free1, free2])
    assert held == []
    assert [v.member_id for _, v in placed] == ["free1", "free2"]


def test_a_held_prefix_counts_as_work_saved_not_as_a_trump_card() -> None:
    def views() -> list[EngineView]:
        holder = EngineView("holder", prefixes={b"sys"}, throughput_calls=3, reserved_tokens=900)
        return [holder, EngineView("empty")]

    # A long prefix (1000 tokens) outweighs the holder's 900 tokens of queued work...
    long = demand("x1", prefix_key=b"sys", prefix_tokens=1000, est_tokens=100)
    placed, _ = Placer().place([long], views())
    assert placed[0][1].member_id == "holder"
    # ...a short shared instruction (50 tokens) does not: the call goes to the idle engine.
    short = demand("x2", prefix_key=b"sys", prefix_tokens=50, est_tokens=100)
    placed, _ = Placer().place([short], views())
    assert placed[0][1].member_id == "empty"


def test_a_session_prefix_draws_its_siblings_to_the_engine_that_holds_it() -> None:
    # Both engines hold the role prompt; only "holder" holds this app's brief + design.
    holder = EngineView(
        "holder", prefixes={b"sys", b"run"}, throughput_calls=2, reserved_tokens=400
    )
    other = EngineView("other", prefixes={b"sys"}, throughput_calls=1, reserved_tokens=200)
    sibling = demand(
        "x1", prefix_key=b"sys", prefix_tokens=600, run_key=b"run", run_tokens=300, est_tokens=90
    )
    assert holder.cost(sibling) == 90 and other.cost(sibling) == 390
    placed, _ = Placer().place([sibling], [holder, other])
    assert placed[0][1].member_id == "holder"
    assert holder.reserved_tokens == 490  # the placement took only the call's own tokens


def test_placer_spreads_latency_work_by_the_cap_but_never_holds_it() -> None:
    a, b = EngineView("a", latency_cap=1), EngineView("b", latency_cap=1)
    ds = [demand(f"l{i}", "latency", seq=i) for i in range(3)]
    placed, held = Placer().place(ds, [a, b])
    assert [v.member_id for _, v in placed] == ["a", "b", "a"]  # over the cap: least work
    assert held == []
    full = EngineView("full", latency_cap=1, capacity_tokens=150, latency_calls=1)
    full.reserved_tokens = 100
    placed, held = Placer().place([demand("l9", "latency")], [full])
    assert placed == [] and [d.call_id for d in held] == ["l9"]  # KV, not the cap, holds it


def test_placer_spreads_a_task_group_by_work_and_holds_what_fits_nowhere() -> None:
    small = EngineView("small", capacity_tokens=1000, throughput_calls=1, reserved_tokens=100)
    large = EngineView("large", capacity_tokens=2000, throughput_calls=1, reserved_tokens=100)
    group = [demand(f"g{i}", group_id="G", est_tokens=300, seq=i) for i in range(9)]
    placed, held = Placer().place(group, [small, large])
    where = [v.member_id for _, v in placed]
    # Least work first: the members alternate while both fit, then only the larger engine
    # has room (90% fill), and the rest wait for capacity rather than overfill an engine.
    assert where == ["small", "large", "small", "large", "large", "large", "large"]
    assert [d.call_id for d in held] == ["g7", "g8"]


def test_placer_prefers_the_engine_holding_the_prefix() -> None:
    a, b = EngineView("a"), EngineView("b", prefixes={b"sys"})
    placed, _ = Placer().place(
        [demand("x1", "latency", prefix_key=b"sys", prefix_tokens=200)], [a, b]
    )
    assert placed[0][1].member_id == "b"


def test_adaptive_cap_halves_over_target_and_grows_under_it() -> None:
    cap = AdaptiveCap(target_s_per_token=0.05, initial=8, maximum=10, smoothing=1.0)
    cap.observe("e", 0.2)
    assert cap.cap("e") == 4
    cap.observe("e", 0.2)
    assert cap.cap("e") == 2
    for _ in range(20):
        cap.observe("e", 0.01)
    assert cap.cap("e") == 10
    fixed = AdaptiveCap(target_s_per_token=0.0, initial=3)
    fixed.observe("e", 9.0)
    assert fixed.cap("e") == 3
