"""`FakeSGLangServer`: a named fake of the SGLang HTTP server's native API, for the backend.

It mirrors only what the backend relies on, with the shapes of SGLang 0.5
(`srt/entrypoints/http_server.py`, `srt/managers/io_struct.py`): `GET /v1/models`
(`max_model_len`), `POST /tokenize` (`tokens`), `POST /detokenize` (`text`),
`POST /generate` (GenerateReqInput; streamed `data:` events of `text`, `output_ids`,
`meta_info` with `finish_reason` {"type": ...}, `prompt_tokens`, `completion_tokens`,
`cached_tokens`, cumulative unless `incremental`), `POST /abort_request` (`rid` prefix
match) and `GET /health`. Tokens are bytes; the reply is a fixed text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.response import Stream

REPLY = b"sglang says hi. " * 16


class FakeSGLangServer:
    def __init__(self, incremental: bool = False, delay_s: float = 0.0) -> None:
        self.incremental = incremental
        self.delay_s = delay_s
        self.bodies: list[dict[str, Any]] = []
        self.aborts: list[str] = []
        self.cache: set[tuple[int, ...]] = set()  # prompts seen: a crude radix cache

    def _cached(self, ids: list[int]) -> int:
        best = 0
        for seen in self.cache:
            n = 0
            for a, b in zip(seen, ids, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best

    def _meta(self, body: dict, n_out: int, finished: bool, aborted: bool) -> dict:
        finish = None
        if aborted:
            finish = {"type": "abort", "message": "Abort before prefill"}
        elif finished:
            finish = {"type": "length", "length": n_out}
        return {
            "id": body["rid"],
            "finish_reason": finish,
            "prompt_tokens": len(body["input_ids"]),
            "completion_tokens": n_out,
            "cached_tokens": self._cached(body["input_ids"]),
        }

    async def _events(self, body: dict) -> AsyncIterator[bytes]:
        n = body["sampling_params"]["max_new_tokens"]
        out: list[int] = []
        for i in range(n):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            aborted = any(body["rid"].startswith(a) for a in self.aborts)
            out.append(REPLY[i % len(REPLY)])
            done = aborted or i == n - 1
            ids = out[-1:] if self.incremental else list(out)
            text = bytes(ids).decode()
            event = {
                "text": text,
                "output_ids": ids,
                "meta_info": self._meta(body, len(out), done, aborted),
            }
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
            if done:
                break
        self.cache.add(tuple(body["input_ids"] + out))
        yield b"data: [DONE]\n\n"

    def app(self) -> Litestar:
        fake = self

        @get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": "fake-sglang", "max_model_len": 2048}]}

        @get("/health")
        async def health() -> dict:
            return {}

        @post("/tokenize", status_code=200)
        async def tokenize(request: Request) -> dict:
            data = json.loads(await request.body())
            ids = list(data["prompt"].encode())
            return {"tokens": ids, "count": len(ids), "max_model_len": 2048}

        @post("/detokenize", status_code=200)
        async def detokenize(request: Request) -> dict:
            data = json.loads(await request.body())
            return {"text": bytes(data["tokens"]).decode(errors="replace")}

        @post("/abort_request", status_code=200)
        async def abort(request: Request) -> None:
            data = json.loads(await request.body())
            fake.aborts.append(data["rid"])

        @post("/generate", status_code=200)
        async def generate(request: Request) -> Any:
            body = json.loads(await request.body())
            fake.bodies.append(body)
            if body.get("stream"):
                return Stream(fake._events(body), media_type="text/event-stream")
            cached = fake._cached(body["input_ids"])
            fake.cache.add(tuple(body["input_ids"]))
            meta = fake._meta(body, 0, True, False) | {"cached_tokens": cached}
            return {"text": "", "output_ids": [], "meta_info": meta}

        return Litestar([models, health, tokenize, detokenize, abort, generate])
