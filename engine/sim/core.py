"""`SimCore`: the builtin engine's scheduling and KV bookkeeping with a cost model for compute.

It runs the builtin engine's own parts - `BlockManager` (ref-counted blocks, block-hash
prefix cache), `ContextTable` (forks share full blocks) and `Scheduler` (objectives,
priorities, app-FIFO, task groups, latency cap, chunked prefill, preemption) - so the
simulated engine batches exactly like the real one; only the forward pass is replaced by
`CostProfile.step_s` and sampling by filler tokens. Time is not kept here: `step()` returns
how long the step took and the events it produced, and the caller (the asyncio `SimEngine`
or the virtual-clock cluster) decides when those events happen.

Generation always runs to `max_tokens` (finish "length"): stop strings and EOS are not
modelled, as in the paper's evaluation, which fixed output lengths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from engine.builtin.attention import MIN_SHARED_BLOCKS
from engine.builtin.block_manager import BlockManager
from engine.builtin.contexts import Context, ContextTable
from engine.builtin.scheduler import Scheduler, SchedulerConfig
from engine.builtin.sequence import Sequence
from engine.builtin.stats import snapshot as stats_snapshot
from engine.errors import (
    ContextBusy,
    ContextExists,
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    OutOfBlocks,
    RequestAborted,
)
from engine.protocol import EngineStats, FillResult, GenerateChunk, SamplingParams, Scheduling
from engine.protocol import Usage as UsageInfo
from engine.sim.profile import CostProfile
from engine.sim.tokenizer import SimTokenizer

Sink = Callable[[Any], None]  # receives FillResult / GenerateChunk / EngineError


class StepResult(NamedTuple):
    duration_s: float
    events: list[tuple[Sink, Any]]  # delivered when the step ends


@dataclass(slots=True)
class _Request:
    seq: Sequence
    max_tokens: int = 0


class SimCore:
    def __init__(self, profile: CostProfile, engine_id: str = "sim-0", prefix_cache: bool = True):
        self.profile = profile
        self.engine_id = engine_id
        self.blocks = BlockManager(profile.num_blocks, profile.block_size, prefix_cache)
        # No KV tensors: copying a forked partial block costs nothing here.
        self.contexts = ContextTable(self.blocks, lambda src, dst, n: None)
        config = SchedulerConfig(
            max_batch_size=profile.max_batch_size,
            max_step_tokens=profile.max_step_tokens,
            latency_cap=profile.latency_cap,
            # The hold for a follow-up is timed by a wall clock, which this core does not
            # keep (its callers own time); the simulator does not model it.
            followup_hold_s=0.0,
        )
        self.scheduler = Scheduler(config, self.contexts)
        self.tokenizer = SimTokenizer()
        self.stats = EngineStats(engine_id=engine_id, total_blocks=profile.num_blocks)
        self._requests: dict[str, _Request] = {}
        self._events: list[tuple[Sink, Any]] = []
        self.busy_s = 0.0

    def __len__(self) -> int:
        return len(self.scheduler)

    # ---- requests ----------------------------------------------------------------------

    def _admit(
        self, request_id: str, context_id: str, parent_id: str | None, tokens: list[int], extra: int
    ) -> Context:
        if request_id in self._requests:
            raise InvalidRequest(f"request id '{request_id}' is already in flight")
        created = context_id not in self.contexts
        if created:
            ctx = self.contexts.create(context_id, parent_id)
        else:
            ctx = self.contexts.get(context_id)
            if parent_id is not None and (ctx.parent is None or ctx.parent.context_id != parent_id):
                raise ContextExists(f"context '{context_id}' already exists with another parent")
            if ctx.busy:
                raise ContextBusy(f"context '{context_id}' has a request in flight")
        total = len(ctx.token_ids) + len(tokens)
        problem: EngineError | None = None
        if extra and not total:
            problem = InvalidRequest("the prompt is empty", param="prompt")
        elif total + extra > self.profile.context_length:
            problem = ContextLengthExceeded(
                f"context of {total + extra} tokens exceeds {self.profile.context_length}"
            )
        elif total + extra > self.profile.capacity_tokens:
            problem = OutOfBlocks(f"{total + extra} tokens exceed the KV cache")
        if problem is not None:
            if created:
                self.contexts.free(context_id)
            raise problem
        ctx.token_ids.extend(tokens)
        if extra and not ctx.num_pending:
            self.contexts.rewind(ctx)  # sampling needs the last token's logits
        ctx.busy = True
        return ctx

    def fill(
        self,
        context_id: str,
        parent_id: str | None,
        tokens: list[int],
        scheduling: Scheduling,
        sink: Sink,
        now: float = 0.0,
    ) -> None:
        """Queue a prefill; raises EngineError at once for requests that cannot be admitted."""
        request_id = f"fill:{context_id}"
        ctx = self._admit(request_id, context_id, parent_id, tokens, 0)
        seq = Sequence(request_id, ctx, scheduling, now, sink, num_prompt_tokens=len(tokens))
        self._requests[request_id] = _Request(seq)
        self.scheduler.add(seq)

    def generate(
        self,
        request_id: str,
        context_id: str,
        parent_id: str | None,
        tokens: list[int],
        sampling: SamplingParams,
        scheduling: Scheduling,
        sink: Sink,
        now: float = 0.0,
        free_on_finish: bool = False,
    ) -> None:
        sampling.validate(self.tokenizer.vocab_size)
        ctx = self._admit(request_id, context_id, parent_id, tokens, sampling.max_tokens)
        seq = Sequence(
            request_id,
            ctx,
            scheduling,
            now,
            sink,
            sampling=sampling,
            num_prompt_tokens=len(ctx.token_ids),
            num_cached_tokens=ctx.num_computed,
            free_on_finish=free_on_finish,
        )
        self.stats.prompt_tokens += len(ctx.token_ids)
        self._requests[request_id] = _Request(seq, sampling.max_tokens)
        self.scheduler.add(seq)

    def abort(self, request_id: str) -> list[tuple[Sink, Any]]:
        request = self._requests.get(request_id)
        if request is not None:
            self._fail(request.seq, RequestAborted(f"request '{request_id}' was aborted"))
        events, self._events = self._events, []
        return events

    def free(self, context_id: str) -> None:
        self.contexts.free(context_id)

    def reschedule(self, context_id: str, scheduling: Scheduling) -> bool:
        return self.scheduler.reschedule(context_id, scheduling)

    # ---- stepping ----------------------------------------------------------------------

    def step(self) -> StepResult:
        plan = self.scheduler.schedule()
        for seq in plan.rejected:
            self._fail(seq, OutOfBlocks("the request does not fit in the free KV cache blocks"))
        rows = decode_pairs = prefill_pairs = 0
        tables: list[list[int]] = []
        for chunk in plan.chunks:
            n, start = chunk.num_tokens, chunk.seq.context.num_computed
            rows += n
            if n == 1:
                decode_pairs += start + 1
                tables.append(chunk.seq.context.block_table)
            else:
                prefill_pairs += n * start + n * (n + 1) // 2
        if self.profile.shared_prefix_attention:
            decode_pairs -= self._shared_pairs_saved(tables)
        duration = self.profile.step_s(rows, decode_pairs, prefill_pairs) if rows else 0.0
        if plan.chunks:
            self.stats.steps += 1
            self.busy_s += duration
            self.scheduler.observe(duration, plan.chunks)
        for chunk in plan.chunks:
            self.contexts.commit(chunk.seq.context, chunk.num_tokens)
        for chunk in plan.chunks:
            seq = chunk.seq
            if chunk.sample:
                self._emit_token(seq)
            elif seq.is_fill and not seq.context.num_pending:
                self._finish_fill(seq)
        events, self._events = self._events, []
        return StepResult(duration, events)

    def _shared_pairs_saved(self, tables: list[list[int]]) -> int:
        """Decode rows whose block tables start with the same blocks read that prefix once
        (the builtin engine's shared-prefix attention groups rows exactly this way)."""
        by_first: dict[int, list[list[int]]] = {}
        for table in tables:
            if len(table) > 1:
                by_first.setdefault(table[0], []).append(table)
        saved = 0
        for group in by_first.values():
            if len(group) < 2:
                continue
            limit = min(len(t) for t in group) - 1  # the last block holds the new token
            common = 0
            while common < limit and all(t[common] == group[0][common] for t in group):
                common += 1
            if common >= MIN_SHARED_BLOCKS:
                saved += (len(group) - 1) * common * self.profile.block_size
        return saved

    def _emit_token(self, seq: Sequence) -> None:
        index = len(seq.output_ids)
        token = self.tokenizer.filler(index)
        seq.output_ids.append(token)
        seq.context.token_ids.append(token)
        self.stats.generated_tokens += 1
        done = len(seq.output_ids) >= self._requests[seq.request_id].max_tokens
        chunk = GenerateChunk(
            request_id=seq.request_id,
            token_ids=[token],
            text=self.tokenizer.decode([token]),
            finish_reason="length" if done else None,
            usage=self._usage(seq) if done else None,
        )
        self._events.append((seq.sink, chunk))
        if done:
            self._release(seq)

    def _finish_fill(self, seq: Sequence) -> None:
        self._release(seq)
        self.stats.prompt_tokens += seq.num_prompt_tokens
        ctx = seq.context
        result = FillResult(ctx.context_id, len(ctx.token_ids), seq.num_cached_tokens)
        self._events.append((seq.sink, result))

    @staticmethod
    def _usage(seq: Sequence) -> UsageInfo:
        return UsageInfo(seq.num_prompt_tokens, len(seq.output_ids), seq.num_cached_tokens)

    def _release(self, seq: Sequence) -> None:
        self.scheduler.remove(seq)
        self._requests.pop(seq.request_id, None)
        seq.context.busy = False
        self.stats.prefix_query_tokens += seq.num_prompt_tokens
        self.stats.prefix_hit_tokens += seq.num_cached_tokens
        if seq.free_on_finish:
            self.contexts.free(seq.context.context_id)

    def _fail(self, seq: Sequence, error: EngineError) -> None:
        self._release(seq)
        self._events.append((seq.sink, error))

    def snapshot(self) -> EngineStats:
        return stats_snapshot(self.stats, self.scheduler, self.contexts, self.blocks)
