"""Chat completions: request -> prompt -> generation -> `chat.completion` (or its chunks)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from engine.protocol import GenerateChunk
from gateway.protocol.openai import CHAT_DECODER, ChatCompletionRequest
from gateway.protocol.responses import (
    ENCODER,
    AssistantReply,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    TokenLogprob,
    UsageInfo,
)
from gateway.serving.dispatch import new_request_id
from gateway.serving.logprobs import chat_logprobs
from gateway.serving.runner import Call
from gateway.serving.validation import check_sampling, decode

if TYPE_CHECKING:
    from litestar.types import Receive

    from gateway.services import Services
    from gateway.transport import JsonResponse, SseResponse

ROUTE = "chat.completions"
_ROLE = ChatDelta(role="assistant", content="")
_FINISHED = ChatDelta()


class ChatAssembler:
    def __init__(self, response_id: str, model: str, n: int) -> None:
        self._id = response_id
        self._model = model
        self._created = int(time.time())
        self._texts: list[list[str]] = [[] for _ in range(n)]
        self._logprobs: list[list[TokenLogprob] | None] = [None] * n
        self._finish: list[str | None] = [None] * n

    def add(self, index: int, chunk: GenerateChunk, texts: dict[int, str] | None) -> None:
        self._texts[index].append(chunk.text)
        if texts is not None and chunk.logprobs:
            so_far = self._logprobs[index]
            if so_far is None:
                so_far = self._logprobs[index] = []
            so_far.extend(chat_logprobs(chunk.logprobs, texts).content or ())
        if chunk.finish_reason is not None:
            self._finish[index] = chunk.finish_reason

    def response(self, usage: UsageInfo) -> ChatCompletion:
        choices = []
        for index, parts in enumerate(self._texts):
            logprobs = self._logprobs[index]
            choices.append(
                ChatChoice(
                    index=index,
                    message=AssistantReply("assistant", "".join(parts)),
                    logprobs=None if logprobs is None else ChoiceLogprobs(content=logprobs),
                    finish_reason=self._finish[index],
                )
            )
        return ChatCompletion(
            self._id, "chat.completion", self._created, self._model, choices, usage
        )

    def _frame(self, choices: list[ChatChunkChoice], usage: UsageInfo | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            self._id, "chat.completion.chunk", self._created, self._model, choices, usage
        )
        return b"data: " + ENCODER.encode(chunk) + b"\n\n"

    def stream_start(self) -> bytes:
        # OpenAI opens every choice with a role-only delta.
        return b"".join(
            self._frame([ChatChunkChoice(index, _ROLE)]) for index in range(len(self._texts))
        )

    def stream_chunk(self, index: int, chunk: GenerateChunk, texts: dict[int, str] | None) -> bytes:
        frames = b""
        if chunk.text or chunk.logprobs:
            logprobs = None
            if texts is not None and chunk.logprobs:
                logprobs = chat_logprobs(chunk.logprobs, texts)
            delta = ChatDelta(content=chunk.text)
            frames = self._frame([ChatChunkChoice(index, delta, logprobs)])
        if chunk.finish_reason is not None:
            finish = ChatChunkChoice(index, _FINISHED, None, chunk.finish_reason)
            frames += self._frame([finish])
        return frames

    def stream_usage(self, usage: UsageInfo) -> bytes:
        return self._frame([], usage)


async def create_chat_completion(
    services: Services, raw: bytes, tenant: str, receive: Receive
) -> JsonResponse | SseResponse:
    body: ChatCompletionRequest = decode(CHAT_DECODER, raw)
    body.check()
    dispatcher = services.dispatcher
    info = dispatcher.resolve(body.model)
    prompt = await dispatcher.chat_prompt(body.model, body.engine_messages())
    max_tokens = dispatcher.max_tokens(info, prompt, body.requested_max_tokens(), "messages")
    sampling = check_sampling(body, body.sampling(max_tokens), info)
    request_id = new_request_id()
    generation = await dispatcher.dispatch(
        body.model, info, [(prompt, sampling)], body.n, body.scheduling(tenant), request_id
    )
    call = Call(
        route=ROUTE,
        model=body.model,
        request_id=request_id,
        prompt_tokens=len(prompt),
        choices_per_prompt=body.n,
        include_usage=body.include_usage,
        detokenize=services.detokenizer(body.model) if body.logprobs else None,
        tokens_as_ids=body.return_tokens_as_token_ids,
    )
    assembler = ChatAssembler(f"chatcmpl-{request_id}", body.model, body.n)
    if body.stream:
        return await services.runner.stream(call, generation, assembler, receive)
    return await services.runner.respond(call, generation, assembler, receive)
