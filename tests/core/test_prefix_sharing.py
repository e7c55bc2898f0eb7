"""Prefix sharing on the real builtin engine (tiny random weights, real tokenizer):
KV held, greedy equality with unshared runs, freeing on session end, chat chains forking."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from engine.builtin.engine import BuiltinEngine
from engine.builtin.options import EngineOptions
from gateway.protocol.semantic import CallRequest

TENANT = "t"
SYSTEM = (
    "You are the support assistant of a small bookshop. You answer questions about opening "
    "hours, orders, deliveries and returns politely, briefly and accurately, and you never "
    "invent prices, titles or dates that the customer did not mention. "
) * 3
QUESTIONS = [
    "Where is my order?",
    "Are you open on Sunday?",
    "Can I return a book?",
    "Do you ship abroad?",
    "How long is delivery?",
    "Do you sell gift cards?",
]


def engine(tiny_model) -> BuiltinEngine:
    return BuiltinEngine(tiny_model, EngineOptions(dtype="float32", num_blocks=256))


def ask(model: str, question: str) -> CallRequest:
    return msgspec.convert(
        {
            "model": model,
            "template": SYSTEM + "Customer: {{input:q}}\nAssistant: {{output:a}}",
            "inputs": {"q": {"value": question}},
            "outputs": {"a": {"max_tokens": 8, "temperature": 0, "ignore_eos": True}},
        },
        CallRequest,
    )


async def run_all(core, model: str) -> tuple[list[str], list[str]]:
    """Every question in its own session, all submitted together; (answers, session ids)."""
    sids = [(await core.create_session(TENANT)).session_id for _ in QUESTIONS]
    created = [
        (await core.submit(sid, TENANT, [ask(model, q)], False))[0]
        for sid, q in zip(sids, QUESTIONS, strict=True)
    ]
    views = await asyncio.gather(
        *(
            core.get_variable(sid, TENANT, c.outputs["a"], "latency", 60)
            for sid, c in zip(sids, created, strict=True)
        )
    )
    return [v.value for v in views], sids


async def test_calls_over_one_system_prompt_hold_one_prefix_plus_suffixes(services, tiny_model):
    eng = engine(tiny_model)
    async with services([eng]) as s:
        core, model = s.core, eng.info.model
        answers, sids = await run_all(core, model)
        stats = await eng.stats()
        (prefix,) = core.contexts.prefixes()
        bs = eng.info.block_size
        prefix_blocks = -(-len(prefix.token_ids) // bs)
        assert prefix_blocks >= 8
        # Each call's own context (question + answer, retained for its session) is a couple
        # of blocks; without sharing every call would hold the whole prompt again.
        n = len(QUESTIONS)
        assert stats.used_blocks <= prefix_blocks + n * 3
        assert stats.used_blocks < 2 * prefix_blocks + n
        assert all(len(a) > 0 for a in answers)
        # Deleting the sessions frees every context they hold; the shared prefix stays
        # cached (idle) until evicted.
        for sid in sids:
            await core.delete_session(sid, TENANT)
        await core.contexts.drain()
        assert (await eng.stats()).used_blocks == prefix_blocks
        core.contexts.expire(0.0)
        await core.contexts.drain()
        after = await eng.stats()
        assert after.used_blocks == 0 and after.num_contexts == 0


async def test_forked_outputs_equal_unshared_outputs_under_greedy(services, tiny_model):
    shared_engine, plain_engine = engine(tiny_model), engine(tiny_model)
    async with services([shared_engine]) as s:
        shared, _ = await run_all(s.core, shared_engine.info.model)
        assert any(g.key is not None for g in s.core.contexts.prefixes())
    async with services([plain_engine], share_prefixes=False) as s:
        plain, _ = await run_all(s.core, plain_engine.info.model)
        assert s.core.contexts.prefixes() == []
    assert shared == plain


@pytest.mark.parametrize("salted", [False, True])
async def test_cache_salt_keeps_a_tenants_prefixes_apart(services, tiny_model, salted):
    eng = engine(tiny_model)
    async with services([eng]) as s:
        core, model = s.core, eng.info.model
        for tenant in ("a", "b"):
            sid = (await core.create_session(tenant, cache_salt="x" if salted else None)).session_id
            (c,) = await core.submit(sid, tenant, [ask(model, "hi")], False)
            await core.get_variable(sid, tenant, c.outputs["a"], None, 60)
        assert len(core.contexts.prefixes()) == (2 if salted else 1)


async def test_a_later_call_forks_an_earlier_calls_context(services, tiny_model):
    eng = engine(tiny_model)
    async with services([eng]) as s:
        core, model = s.core, eng.info.model
        sid = (await core.create_session(TENANT)).session_id
        first = ask(model, QUESTIONS[0])
        (a,) = await core.submit(sid, TENANT, [first], False)
        # The follow-up's prompt starts with the whole first exchange, answer included.
        follow = msgspec.convert(
            {
                "model": model,
                "template": SYSTEM + "Customer: {{input:q}}\nAssistant: {{input:a}}\n"
                "Customer: thanks\nAssistant: {{output:b}}",
                "inputs": {"q": {"value": QUESTIONS[0]}, "a": {"var": a.outputs["a"]}},
                "outputs": {"b": {"max_tokens": 4, "temperature": 0, "ignore_eos": True}},
            },
            CallRequest,
        )
        (b,) = await core.submit(sid, TENANT, [follow], False)
        await core.get_variable(sid, TENANT, b.outputs["b"], "latency", 60)
        retained = core.contexts.held_by(sid)
        assert [e.context_id for e in retained] == [f"call-{a.id}", f"call-{b.id}"]
        assert retained[1].parent is retained[0]  # forked, not re-filled


def team(model: str, files: int) -> list[CallRequest]:
    """An architect, then programmers whose prompts all start with the brief and the design
    (after their own role line, so none of them can fork the architect's context)."""
    out = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}
    architect = SYSTEM + "Role: architect.\nDesign: {{output:d}}"
    calls = [{"model": model, "template": architect, "outputs": {"d": out}}]
    for i in range(files):
        calls.append(
            {
                "model": model,
                "template": SYSTEM + "Role: programmer.\nDesign: {{input:d}}\n"
                "File {{input:f}}: {{output:c}}",
                "inputs": {"d": {"ref": "0.d"}, "f": {"value": f"module_{i}.py"}},
                "outputs": {"c": {"max_tokens": 6, "temperature": 0, "ignore_eos": True}},
            }
        )
    return [msgspec.convert(c, CallRequest) for c in calls]


async def run_team(core, model: str, files: int) -> tuple[str, list[str]]:
    sid = (await core.create_session(TENANT)).session_id
    created = await core.submit(sid, TENANT, team(model, files), True)
    views = await asyncio.gather(
        *(core.get_variable(sid, TENANT, c.outputs["c"], "latency", 60) for c in created[1:])
    )
    return sid, [v.value for v in views]


async def test_calls_starting_with_the_same_variable_fork_one_session_prefix(services, tiny_model):
    shared_engine, plain_engine = engine(tiny_model), engine(tiny_model)
    async with services([shared_engine]) as s:
        core = s.core
        sid, shared = await run_team(core, shared_engine.info.model, 4)
        kept = core.contexts.held_by(sid)
        (design,) = [e for e in kept if e.key is not None]
        # Filled once, as a fork of the programmers' constant prefix (shared by every
        # session), through the architect's 40 tokens.
        system = design.parent
        assert system is not None and system.session_id is None
        assert system in core.contexts.prefixes()
        assert len(design.token_ids) >= len(system.token_ids) + 32
        programmers = [e for e in kept if e.key is None and e.parent is design]
        assert len(programmers) == 4  # every programmer forked it; none re-filled the design
        await core.delete_session(sid, TENANT)
        await core.contexts.drain()
        stats = await shared_engine.stats()
        # Only the two roles' constant prefixes are left (idle, for other sessions): the
        # session prefix went with the session.
        assert len(core.contexts.prefixes()) == 2 and stats.num_contexts == 2
    async with services([plain_engine], share_prefixes=False) as s:
        _, plain = await run_team(s.core, plain_engine.info.model, 4)
    assert shared == plain


async def test_a_call_without_siblings_keeps_no_session_prefix(services, tiny_model):
    eng = engine(tiny_model)
    async with services([eng]) as s:
        sid, _ = await run_team(s.core, eng.info.model, 1)
        assert [e for e in s.core.contexts.held_by(sid) if e.key is not None] == []
