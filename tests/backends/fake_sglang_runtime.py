"""`FakeSGLangRuntime`: a named fake of an in-process `sglang.Engine`, for the in-process
transport, and `FakeGenerateReqInput`, a fake of SGLang's request dataclass.

It mirrors what the transport uses, as in SGLang 0.5.23 (`srt/entrypoints/engine.py`,
`srt/managers/tokenizer_manager.py`): `runtime.tokenizer_manager` with
`generate_request(obj, request=None)` (an async generator of output dicts - the same
outputs as `fake_sglang.FakeSGLang`, logprob entries as tuples, cumulative outputs sharing
the live `output_ids` list - that raises ValueError for a request longer than the context,
and aborts a dispatched request when closed early), `abort_request(rid="", abort_all=False)`
(the request then finishes with an abort), `tokenizer` (transformers-style), `context_len`
and `served_model_name`; and `runtime.shutdown()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fake_sglang import FakeSGLang


@dataclass(kw_only=True)
class FakeGenerateReqInput:
    """The GenerateReqInput fields the backend sends; any other keyword is a TypeError, as
    for SGLang's dataclass."""

    rid: str | None = None
    input_ids: list[int] | None = None
    sampling_params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    routing_key: str | None = None
    priority: int | None = None
    return_logprob: bool | None = None
    top_logprobs_num: int | None = None
    logprob_start_len: int | None = None


class FakeTokenizer:
    """Bytes as tokens, with transformers' method names."""

    def __len__(self) -> int:
        return 256

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode(errors="replace")

    def apply_chat_template(
        self, messages: list[dict], tokenize: bool = True, add_generation_prompt: bool = False
    ) -> str:
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class FakeTokenizerManager:
    def __init__(self, outputs: FakeSGLang, context_len: int) -> None:
        self.outputs = outputs
        self.context_len = context_len
        self.served_model_name = "fake-runtime"
        self.tokenizer: FakeTokenizer | None = FakeTokenizer()
        self.closed_early: list[str] = []

    async def generate_request(
        self, obj: FakeGenerateReqInput, request: Any = None
    ) -> AsyncIterator[dict]:
        body = {k: v for k, v in vars(obj).items() if v is not None}
        total = len(obj.input_ids or ()) + obj.sampling_params.get("max_new_tokens", 0)
        if total > self.context_len:
            raise ValueError(
                "Requested token count exceeds the model's maximum context length of "
                f"{self.context_len} tokens."
            )
        if not obj.stream:
            yield self.outputs.output(body)
            return
        finished = False
        try:
            async for output in self.outputs.outputs(body):
                finished = output["meta_info"]["finish_reason"] is not None
                yield output
        finally:
            if not finished:  # closed early: SGLang aborts the dispatched request
                self.closed_early.append(obj.rid or "")

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.outputs.aborts.append(rid)


class FakeSGLangRuntime:
    def __init__(self, incremental: bool = False, delay_s: float = 0.0, context_len: int = 2048):
        self.fake = FakeSGLang(incremental=incremental, delay_s=delay_s)
        self.tokenizer_manager = FakeTokenizerManager(self.fake, context_len)
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True
