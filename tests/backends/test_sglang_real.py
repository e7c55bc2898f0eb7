"""The SGLang backend and plugin against SGLang's own pure-Python types (no GPU needed).

Runs where `sglang` imports (e.g. a scratch venv with `pip install --no-deps sglang` plus
its small pure-Python dependencies; see docs/backends.md), skipped elsewhere: our request
bodies must pass SGLang's JSON contract and build a `GenerateReqInput`; the outputs our fakes
give (logprobs included) must pass SGLang's response contract; the in-process transport must
hand SGLang real `GenerateReqInput`s and call its runtime as its source defines; the plugin
must register with SGLang's `HookRegistry`, wrap the real `SchedulePolicy.calc_priority`,
order real `Req`s, and pin prefixes in a real (simulated-memory) `RadixCache`.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

io_struct = pytest.importorskip("sglang.srt.managers.io_struct", exc_type=ImportError)
schedule_batch = pytest.importorskip("sglang.srt.managers.schedule_batch", exc_type=ImportError)

from fake_sglang import (  # noqa: E402
    CUMULATIVE_LOGPROB_EVENTS,
    INCREMENTAL_LOGPROB_EVENTS,
    FakeSGLang,
    to_json,
)
from fake_sglang_runtime import FakeSGLangRuntime  # noqa: E402

from engine.protocol import GenerateRequest as EngineRequest  # noqa: E402
from engine.protocol import SamplingParams, Scheduling  # noqa: E402
from engine.sglang.config import SGLangConfig  # noqa: E402
from engine.sglang.engine import SGLangEngine  # noqa: E402
from engine.sglang.inprocess import InProcessTransport  # noqa: E402
from engine.sglang.plugin import ALLOCATABLE, CALC_PRIORITY, ParrotPlugin, RadixTree  # noqa: E402
from engine.sglang.policy import PinBook  # noqa: E402
from engine.sglang.requests import generate_body, rid_of, sampling_params, tag_for  # noqa: E402


def _body(logprobs: int | None = None, **sampling) -> dict:
    scheduling = Scheduling(objective="latency", priority=1, app_id="t/s", group_id="g")
    params = sampling_params(SamplingParams(**sampling))
    config = SGLangConfig(url="u", send_priority=True)
    return generate_body(
        config, rid_of("r1"), [5, 6, 7], params, scheduling, tag_for(scheduling), True, logprobs
    )


def test_bodies_pass_sglangs_contract_and_build_a_generate_req_input() -> None:
    from sglang.api.v1.api_types import GenerateRequest

    body = _body(max_tokens=5, top_k=3, stop=["x"], seed=2, ignore_eos=True, min_tokens=1)
    GenerateRequest.from_json_value(body)  # raises JsonContractError on a bad field
    req = io_struct.GenerateReqInput(**body)
    req.normalize_batch_and_arguments()
    assert req.rid == "r1#" and req.input_ids == [5, 6, 7] and req.priority == 11
    assert req.routing_key.startswith("parrot1:") and req.stream is True
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLangSampling

    params = SGLangSampling(**body["sampling_params"])
    assert params.max_new_tokens == 5 and params.sampling_seed == 2 and params.ignore_eos


async def test_logprob_bodies_pass_and_fake_outputs_match_sglangs_response_contract() -> None:
    from sglang.api.v1.api_types import GenerateRequest, GenerateResponse

    body = _body(logprobs=3, max_tokens=2)
    GenerateRequest.from_json_value(body)
    req = io_struct.GenerateReqInput(**body)
    req.normalize_batch_and_arguments()
    assert req.return_logprob is True and req.top_logprobs_num == 3
    assert req.logprob_start_len == -1
    events = CUMULATIVE_LOGPROB_EVENTS + INCREMENTAL_LOGPROB_EVENTS
    for incremental in (False, True):
        fake = FakeSGLang(incremental=incremental)
        events += [json.loads(to_json(o)) async for o in fake.outputs(body)]
    for event in events:
        meta = GenerateResponse.from_json_value(event).meta_info
        assert len(meta.output_token_logprobs) >= 1


def _params(module: str, cls: str, method: str) -> list[str]:
    """A method's parameter names, read from SGLang's source (importing the module needs
    its GPU-side dependencies)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    owner = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    fn = next(
        n
        for n in owner.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == method
    )
    args = fn.args
    return [a.arg for a in [*args.args, *args.kwonlyargs]] + (
        [f"**{args.kwarg.arg}"] if args.kwarg else []
    )


def test_the_in_process_calls_match_sglangs_source() -> None:
    manager = "sglang.srt.managers.tokenizer_manager"
    assert _params(manager, "TokenizerManager", "generate_request")[:3] == [
        "self",
        "obj",
        "request",
    ]
    assert _params(manager, "TokenizerManager", "abort_request")[:2] == ["self", "rid"]
    engine = "sglang.srt.entrypoints.engine"
    assert _params(engine, "Engine", "__init__") == ["self", "**kwargs"]
    assert _params(engine, "Engine", "shutdown") == ["self"]
    # Why the transport goes to the tokenizer manager: async_generate drops routing_key,
    # the field that carries Parrot's tag (this fails once SGLang accepts it there).
    assert "routing_key" not in _params(engine, "Engine", "async_generate")
    source = Path(importlib.util.find_spec(manager).origin).read_text()
    for attribute in ("context_len", "served_model_name", "tokenizer"):
        assert f"self.{attribute} = " in source


async def test_the_in_process_transport_hands_sglang_real_requests() -> None:
    runtime = FakeSGLangRuntime()
    config = SGLangConfig(model_path="models/fake")
    transport = InProcessTransport(config, runtime, io_struct.GenerateReqInput)
    engine = SGLangEngine(config, transport=transport)
    await engine.start()
    request = EngineRequest(
        request_id="r",
        context_id="r",
        prompt_token_ids=[1, 2],
        sampling=SamplingParams(max_tokens=3, temperature=0.0, logprobs=2),
        free_on_finish=True,
    )
    chunks = [c async for c in engine.generate(request)]
    assert [len(c.logprobs[0].top) for c in chunks] == [2, 2, 2]
    sent = runtime.fake.bodies[-1]
    assert sent["routing_key"].startswith("parrot1:") and sent["return_logprob"] is True


def _req(rid: str, tag_scheduling: Scheduling, ids: list[int], **declare: str):
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLangSampling

    return schedule_batch.Req(
        rid=rid,
        origin_input_text="",
        origin_input_ids=ids,
        sampling_params=SGLangSampling(max_new_tokens=1),
        routing_key=tag_for(tag_scheduling, **declare).encode(),
    )


def test_plugin_wraps_the_real_calc_priority_and_orders_real_reqs() -> None:
    from sglang.srt.managers import schedule_policy
    from sglang.srt.plugins.hook_registry import HookRegistry

    original = schedule_policy.SchedulePolicy.calc_priority
    seen: list[list[str]] = []

    def fake_sglang_sort(self, waiting_queue, running_batch=None, processed_tokens=0):
        seen.append([r.rid for r in waiting_queue])

    # Stand in for SGLang's body (it needs a configured server), keep the real hook path.
    schedule_policy.SchedulePolicy.calc_priority = fake_sglang_sort
    HookRegistry.reset()
    try:
        from engine.sglang.plugin import register

        plugin = register()
        assert {CALC_PRIORITY, ALLOCATABLE} <= set(HookRegistry._hooks)
        HookRegistry.apply_hooks()
        wrapped = schedule_policy.SchedulePolicy.calc_priority
        assert wrapped is not fake_sglang_sort
        policy = object.__new__(schedule_policy.SchedulePolicy)
        policy.tree_cache = None
        queue = [
            _req("bg#", Scheduling(objective="throughput", app_id="a"), [1]),
            _req("chat#", Scheduling(objective="latency", app_id="b"), [2]),
        ]
        wrapped(policy, queue, None, processed_tokens=0)
        assert seen == [["bg#", "chat#"]] and [r.rid for r in queue] == ["chat#", "bg#"]
        assert isinstance(plugin, ParrotPlugin)
    finally:
        schedule_policy.SchedulePolicy.calc_priority = original
        HookRegistry.reset()


def test_pins_protect_a_real_radix_cache_node_from_eviction() -> None:
    import torch
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey

    class FakeAllocator:  # the KV pool: eviction hands freed slots back here
        device = "cpu"

        def free_segment(self, value, start_pos=0):
            pass

    cache = RadixCache.create_simulated(mock_allocator=FakeAllocator())
    prefix = list(range(100, 164))
    cache.insert(InsertParams(key=RadixKey(prefix), value=torch.arange(64)))
    cache.insert(InsertParams(key=RadixKey(list(range(500, 532))), value=torch.arange(32)))
    tree, pins = RadixTree(cache), PinBook()
    fill = _req("fill:px#", Scheduling(), prefix, pin="px")
    pins.observe(tree, [fill], [])
    pins.observe(tree, [], [])  # the fill is done: pin it
    assert pins.pinned("px")
    cache.evict(EvictParams(num_tokens=10_000))
    assert tree.match(prefix)[0] == 64  # kept
    assert tree.match(list(range(500, 532)))[0] == 0  # the unpinned one went
    pins.observe(tree, [_req("free:px#", Scheduling(), prefix[:1], unpin="px")], [])
    cache.evict(EvictParams(num_tokens=10_000))
    assert tree.match(prefix)[0] == 0
