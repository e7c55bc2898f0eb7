"""`InProcessTransport`: the SGLang backend over an `sglang.Engine` in this process (no HTTP).

The runtime is SGLang's offline engine (`srt/entrypoints/engine.py`), built from the
config's `model_path` and `runtime_args` (keywords of SGLang's ServerArgs). A request is the
body the HTTP transport would post, made into a `GenerateReqInput` and handed to the
runtime's `tokenizer_manager.generate_request(obj, None)`: that is what
`Engine.async_generate` does, but `async_generate` (SGLang 0.5.23) has no `routing_key`
parameter, and the routing key carries Parrot's tag to the plugin. Aborts call
`tokenizer_manager.abort_request(rid=...)`; closing a stream early also aborts (SGLang
aborts a dispatched request whose generator is closed).

`sglang` is imported only when a runtime is started here, so everything else runs without it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgspec

from engine.errors import EngineError, EngineUnavailable
from engine.openai.errors import upstream_error
from engine.openai.tokenizer import HFTokenizer
from engine.sglang.config import SGLangConfig
from engine.sglang.outputs import Output
from engine.sglang.transport import ServerFacts

MISSING = (
    "the in-process SGLang engine needs the sglang package (it runs on CUDA GPUs; see "
    "SGLang's install guide), or give the engine a launched server's URL instead"
)


def request_type() -> Callable[..., Any]:
    """SGLang's `GenerateReqInput` class."""
    try:
        from sglang.srt.managers.io_struct import GenerateReqInput
    except ImportError as exc:
        raise EngineUnavailable(f"{MISSING} ({exc})") from exc
    return GenerateReqInput


def launch_runtime(config: SGLangConfig) -> Any:
    """A new `sglang.Engine` serving `config.model_path`."""
    try:
        import sglang
    except ImportError as exc:
        raise EngineUnavailable(f"{MISSING} ({exc})") from exc
    try:
        # Built on the serving loop's thread (blocking while the model loads): SGLang's
        # tokenizer manager runs its output loop on the event loop it is first used from.
        runtime = sglang.Engine(model_path=config.model_path, **dict(config.runtime_args))
    except Exception as exc:
        raise EngineUnavailable(f"sglang runtime for {config.model_path} failed: {exc}") from exc
    return runtime


def runtime_error(where: str, exc: Exception) -> EngineError:
    """SGLang's in-process failures as the HTTP server would answer them: ValueError is a bad
    request (400), an HTTPException keeps its status, anything else is a runtime failure."""
    status = 400 if isinstance(exc, ValueError) else getattr(exc, "status_code", None)
    message = str(getattr(exc, "detail", None) or exc)
    if not isinstance(status, int):
        return EngineUnavailable(f"{where} failed: {type(exc).__name__}: {message}")
    return upstream_error(where, status, msgspec.json.encode({"error": {"message": message}}))


class InProcessTransport:
    """`runtime`/`request_type`: an already built runtime and its request class (tests pass
    fakes); None: `start()` launches SGLang. The transport shuts its runtime down on close."""

    def __init__(
        self,
        config: SGLangConfig,
        runtime: Any = None,
        request_type: Callable[..., Any] | None = None,
    ) -> None:
        self.where = f"sglang runtime {config.model_path}"
        self._config = config
        self._runtime = runtime
        self._request_type = request_type
        self._live: set[str] = set()
        self._closed = False

    @property
    def _manager(self) -> Any:
        if self._runtime is None:
            raise EngineUnavailable(f"{self.where} has not been started")
        return self._runtime.tokenizer_manager

    async def start(self) -> ServerFacts:
        if self._request_type is None:
            self._request_type = request_type()
        if self._runtime is None:
            self._runtime = launch_runtime(self._config)
        manager = self._manager
        tokenizer = None if manager.tokenizer is None else HFTokenizer(manager.tokenizer)
        model = self._config.model or manager.served_model_name or str(self._config.model_path)
        return ServerFacts(model, manager.context_len, tokenizer)

    async def close(self) -> None:
        if self._runtime is not None and not self._closed:
            self._closed = True
            # Blocks until SGLang's subprocesses exit (and kills every child of this
            # process, as SGLang's shutdown does).
            await asyncio.to_thread(self._runtime.shutdown)

    async def health(self) -> bool:
        return self._runtime is not None and not self._closed

    def _submit(self, body: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        assert self._request_type is not None
        try:
            request = self._request_type(**body)
        except (TypeError, ValueError) as exc:
            raise runtime_error(self.where, ValueError(str(exc))) from exc
        return self._manager.generate_request(request, None)

    async def generate(self, body: dict[str, Any]) -> Output:
        async with contextlib.aclosing(self.stream(body)) as outputs:
            async for out in outputs:
                return out
        raise EngineUnavailable(f"{self.where} gave no output")

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[Output]:
        rid = body["rid"]
        outputs = self._submit(body)
        self._live.add(rid)
        try:
            async with contextlib.aclosing(outputs):
                while True:
                    try:
                        out = await anext(outputs)
                    except StopAsyncIteration:
                        return
                    except EngineError:
                        raise
                    except Exception as exc:
                        raise runtime_error(self.where, exc) from exc
                    try:
                        # Converted at once: SGLang's cumulative outputs share live lists.
                        converted = msgspec.convert(out, Output)
                    except msgspec.MsgspecError as exc:
                        raise EngineUnavailable(f"{self.where} gave a malformed output") from exc
                    yield converted
        finally:
            self._live.discard(rid)

    async def abort(self, rid: str) -> None:
        if rid in self._live:
            self._manager.abort_request(rid=rid)
