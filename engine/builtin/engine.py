"""BuiltinEngine: the EngineClient over our PyTorch model, stepping on a worker thread.

The asyncio side only enqueues commands and awaits results; all engine state (contexts,
blocks, scheduler, KV tensors) is owned by one worker thread, so the forward pass never
blocks the event loop that serves HTTP. Results travel back once per step in a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from typing import Any

import torch

from engine.builtin.block_manager import BlockManager
from engine.builtin.contexts import ContextTable
from engine.builtin.cpu_tuning import release_openmp_team, tune_malloc
from engine.builtin.kv_cache import KVCache
from engine.builtin.model import LlamaModel
from engine.builtin.model_files import LoadedModel
from engine.builtin.options import EngineOptions
from engine.builtin.runner import ModelRunner
from engine.builtin.sampler import sample
from engine.builtin.scheduler import Chunk, Scheduler
from engine.builtin.sequence import Sequence
from engine.builtin.stats import snapshot
from engine.builtin.step_trace import StepTrace
from engine.builtin.stops import scan
from engine.builtin.threads import AttentionThreads, machine_cores
from engine.builtin.tokenizer import IncrementalDetokenizer
from engine.errors import (
    ContextBusy,
    ContextExists,
    ContextLengthExceeded,
    EngineError,
    EngineUnavailable,
    InvalidRequest,
    OutOfBlocks,
    RequestAborted,
)
from engine.protocol import (
    ChatMessage,
    EngineInfo,
    EngineStats,
    ErrorInfo,
    FillRequest,
    FillResult,
    GenerateChunk,
    GenerateRequest,
    Rescheduled,
    RescheduleRequest,
    Usage,
)
from parrot_kernels import dispatch, native

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class BuiltinEngine:
    def __init__(self, loaded: LoadedModel, options: EngineOptions = EngineOptions()):
        self.options = options
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        dtype = DTYPES[options.dtype]
        dispatch.check_device(options.device)
        if options.device == "cpu":
            tune_malloc()
        if options.num_threads:
            torch.set_num_threads(options.num_threads)
        # The C kernels serve bf16 on CPU; each part checks the model's shapes itself.
        kernels = (
            native.load()
            if options.native_kernels and options.device == "cpu" and dtype == torch.bfloat16
            else None
        )
        self.model = LlamaModel(
            loaded.config,
            loaded.weights,
            dtype,
            options.device,
            options.q4_max_rows,
            native_ops=kernels.ops if kernels else None,
            tile_matmul=kernels.matmul if kernels else None,
            tile_max_rows=options.tile_max_rows,
        )
        num_blocks = options.num_blocks or max(
            64,
            options.kv_cache_mb
            * 2**20
            // (KVCache.bytes_per_token(loaded.config, dtype) * options.block_size),
        )
        self.kv = KVCache(loaded.config, num_blocks, options.block_size, dtype, options.device)
        self.blocks = BlockManager(num_blocks, options.block_size, options.enable_prefix_cache)
        self.contexts = ContextTable(self.blocks, self.kv.copy_block)
        self.scheduler = Scheduler(options.scheduler, self.contexts)
        self.runner = ModelRunner(
            self.model,
            self.kv,
            options.share_prefix_attention,
            kernels.decode if kernels else None,
            AttentionThreads(
                options.attention_threads or machine_cores(), options.wide_attention_context
            ),
            kernels.shared if kernels and options.share_prefix_attention else None,
        )
        self.eos_ids = tuple(self.tokenizer.eos_token_ids)
        self._info = EngineInfo(
            engine_id=options.engine_id,
            backend="builtin",
            model=options.model_name or loaded.config.name,
            context_length=loaded.config.context_length,
            vocab_size=loaded.config.vocab_size,
            block_size=options.block_size,
        )
        self._stats = EngineStats(engine_id=options.engine_id, total_blocks=num_blocks)
        self._requests: dict[str, Sequence] = {}
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._outbox: list[tuple[Callable[[Any], Any], Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: str | None = None
        self._trace = StepTrace(options.step_trace) if options.step_trace else None

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        return self._info

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="parrot-engine", daemon=True)
        self._thread.start()
        if self.options.device == "cpu":
            # The thread that built the model and cache (normally the one starting the
            # engine) holds an OpenMP team beside the step thread's, which makes every
            # parallel region of a step wake a sleeping worker (engine/builtin/cpu_tuning.py).
            release_openmp_team()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def health(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._failure is None

    # ---- tokenizer -------------------------------------------------------------------

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    async def detokenize(self, token_ids: Seq[int]) -> str:
        return self.tokenizer.decode(list(token_ids))

    async def render_chat(
        self, messages: Seq[ChatMessage], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.render_chat(
            [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt
        )

    # ---- protocol (event-loop side) ----------------------------------------------------

    def _submit(self, command: Callable[[], None]) -> None:
        if self._thread is None or self._stopping:
            raise EngineUnavailable("engine is not running")
        if self._failure is not None:
            raise EngineUnavailable(f"engine failed: {self._failure}")
        self._commands.put(command)
        self._wake.set()

    def _tokens(self, token_ids: list[int] | None, text: str | None) -> list[int]:
        if token_ids is not None and text is not None:
            raise InvalidRequest("give token ids or text, not both")
        if text is not None:
            return self.tokenizer.encode(text)
        tokens = list(token_ids or [])
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for t in tokens):
            raise InvalidRequest(f"token ids must be in [0, {vocab})", param="token_ids")
        return tokens

    async def fill(self, request: FillRequest) -> FillResult:
        tokens = self._tokens(request.token_ids, request.text)
        future = asyncio.get_running_loop().create_future()
        self._submit(lambda: self._start_fill(request, tokens, future))
        return await future

    async def fork(self, context_id: str, parent_context_id: str) -> FillResult:
        """A new context sharing the parent's KV (full blocks shared, partial block copied)."""
        return await self.fill(
            FillRequest(context_id=context_id, parent_context_id=parent_context_id)
        )

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateChunk]:
        request.sampling.validate(self.config.vocab_size)
        tokens = self._tokens(request.prompt_token_ids, request.prompt_text)
        events: asyncio.Queue[GenerateChunk | EngineError] = asyncio.Queue()
        self._submit(lambda: self._start_generate(request, tokens, events))
        finished = False
        try:
            while True:
                event = await events.get()
                if isinstance(event, EngineError):
                    finished = True
                    raise event
                finished = event.finish_reason is not None
                yield event
                if finished:
                    return
        finally:
            if not finished and not self._stopping and self._thread is not None:
                # The consumer went away (client disconnect): stop the work, free the slot.
                self._commands.put(lambda: self._abort(request.request_id))
                self._wake.set()

    async def abort(self, request_id: str) -> None:
        self._submit(lambda: self._abort(request_id))

    async def reschedule(self, request: RescheduleRequest) -> Rescheduled:
        future = asyncio.get_running_loop().create_future()

        def command() -> None:
            found = self.scheduler.reschedule(request.context_id, request.scheduling)
            self._post(_resolve, (future, Rescheduled(found)))

        self._submit(command)
        return await future

    async def free(self, context_id: str) -> None:
        future = asyncio.get_running_loop().create_future()

        def command() -> None:
            try:
                self.contexts.free(context_id)
                self._post(_resolve, (future, None))
            except EngineError as exc:
                self._post(_reject, (future, exc))

        self._submit(command)
        await future

    async def stats(self) -> EngineStats:
        return snapshot(self._stats, self.scheduler, self.contexts, self.blocks)

    # ---- engine thread ---------------------------------------------------------------

    def _post(self, fn: Callable[[Any], Any], arg: Any) -> None:
        """Queue a result for the event loop; sent in one batch after the current step."""
        self._outbox.append((fn, arg))

    def _flush(self) -> None:
        if not self._outbox or self._loop is None:
            return
        batch, self._outbox = self._outbox, []
        # A closed event loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_deliver, batch)

    def _run(self) -> None:
        while not self._stopping:
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                command()
            stepped = False
            if len(self.scheduler):
                try:
                    stepped = self._step()
                except Exception as exc:  # a bug, not bad input: fail live work, keep serving
                    log.exception("engine step failed")
                    self._fail_all(EngineError(f"engine step failed: {exc}"))
            self._flush()
            if self._commands.empty():
                # Idle, or throughput work holding off for a follow-up: sleep until a
                # command (the follow-up itself) wakes us or the hold runs out.
                if not len(self.scheduler):
                    wait = 1.0
                else:
                    wait = 0.0 if stepped else self.scheduler.hold_left()
                if wait > 0:
                    self._wake.wait(timeout=wait)
                    self._wake.clear()
        self._fail_all(EngineUnavailable("engine is shutting down"))
        self._flush()
        if self._trace is not None:
            self._trace.close()

    def _admit(
        self, request_id: str, context_id: str, parent_id: str | None, tokens: list[int], extra: int
    ) -> Any:
        """Create or extend a context for a request; `extra` tokens will be generated."""
        if request_id in self._requests:
            raise InvalidRequest(f"request id '{request_id}' is already in flight")
        created = context_id not in self.contexts
        if created:
            ctx = self.contexts.create(context_id, parent_id)
        else:
            if parent_id is not None:
                ctx = self.contexts.get(context_id)
                if ctx.parent is None or ctx.parent.context_id != parent_id:
                    raise ContextExists(
                        f"context '{context_id}' already exists with a different parent"
                    )
            ctx = self.contexts.get(context_id)
            if ctx.busy:
                raise ContextBusy(f"context '{context_id}' has a request in flight")
        total = len(ctx.token_ids) + len(tokens)
        limit = self.config.context_length
        if total + extra > limit or (extra and not total):
            if created:
                self.contexts.free(context_id)
            if not total:
                raise InvalidRequest("the prompt is empty", param="prompt")
            raise ContextLengthExceeded(
                f"this model's maximum context length is {limit} tokens; the context would "
                f"need {total + extra} ({total} in the prompt, {extra} to generate)"
            )
        capacity = self.blocks.num_blocks * self.blocks.block_size
        if total + extra > capacity:
            if created:
                self.contexts.free(context_id)
            raise OutOfBlocks(f"{total + extra} tokens exceed the KV cache ({capacity} tokens)")
        ctx.token_ids.extend(tokens)
        if extra and not ctx.num_pending:
            self.contexts.rewind(ctx)  # sampling needs the last token's logits
        ctx.busy = True
        return ctx

    def _start_fill(self, request: FillRequest, tokens: list[int], future: Any) -> None:
        try:
            ctx = self._admit(
                f"fill:{request.context_id}",
                request.context_id,
                request.parent_context_id,
                tokens,
                0,
            )
        except EngineError as exc:
            self._post(_reject, (future, exc))
            return
        seq = Sequence(
            request_id=f"fill:{request.context_id}",
            context=ctx,
            scheduling=request.scheduling,
            arrival=time.monotonic(),
            sink=future,
            num_prompt_tokens=len(tokens),
            num_cached_tokens=0,
        )
        self._requests[seq.request_id] = seq
        self.scheduler.add(seq)

    def _start_generate(
        self, request: GenerateRequest, tokens: list[int], events: asyncio.Queue
    ) -> None:
        try:
            ctx = self._admit(
                request.request_id,
                request.context_id,
                request.parent_context_id,
                tokens,
                request.sampling.max_tokens,
            )
        except EngineError as exc:
            self._post(events.put_nowait, exc)
            return
        generator = None
        if request.sampling.seed is not None:
            generator = torch.Generator().manual_seed(request.sampling.seed)
        seq = Sequence(
            request_id=request.request_id,
            context=ctx,
            scheduling=request.scheduling,
            arrival=time.monotonic(),
            sink=events,
            sampling=request.sampling,
            detokenizer=IncrementalDetokenizer(self.tokenizer),
            generator=generator,
            num_prompt_tokens=len(ctx.token_ids),
            num_cached_tokens=ctx.num_computed,
            free_on_finish=request.free_on_finish,
        )
        self._stats.prompt_tokens += len(ctx.token_ids)
        self._requests[seq.request_id] = seq
        self.scheduler.add(seq)

    def _step(self) -> bool:
        """Run one step; False if the plan held nothing to run."""
        plan = self.scheduler.schedule()
        for seq in plan.rejected:
            self._finish_error(
                seq, OutOfBlocks("the request does not fit in the free KV cache blocks")
            )
        if not plan.chunks:
            return False
        runnable = [c for c in plan.chunks if c.num_tokens]
        started = time.monotonic()
        logits = self.runner.run(runnable) if runnable else None
        self._stats.steps += 1
        for c in plan.chunks:
            self.contexts.commit(c.seq.context, c.num_tokens)
        sampling = [c for c in runnable if c.sample]
        if sampling:
            if logits.device.type != "cpu" and any(_host_sampling(c.seq) for c in sampling):
                logits = logits.cpu()
            picks = sample(logits, [c.seq for c in sampling], self.eos_ids)
            for c, (token, logprob) in zip(sampling, picks, strict=True):
                self._append_token(c.seq, token, logprob)
        seconds = time.monotonic() - started
        self.scheduler.observe(seconds, plan.chunks)
        if self._trace is not None:
            self._trace.record(started, seconds, plan.chunks, *self.runner.last_attention)
        for c in plan.chunks:
            if c.seq.is_fill and not c.seq.context.num_pending:
                self._finish_fill(c)
        return True

    def _finish_fill(self, c: Chunk) -> None:
        seq = c.seq
        self._release(seq, completed=True)
        self._stats.prompt_tokens += seq.num_prompt_tokens
        self._stats.prefix_query_tokens += seq.num_prompt_tokens
        self._stats.prefix_hit_tokens += seq.num_cached_tokens
        result = FillResult(
            seq.context.context_id, len(seq.context.token_ids), seq.num_cached_tokens
        )
        self._post(_resolve, (seq.sink, result))

    def _append_token(self, seq: Sequence, token: int, logprob: Any) -> None:
        sp = seq.sampling
        ctx = seq.context
        seq.output_ids.append(token)
        ctx.token_ids.append(token)
        self._stats.generated_tokens += 1
        n = len(seq.output_ids)
        finish = None
        is_stop_token = token in sp.stop_token_ids or (not sp.ignore_eos and token in self.eos_ids)
        if is_stop_token and n > sp.min_tokens:
            finish, delta = "stop", ""
        else:
            delta = seq.detokenizer.add(token)
        text, seq.pending_text, hit = scan(
            seq.pending_text, delta, sp.stop, sp.include_stop_str_in_output
        )
        if hit:
            finish = "stop"
        elif finish is None and (
            n >= sp.max_tokens or len(ctx.token_ids) >= self.config.context_length
        ):
            finish = "length"
        if finish is not None and not hit:
            # Release everything held back: partial stop-string matches and any trailing
            # bytes the detokenizer kept waiting for the rest of a character.
            tail, _, _ = scan(seq.pending_text, seq.detokenizer.flush(), [], False)
            text, seq.pending_text = text + tail, ""
        chunk = GenerateChunk(
            request_id=seq.request_id,
            token_ids=[token],
            text=text,
            logprobs=[logprob] if logprob is not None else None,
            finish_reason=finish,
            usage=self._usage(seq) if finish else None,
        )
        self._post(seq.sink.put_nowait, chunk)
        if finish is not None:
            self._release(seq, completed=True)

    def _usage(self, seq: Sequence) -> Usage:
        return Usage(seq.num_prompt_tokens, len(seq.output_ids), seq.num_cached_tokens)

    def _release(self, seq: Sequence, completed: bool = False) -> None:
        """Detach a finished request from the scheduler and its context."""
        self.scheduler.remove(seq, completed)
        self._requests.pop(seq.request_id, None)
        seq.context.busy = False
        if not seq.is_fill:
            self._stats.prefix_query_tokens += seq.num_prompt_tokens
            self._stats.prefix_hit_tokens += seq.num_cached_tokens
        if seq.free_on_finish:
            try:
                self.contexts.free(seq.context.context_id)
            except EngineError:
                log.warning("could not free context %s", seq.context.context_id)

    def _finish_error(self, seq: Sequence, error: EngineError) -> None:
        self._release(seq)
        if seq.is_fill:
            self._post(_reject, (seq.sink, error))
        elif seq.output_ids:
            # Tokens already went out: end the stream with an error chunk.
            info = ErrorInfo(error.code, error.message, error.param)
            chunk = GenerateChunk(
                request_id=seq.request_id, finish_reason="error", error=info, usage=self._usage(seq)
            )
            self._post(seq.sink.put_nowait, chunk)
        else:
            self._post(seq.sink.put_nowait, error)

    def _abort(self, request_id: str) -> None:
        seq = self._requests.get(request_id)
        if seq is None:
            return
        self._finish_error(seq, RequestAborted(f"request '{request_id}' was aborted"))

    def _fail_all(self, error: EngineError) -> None:
        for seq in list(self._requests.values()):
            self._finish_error(seq, error)


def _host_sampling(seq: Sequence) -> bool:
    """Seeded generators and penalties in the sampler work on host tensors only."""
    sp = seq.sampling
    return seq.generator is not None or (
        sp.repetition_penalty != 1.0 or sp.presence_penalty != 0.0 or sp.frequency_penalty != 0.0
    )


def _deliver(batch: list[tuple[Callable[[Any], Any], Any]]) -> None:
    for fn, arg in batch:
        fn(arg)


def _resolve(args: tuple[asyncio.Future, Any]) -> None:
    future, value = args
    if not future.done():
        future.set_result(value)


def _reject(args: tuple[asyncio.Future, Exception]) -> None:
    future, error = args
    if not future.done():
        future.set_exception(error)
