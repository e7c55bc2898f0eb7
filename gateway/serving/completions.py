"""Legacy completions: prompts -> generation -> `text_completion` (or its chunks).

Each prompt of a list gets `n` choices, numbered `prompt_index * n + j` as OpenAI does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from engine.protocol import GenerateChunk
from gateway.protocol.openai import COMPLETION_DECODER, CompletionRequest
from gateway.protocol.responses import (
    ENCODER,
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    UsageInfo,
)
from gateway.serving.dispatch import new_request_id
from gateway.serving.logprobs import completion_logprobs
from gateway.serving.prompts import Prompt
from gateway.serving.runner import Call
from gateway.serving.validation import check_sampling, decode

if TYPE_CHECKING:
    from litestar.types import Receive

    from gateway.services import Services
    from gateway.transport import JsonResponse, SseResponse

ROUTE = "completions"


class CompletionAssembler:
    def __init__(self, response_id: str, model: str, echoes: list[str]) -> None:
        """`echoes[i]`: text put before choice i's completion (its prompt with `echo`)."""
        self._id = response_id
        self._model = model
        self._created = int(time.time())
        self._echoes = echoes
        self._texts: list[list[str]] = [[e] if e else [] for e in echoes]
        self._offsets = [len(e) for e in echoes]  # characters so far, for text_offset
        self._logprobs: list[CompletionLogprobs | None] = [None] * len(echoes)
        self._finish: list[str | None] = [None] * len(echoes)

    def _chunk_logprobs(
        self, index: int, chunk: GenerateChunk, texts: dict[int, str] | None
    ) -> CompletionLogprobs | None:
        if texts is None or not chunk.logprobs:
            return None
        logprobs = completion_logprobs(chunk.logprobs, texts, self._offsets[index])
        return logprobs

    def add(self, index: int, chunk: GenerateChunk, texts: dict[int, str] | None) -> None:
        self._texts[index].append(chunk.text)
        part = self._chunk_logprobs(index, chunk, texts)
        self._offsets[index] += len(chunk.text)
        if part is not None:
            whole = self._logprobs[index]
            if whole is None:
                self._logprobs[index] = part
            else:
                whole.tokens += part.tokens
                whole.token_logprobs += part.token_logprobs
                if whole.top_logprobs is None:
                    whole.top_logprobs = []
                whole.top_logprobs += part.top_logprobs or []
                whole.text_offset += part.text_offset
        if chunk.finish_reason is not None:
            self._finish[index] = chunk.finish_reason

    def response(self, usage: UsageInfo) -> Completion:
        choices = [
            CompletionChoice("".join(parts), index, self._logprobs[index], self._finish[index])
            for index, parts in enumerate(self._texts)
        ]
        return Completion(self._id, "text_completion", self._created, self._model, choices, usage)

    def _frame(self, choices: list[CompletionChoice], usage: UsageInfo | None = None) -> bytes:
        chunk = CompletionChunk(
            self._id, "text_completion", self._created, self._model, choices, usage
        )
        return b"data: " + ENCODER.encode(chunk) + b"\n\n"

    def stream_start(self) -> bytes:
        return b"".join(
            self._frame([CompletionChoice(echo, index, None, None)])
            for index, echo in enumerate(self._echoes)
            if echo
        )

    def stream_chunk(self, index: int, chunk: GenerateChunk, texts: dict[int, str] | None) -> bytes:
        logprobs = self._chunk_logprobs(index, chunk, texts)
        self._offsets[index] += len(chunk.text)
        choice = CompletionChoice(chunk.text, index, logprobs, chunk.finish_reason)
        return self._frame([choice])

    def stream_usage(self, usage: UsageInfo) -> bytes:
        return self._frame([], usage)


async def create_completion(
    services: Services, raw: bytes, tenant: str, receive: Receive
) -> JsonResponse | SseResponse:
    body: CompletionRequest = decode(COMPLETION_DECODER, raw)
    body.check()
    dispatcher = services.dispatcher
    info = dispatcher.resolve(body.model)
    prompts: list[Prompt] = []
    echoes: list[str] = []
    for item in body.prompts():
        if isinstance(item, str):
            prompt = await dispatcher.text_prompt(body.model, item)
            echo = item
        else:
            prompt = dispatcher.token_prompt(info, item)
            echo = await dispatcher.detokenize(body.model, item) if body.echo else ""
        prompts.append(prompt)
        echoes.extend([echo if body.echo else ""] * body.n)
    requested = body.requested_max_tokens()
    jobs = [
        (
            p,
            check_sampling(
                body, body.sampling(dispatcher.max_tokens(info, p, requested, "prompt")), info
            ),
        )
        for p in prompts
    ]
    request_id = new_request_id()
    generation = await dispatcher.dispatch(
        body.model, info, jobs, body.n, body.scheduling(tenant), request_id
    )
    call = Call(
        route=ROUTE,
        model=body.model,
        request_id=request_id,
        prompt_tokens=sum(len(p) for p in prompts),
        choices_per_prompt=body.n,
        include_usage=body.include_usage,
        detokenize=services.detokenizer(body.model) if body.logprobs is not None else None,
        tokens_as_ids=body.return_tokens_as_token_ids,
    )
    assembler = CompletionAssembler(f"cmpl-{request_id}", body.model, echoes)
    if body.stream:
        return await services.runner.stream(call, generation, assembler, receive)
    return await services.runner.respond(call, generation, assembler, receive)
