"""`parrot bench apps` bookkeeping: fresh prompts per run, medians of repeated passes."""

from __future__ import annotations

import asyncio

import pytest

from loadtest.apps import chain, map_reduce, mixed, multi_agent, shared_prompt
from loadtest.bench_apps import fresh, median_sample, table


def test_the_median_run_is_kept_with_every_sample_on_record() -> None:
    runs = [{"e2e_s": 9.0, "tag": "slow"}, {"e2e_s": 2.0, "tag": "fast"}, {"e2e_s": 4.0}]
    kept = median_sample("chain", runs)
    assert kept["e2e_s"] == 4.0 and kept["samples"] == [9.0, 2.0, 4.0]
    # An even count keeps the lower middle run, a real run rather than an average of two.
    assert median_sample("chain", runs[:2])["tag"] == "fast"


def test_the_table_ratios_compare_each_system_with_parrot() -> None:
    results = {
        "map_reduce|8x200tok/25out|rtt=0ms": {
            "parrot": median_sample("map_reduce", [{"e2e_s": 2.0}]),
            "baseline": median_sample("map_reduce", [{"e2e_s": 5.0}]),
        }
    }
    line = table(results).splitlines()[-1]
    assert line.split()[1:4] == ["2.000", "5.000", "2.50"]
    results["map_reduce|8x200tok/25out|rtt=0ms"]["baseline-latcap"] = median_sample(
        "map_reduce", [{"e2e_s": 3.0}]
    )
    head, _, line = table(results).splitlines()
    assert head.split()[-1] == "latcap/parrot" and line.split()[-1] == "1.50"


class RecordingFakeClient:
    """A fake OpenAI client for the workloads: records each prompt, answers with its tail (so
    that a later call built from the answers differs when the earlier prompts did)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    async def complete(self, prompt: str, max_tokens: int) -> str:
        self.prompts.append(prompt)
        return prompt[-60:]


SMALL = {
    "chain": chain.ChainParams(chunks=3, chunk_tokens=40),
    "map_reduce": map_reduce.MapReduceParams(chunks=3, chunk_tokens=40),
    "multi_agent": multi_agent.MultiAgentParams(files=2),
    "shared_prompt": (
        "rates",
        shared_prompt.SharedPromptParams(rates=(200.0, 400.0), window_s=0.02, min_requests=4),
    ),
    "mixed": mixed.MixedParams(chat_requests=3, chat_rate=500.0, apps=2, burst_at_s=0.0),
}


def prompts_of(workload: str, params) -> list[str]:
    client = RecordingFakeClient()
    module = {"chain": chain, "map_reduce": map_reduce, "multi_agent": multi_agent}
    if workload == "shared_prompt":
        asyncio.run(shared_prompt.run_baseline(client, params[1], params[0]))
    elif workload == "mixed":
        asyncio.run(mixed.run_baseline(client, params))
    else:
        asyncio.run(module[workload].run_baseline(client, params))
    return client.prompts


@pytest.mark.parametrize("workload", sorted(SMALL))
def test_each_run_gets_prompts_no_earlier_run_could_have_cached(workload) -> None:
    """Repeated passes, and the two RTT settings of a case, must not find their prompts in a
    prefix cache warmed by an earlier run; every system of one run must see the same ones."""
    first = prompts_of(workload, fresh(SMALL[workload], "case|rtt=0ms|0"))
    again = prompts_of(workload, fresh(SMALL[workload], "case|rtt=0ms|0"))
    other = prompts_of(workload, fresh(SMALL[workload], "case|rtt=0ms|1"))
    assert sorted(first) == sorted(again)
    # No whole prompt and no leading 200 characters (a shared system prompt) recur.
    assert not {p[:200] for p in first} & {p[:200] for p in other}
    if workload == "shared_prompt":  # within a run, each rate asks new questions
        assert len(set(first)) == len(first)


def test_plots_include_the_mixed_map_reduce_half(tmp_path) -> None:
    from loadtest.plots import draw

    run = {"chat_s_per_token": 0.05, "map_reduce_s": 12.0}
    results = {
        "mixed|chat 1/s + 4 map-reduce|rtt=0ms": {
            "parrot": median_sample("mixed", [run]),
            "baseline-latcap": median_sample("mixed", [{**run, "map_reduce_s": 14.0}]),
        }
    }
    paths = draw(results, tmp_path)
    assert {p.name for p in paths} == {"apps_mixed.png", "apps_mixed_map_reduce.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_mixed_chats_arrive_on_the_same_schedule_in_every_run() -> None:
    """Prompts are fresh per run, but when chats arrive relative to the map-reduce burst is
    the case itself: every pass and both RTTs must overlap them alike."""
    params = mixed.MixedParams(chat_requests=12, chat_rate=1.0)
    a, b = fresh(params, "case|rtt=0ms|0"), fresh(params, "case|rtt=50ms|2")
    assert a.seed != b.seed
    assert mixed.chat_arrivals(a) == mixed.chat_arrivals(b) == [float(i) for i in range(12)]


class SlowCallsFakeClient:
    """A fake OpenAI client that answers call number n (from 1) after 0.2 s when `slow(n)`,
    at once otherwise: which rates of a sweep keep up is then fixed by the call counts."""

    def __init__(self, slow) -> None:
        self.slow, self.calls = slow, 0

    async def complete(self, prompt: str, max_tokens: int) -> str:
        self.calls += 1
        if self.slow(self.calls):
            await asyncio.sleep(0.2)
        return "ok"


def test_the_rate_sweep_stops_at_the_first_rate_that_misses_the_bound() -> None:
    params = shared_prompt.SharedPromptParams(
        rates=(100.0, 200.0, 400.0),
        window_s=0.04,
        min_requests=4,
        output_tokens=1,
        bound_s_per_token=0.05,
        refine=0,
    )
    client = SlowCallsFakeClient(lambda n: n > 4)
    res = asyncio.run(shared_prompt.run_baseline(client, params, "rates"))
    # Arrivals fill the window at each rate: 4 at 100/s, 8 at 200/s; 400/s is never sent.
    assert res["requests"] == {"100.0": 4, "200.0": 8} and client.calls == 12
    assert res["sustainable_rate"] == 100.0 and res["first_missed_rate"] == 200.0
    assert res["not_run"] == [400.0]
    assert res["normalized_latency"]["200.0"] >= 0.2


def test_the_rate_sweep_narrows_the_step_between_held_and_missed() -> None:
    params = shared_prompt.SharedPromptParams(
        rates=(100.0, 400.0),
        window_s=0.04,
        min_requests=4,
        output_tokens=1,
        bound_s_per_token=0.05,
        refine=2,
    )
    # Calls 1-4 are 100/s, 5-20 400/s (slow: missed), 21-28 the midpoint 200/s (held),
    # 29-39 the next midpoint 282.84/s (slow: missed).
    client = SlowCallsFakeClient(lambda n: 5 <= n <= 20 or n >= 29)
    res = asyncio.run(shared_prompt.run_baseline(client, params, "rates"))
    assert list(res["normalized_latency"]) == ["100.0", "200.0", "282.84", "400.0"]
    assert res["sustainable_rate"] == 200.0 and res["first_missed_rate"] == 282.84
    assert client.calls == 39
    # The top rate held, nothing to narrow: the sustainable rate is only a floor.
    top = asyncio.run(
        shared_prompt.run_baseline(SlowCallsFakeClient(lambda n: False), params, "rates")
    )
    assert top["sustainable_rate"] == 400.0 and top["first_missed_rate"] is None


def test_the_rate_sweep_compares_sustainable_rates() -> None:
    def swept(rate: float) -> dict:
        return median_sample(
            "shared_prompt", [{"normalized_latency": {}, "sustainable_rate": rate}]
        )

    results = {
        "shared_prompt|4 apps, 1/sustainable rate|rtt=0ms": {
            "parrot": swept(16.0),
            "baseline": swept(4.0),
            "baseline+apc": swept(0.0),  # missed the bound at the first rate
        }
    }
    cols = table(results).splitlines()[-1].split()
    assert cols[-4:-2] == ["4.00", "inf"]


def test_each_rate_sweep_gets_its_own_curve_plot_and_no_bars(tmp_path) -> None:
    from loadtest.plots import draw

    def swept(lengths: list[int]) -> dict:
        run = {
            "normalized_latency": {"1.0": 0.05, "2.0": 0.3},
            "sustainable_rate": 1.0,
            "bound_s_per_token": 0.25,
            "app_prompt_tokens": lengths,
        }
        return median_sample("shared_prompt", [run])

    results = {
        "shared_prompt|4 apps, 1/sustainable rate|rtt=0ms": {"parrot": swept([300, 900])},
        "shared_prompt|4 apps long, 1/sustainable rate|rtt=0ms": {"parrot": swept([1100, 7400])},
    }
    names = {p.name for p in draw(results, tmp_path)}
    assert names == {"apps_shared_prompt_rates_0ms.png", "apps_shared_prompt_rates_long_0ms.png"}
