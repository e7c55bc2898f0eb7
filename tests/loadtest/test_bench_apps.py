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
        shared_prompt.SharedPromptParams(rates=(200.0, 400.0), requests_per_rate=4),
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
