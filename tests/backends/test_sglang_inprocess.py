"""The SGLang backend's in-process mode: an `sglang.Engine` in this process, driven through its
tokenizer manager - against `FakeSGLangRuntime`, and a real runtime where CUDA, sglang and
PARROT_SGLANG_MODEL are all present."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
from fake_sglang_runtime import FakeGenerateReqInput, FakeSGLangRuntime

from engine.echo import EchoEngine
from engine.errors import ContextLengthExceeded, EngineUnavailable, InvalidRequest
from engine.openai.tokenizer import EngineTokenizer
from engine.protocol import ChatMessage, FillRequest, GenerateRequest, SamplingParams
from engine.sglang.config import SGLangConfig
from engine.sglang.engine import SGLangEngine
from engine.sglang.factory import create_sglang_engine, runtime_args
from engine.sglang.inprocess import InProcessTransport, runtime_error
from gateway.cli import _backend, build_parser


def _engine(runtime: FakeSGLangRuntime, **config) -> SGLangEngine:
    cfg = SGLangConfig(model_path="models/fake", **config)
    return SGLangEngine(cfg, transport=InProcessTransport(cfg, runtime, FakeGenerateReqInput))


def _request(rid: str, tokens: list[int], max_tokens: int = 4) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid,
        context_id=rid,
        prompt_token_ids=tokens,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        free_on_finish=True,
    )


async def test_the_runtimes_model_and_tokenizer_serve_the_engine() -> None:
    runtime = FakeSGLangRuntime()
    engine = _engine(runtime)
    await engine.start()
    assert engine.info.model == "fake-runtime" and engine.info.engine_id == "sglang@models/fake"
    assert engine.info.vocab_size == 256 and await engine.health()
    assert await engine.tokenize("hi") == [104, 105]
    assert await engine.detokenize([104, 105]) == "hi"
    assert await engine.render_chat([ChatMessage("user", "hi")]) == "<user>hi\n<assistant>"
    await engine.close()
    assert runtime.shut_down and not await engine.health()


async def test_a_runtime_without_a_tokenizer_needs_a_local_one() -> None:
    runtime = FakeSGLangRuntime()
    runtime.tokenizer_manager.tokenizer = None  # SGLang's skip_tokenizer_init
    with pytest.raises(EngineUnavailable, match="no tokenizer"):
        await _engine(runtime).start()
    cfg = SGLangConfig(model_path="models/fake")
    transport = InProcessTransport(cfg, runtime, FakeGenerateReqInput)
    engine = SGLangEngine(cfg, EngineTokenizer(EchoEngine()), transport)
    await engine.start()
    chunks = [c async for c in engine.generate(_request("t", [1, 2]))]
    assert "".join(c.text for c in chunks) == "sgla"


async def test_sglangs_own_errors_become_engine_errors() -> None:
    # Configured larger than the runtime's window: SGLang's ValueError comes back typed.
    engine = _engine(FakeSGLangRuntime(context_len=64), context_length=100_000)
    await engine.start()
    with pytest.raises(ContextLengthExceeded, match="maximum context length"):
        [c async for c in engine.generate(_request("big", list(range(100))))]
    assert isinstance(runtime_error("w", ValueError("bad top_p")), InvalidRequest)

    class HTTPException(Exception):  # fastapi's, as SGLang raises it for non-stream aborts
        def __init__(self, status_code: int, detail: str) -> None:
            self.status_code, self.detail = status_code, detail

    assert isinstance(runtime_error("w", HTTPException(503, "busy")), EngineUnavailable)
    assert isinstance(runtime_error("w", HTTPException(400, "no")), InvalidRequest)
    assert isinstance(runtime_error("w", RuntimeError("scheduler died")), EngineUnavailable)


async def test_closing_a_stream_early_stops_the_runtimes_request() -> None:
    runtime = FakeSGLangRuntime(delay_s=0.01)
    engine = _engine(runtime)
    await engine.start()
    await engine.fill(FillRequest(context_id="p", token_ids=[1, 2]))
    stream = engine.generate(_request("early", [3], max_tokens=100))
    await anext(stream)
    await stream.aclose()
    assert runtime.tokenizer_manager.closed_early == ["early#"]
    assert (await engine.stats()).num_running == 0


async def test_without_sglang_the_in_process_mode_says_what_is_missing(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sglang", None)  # import fails as if not installed
    engine = create_sglang_engine(model_path="models/any")
    assert isinstance(engine.transport, InProcessTransport)
    with pytest.raises(EngineUnavailable, match="needs the sglang package"):
        await engine.start()


def test_config_factory_and_cli_choose_one_mode() -> None:
    with pytest.raises(ValueError, match="url or a model path"):
        SGLangConfig()
    with pytest.raises(ValueError, match="url or a model path"):
        SGLangConfig(url="http://x", model_path="m")
    assert runtime_args(["tp_size=2", "mem-fraction-static=0.8", "dtype=bfloat16"]) == (
        ("tp_size", 2),
        ("mem_fraction_static", 0.8),
        ("dtype", "bfloat16"),
    )
    with pytest.raises(ValueError, match="KEY=VALUE"):
        runtime_args(["tp_size"])
    parser = build_parser()
    argv = ["engine", "--port", "9", "--backend", "sglang", "--sglang-model", "/m"]
    kind, engine = _backend(parser.parse_args([*argv, "--sglang-arg", "tp_size=2"]))
    assert kind == "sglang" and isinstance(engine.transport, InProcessTransport)
    assert engine.config.runtime_args == (("tp_size", 2),)
    with pytest.raises(SystemExit, match="one of --upstream URL and --sglang-model"):
        _backend(parser.parse_args([*argv, "--upstream", "http://x"]))
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        _backend(parser.parse_args([*argv, "--sglang-arg", "oops"]))


def _cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(
    not os.environ.get("PARROT_SGLANG_MODEL")
    or importlib.util.find_spec("sglang") is None
    or not _cuda(),
    reason="needs CUDA, sglang and PARROT_SGLANG_MODEL (a model path)",
)
async def test_real_sglang_runtime_in_process() -> None:
    """`sglang.Engine(model_path=$PARROT_SGLANG_MODEL)` in this process, greedy with logprobs."""
    engine = create_sglang_engine(model_path=os.environ["PARROT_SGLANG_MODEL"])
    await engine.start()
    try:
        ids = await engine.tokenize("The capital of France is")
        await engine.fill(FillRequest(context_id="p", token_ids=ids))
        request = GenerateRequest(
            request_id="s1",
            context_id="s1",
            parent_context_id="p",
            prompt_token_ids=[],
            sampling=SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, logprobs=3),
            free_on_finish=True,
        )
        chunks = [c async for c in engine.generate(request)]
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 8
        assert chunks[-1].usage.cached_tokens > 0  # the filled prefix hit the radix cache
        logprobs = [lp for c in chunks for lp in c.logprobs or ()]
        assert [lp.token_id for lp in logprobs] == [t for c in chunks for t in c.token_ids]
        # Greedy: the sampled token is the most likely one.
        assert all(len(lp.top) == 3 and lp.top[0].token_id == lp.token_id for lp in logprobs)
        await engine.free("p")
    finally:
        await engine.close()
