"""Per-step attention threads: the work estimate, the decision, and the engine using it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from engine.builtin.attention import AttentionPlan
from engine.builtin.scheduler import Chunk
from engine.builtin.threads import AttentionThreads, attention_pairs, machine_cores
from tests.engine.test_builtin_engine import make_engine, prompt, run


def _chunk(computed: int, tokens: int) -> Chunk:
    seq = SimpleNamespace(context=SimpleNamespace(num_computed=computed))
    return Chunk(seq, tokens, True)


def test_attention_pairs_counts_causal_query_key_pairs() -> None:
    # A decode row attends to its context plus itself; a prefill chunk of n tokens after
    # `start` attends to start + 1 .. start + n keys.
    assert attention_pairs([_chunk(99, 1)]) == 100
    assert attention_pairs([_chunk(0, 4)]) == 1 + 2 + 3 + 4
    assert attention_pairs([_chunk(10, 3)]) == 11 + 12 + 13
    assert attention_pairs([_chunk(99, 1), _chunk(10, 3), _chunk(5, 0)]) == 100 + 36
    assert attention_pairs([]) == 0


def test_attention_goes_wide_only_for_long_contexts_and_more_threads() -> None:
    policy = AttentionThreads(wide=4, min_context=2048)
    assert policy.for_step(pairs=2048 * 3, tokens=3, narrow=1) == 4  # mean context 2048
    assert policy.for_step(pairs=2047 * 3, tokens=3, narrow=1) is None
    assert policy.for_step(pairs=10**9, tokens=0, narrow=1) is None  # nothing computed
    assert policy.for_step(pairs=10**9, tokens=1, narrow=4) is None  # nothing to widen to
    assert AttentionThreads(wide=2, min_context=0).for_step(0, 1, 1) == 2


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


async def test_long_context_steps_attend_on_more_threads_with_the_same_tokens(
    tiny_model, tmp_path, monkeypatch, restore_threads
):
    """With one engine thread and attention widened from a mean context of 40 keys, the
    steps past that run their attention on two threads and the rest of the step on one;
    the tokens are those of an engine that never widens."""
    seen: list[tuple[int, int]] = []  # (threads inside the attention, threads after it)
    attend, call = AttentionPlan._attend, AttentionPlan.__call__

    def spy_attend(self, *args):
        seen.append((torch.get_num_threads(), -1))
        return attend(self, *args)

    def spy_call(self, *args):
        out = call(self, *args)
        seen[-1] = (seen[-1][0], torch.get_num_threads())
        return out

    monkeypatch.setattr(AttentionPlan, "_attend", spy_attend)
    monkeypatch.setattr(AttentionPlan, "__call__", spy_call)
    tokens = {}
    for wide in (1, 2):
        trace = tmp_path / f"steps-{wide}.jsonl"
        seen.clear()
        eng = make_engine(
            tiny_model,
            num_threads=1,
            attention_threads=wide,
            wide_attention_context=40,
            step_trace=str(trace),
        )
        await eng.start()
        try:
            tokens[wide], _ = await run(eng, f"r{wide}", prompt(3, 30))
        finally:
            await eng.close()
        steps = [json.loads(line) for line in trace.read_text().splitlines()]
        # The prompt (30 tokens, mean context 15.5) and the decodes up to context 39 stay
        # narrow; decodes from context 40 on go wide, when there is more than one thread.
        expect = [
            2 if wide == 2 and s["kv"] >= 40 * (s["lat_tokens"] + s["tput_tokens"]) else 1
            for s in steps
        ]
        assert [s["threads"] for s in steps] == expect
        assert 2 in expect or wide == 1
        layers = tiny_model.config.num_layers
        assert [inside for inside, _ in seen] == [t for t in expect for _ in range(layers)]
        assert all(after == 1 for _, after in seen)  # the rest of the step: one thread
    assert tokens[1] == tokens[2]


def test_engine_default_widens_to_every_core(tiny_model, restore_threads):
    eng = make_engine(tiny_model, num_threads=1)
    assert eng.runner.attention_threads == AttentionThreads(machine_cores(), 2048)
