"""`FakeSGLang`: a named fake of SGLang's generate outputs, and `FakeSGLangServer`, a fake of
the SGLang HTTP server's native API serving them, for the backend.

Shapes as in SGLang 0.5.23 (`srt/entrypoints/http_server.py`, `srt/managers/io_struct.py`,
`srt/managers/tokenizer_manager.py`): `GET /v1/models` (`max_model_len`), `POST /tokenize`
(`tokens`), `POST /detokenize` (`text`), `POST /generate` (GenerateReqInput; streamed
`data:` events of `text`, `output_ids`, `meta_info` with `finish_reason` {"type": ...},
`prompt_tokens`, `completion_tokens`, `cached_tokens` and, with `return_logprob`,
`output_token_logprobs` ([logprob, token_id, null] per token) and `output_top_logprobs`
(`top_logprobs_num` such entries per token); cumulative unless `incremental`, where each
output carries only the new ids and their logprobs), `POST /abort_request` (`rid` prefix
match) and `GET /health`. Tokens are bytes; the reply is a fixed text. The logprob of token i
is -(i+1)/8 and its alternatives are the next byte values, the third one at -inf (which
SGLang's JSON encoder writes as null).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litestar import Litestar

REPLY = b"sglang says hi. " * 16


# `/generate` stream events with `return_logprob: true, top_logprobs_num: 2`, in the shape of
# SGLang 0.5.23's source (written from it, not recorded from a running server):
# [logprob, token_id, text] entries (text null without `return_text_in_logprobs`), one top
# list per position, -inf written as null. Cumulative mode repeats the lists in full...
CUMULATIVE_LOGPROB_EVENTS = [
    {
        "text": "Hi",
        "output_ids": [72],
        "meta_info": {
            "completion_tokens": 1,
            "output_token_logprobs": [[-0.5, 72, None]],
            "output_top_logprobs": [[[-0.5, 72, None], [-1.25, 104, None]]],
        },
    },
    {
        "text": "Hi!",
        "output_ids": [72, 33],
        "meta_info": {
            "completion_tokens": 2,
            "finish_reason": {"type": "length", "length": 2},
            "output_token_logprobs": [[-0.5, 72, None], [-2.0, 33, None]],
            "output_top_logprobs": [
                [[-0.5, 72, None], [-1.25, 104, None]],
                [[-0.75, 46, None], [None, 63, None]],
            ],
        },
    },
]
# ... and `--incremental-streaming-output` slices them like `output_ids`.
INCREMENTAL_LOGPROB_EVENTS = [
    CUMULATIVE_LOGPROB_EVENTS[0],
    {
        "text": "!",
        "output_ids": [33],
        "meta_info": {
            "completion_tokens": 2,
            "finish_reason": {"type": "length", "length": 2},
            "output_token_logprobs": [[-2.0, 33, None]],
            "output_top_logprobs": [[[-0.75, 46, None], [None, 63, None]]],
        },
    },
]


def _entry(logprob: float, token_id: int) -> tuple[float, int, None]:
    return (logprob, token_id, None)


class FakeSGLang:
    """The generate outputs of a fake SGLang, as dicts the way its tokenizer manager yields
    them (logprob entries are tuples, as in process)."""

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
            finish = {"type": "abort", "message": "Aborted", "status_code": None}
        elif finished:
            finish = {"type": "length", "length": n_out}
        return {
            "id": body["rid"],
            "finish_reason": finish,
            "prompt_tokens": len(body["input_ids"]),
            "completion_tokens": n_out,
            "cached_tokens": self._cached(body["input_ids"]),
        }

    @staticmethod
    def _logprobs(body: dict, out: list[int], start: int) -> dict:
        if not body.get("return_logprob"):
            return {}
        k = body.get("top_logprobs_num") or 0
        chosen, tops = [], []
        for i in range(start, len(out)):
            value = -(i + 1) / 8
            chosen.append(_entry(value, out[i]))
            alternatives = [_entry(value - j, (out[i] + j) % 256) for j in range(k)]
            if k >= 3:
                alternatives[2] = _entry(-math.inf, alternatives[2][1])
            tops.append(alternatives)
        meta = {"output_token_logprobs": chosen}
        return meta | ({"output_top_logprobs": tops} if k else {})

    def aborted(self, rid: str) -> bool:
        return any(rid.startswith(a) for a in self.aborts)

    async def outputs(self, body: dict) -> AsyncIterator[dict]:
        """A streamed request's outputs; cumulative ones share the live `output_ids` list,
        as SGLang's do in process."""
        self.bodies.append(body)
        n = body["sampling_params"]["max_new_tokens"]
        out: list[int] = []
        for i in range(n):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            aborted = self.aborted(body["rid"])
            out.append(REPLY[i % len(REPLY)])
            done = aborted or i == n - 1
            start = len(out) - 1 if self.incremental else 0
            meta = self._meta(body, len(out), done, aborted) | self._logprobs(body, out, start)
            ids = out[start:] if self.incremental else out
            yield {"text": bytes(ids).decode(), "output_ids": ids, "meta_info": meta}
            if done:
                break
        self.cache.add(tuple(body["input_ids"] + out))

    def output(self, body: dict) -> dict:
        """A prefill-only (`max_new_tokens: 0`, not streamed) request's output."""
        self.bodies.append(body)
        cached = self._cached(body["input_ids"])
        self.cache.add(tuple(body["input_ids"]))
        meta = self._meta(body, 0, True, False) | {"cached_tokens": cached}
        return {"text": "", "output_ids": [], "meta_info": meta}


def _json_default(value: Any) -> Any:
    raise TypeError(f"not JSON: {value!r}")


def to_json(output: dict) -> bytes:
    """As SGLang's orjson encoding: tuples become lists, -inf becomes null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return json.dumps(clean(output), default=_json_default).encode()


class FakeSGLangServer(FakeSGLang):
    async def _events(self, body: dict) -> AsyncIterator[bytes]:
        async for output in self.outputs(body):
            yield b"data: " + to_json(output) + b"\n\n"
        yield b"data: [DONE]\n\n"

    def app(self) -> Litestar:
        # Imported here: the outputs alone are also used where only SGLang is installed.
        from litestar import Litestar, Request, get, post
        from litestar.response import Stream

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
            if body.get("stream"):
                return Stream(fake._events(body), media_type="text/event-stream")
            return json.loads(to_json(fake.output(body)))

        return Litestar([models, health, tokenize, detokenize, abort, generate])
