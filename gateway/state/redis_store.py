"""`RedisStore`: the state store in Redis (redis.asyncio with hiredis), shared by all replicas.

Keys (all under one namespace, `parrot` by default):

    {ns}:session:{sid}            msgpack SessionRecord, expires after its idle TTL
    {ns}:vars:{sid}               hash variable_id -> msgpack VariableRecord, same TTL
    {ns}:engines                  hash engine_id -> msgpack EngineRecord
    {ns}:prefix:{model}:{hash}    hash engine_id -> expiry (unix seconds), key TTL = index TTL
    {ns}:counter:{key}            integer with a TTL set by its first incr
    channel {ns}:variables        "sid\\nvid" whenever a variable becomes done

Waiters of every replica share one pub/sub connection per replica, not one per waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
import redis.asyncio as redis

from gateway.state.base import (
    NO_MATCH,
    EngineRecord,
    PrefixMatch,
    SessionRecord,
    VariableRecord,
)

log = logging.getLogger(__name__)

_ENCODER = msgspec.msgpack.Encoder()
_SESSION = msgspec.msgpack.Decoder(SessionRecord)
_VARIABLE = msgspec.msgpack.Decoder(VariableRecord)
_ENGINE = msgspec.msgpack.Decoder(EngineRecord)

# Store the variable only while its session lives, give it the session's remaining TTL, and
# announce it when done, atomically.
_PUT_VARIABLE = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if ARGV[3] == '1' then redis.call('PUBLISH', KEYS[3], ARGV[4]) end
return 1
"""


class RedisStore:
    def __init__(self, url: str, *, namespace: str = "parrot") -> None:
        self._redis = redis.Redis.from_url(url)
        self._ns = namespace
        self._channel = f"{namespace}:variables"
        self._put_variable = self._redis.register_script(_PUT_VARIABLE)
        self._waiters: dict[bytes, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._redis.ping()
        if self._listener is None:
            ready = asyncio.get_running_loop().create_future()
            self._listener = asyncio.create_task(self._listen(ready))
            await ready

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (redis.RedisError, OSError):
            return False

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        """Wake local waiters on announcements; reconnect (and wake everyone) after a drop."""
        while True:
            try:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(self._channel)
                if not ready.done():
                    ready.set_result(None)
                async for message in pubsub.listen():
                    self._wake(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.warning("variable listener lost Redis (%s); reconnecting", exc)
                for key in list(self._waiters):
                    self._wake(key)  # waiters re-read the record, so a spurious wake is safe
                await asyncio.sleep(0.5)

    def _wake(self, key: bytes) -> None:
        for future in self._waiters.pop(key, ()):
            if not future.done():
                future.set_result(None)

    # sessions
    def _session_key(self, session_id: str) -> str:
        return f"{self._ns}:session:{session_id}"

    def _vars_key(self, session_id: str) -> str:
        return f"{self._ns}:vars:{session_id}"

    async def put_session(self, record: SessionRecord) -> None:
        ttl_ms = max(1, int(record.idle_ttl_s * 1000))
        await self._redis.set(
            self._session_key(record.session_id), _ENCODER.encode(record), px=ttl_ms
        )

    async def get_session(self, session_id: str, tenant: str) -> SessionRecord | None:
        raw = await self._redis.get(self._session_key(session_id))
        if raw is None:
            return None
        record = _SESSION.decode(raw)
        if record.tenant != tenant:
            return None
        ttl_ms = max(1, int(record.idle_ttl_s * 1000))
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.pexpire(self._session_key(session_id), ttl_ms)
            pipe.pexpire(self._vars_key(session_id), ttl_ms)
            await pipe.execute()
        return record

    async def delete_session(self, session_id: str, tenant: str) -> bool:
        if await self.get_session(session_id, tenant) is None:
            return False
        await self._redis.delete(self._session_key(session_id), self._vars_key(session_id))
        return True

    # variables
    async def put_variable(self, record: VariableRecord) -> bool:
        sid, vid = record.session_id, record.variable_id
        stored = await self._put_variable(
            keys=[self._session_key(sid), self._vars_key(sid), self._channel],
            args=[vid, _ENCODER.encode(record), "1" if record.done else "0", f"{sid}\n{vid}"],
        )
        return bool(stored)

    async def get_variable(self, session_id: str, variable_id: str) -> VariableRecord | None:
        raw = await self._redis.hget(self._vars_key(session_id), variable_id)
        return None if raw is None else _VARIABLE.decode(raw)

    async def list_variables(self, session_id: str) -> list[VariableRecord]:
        raw = await self._redis.hgetall(self._vars_key(session_id))
        return [_VARIABLE.decode(value) for value in raw.values()]

    async def wait_variable(
        self, session_id: str, variable_id: str, timeout_s: float
    ) -> VariableRecord | None:
        key = f"{session_id}\n{variable_id}".encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Register before reading so that an announcement between the two is not lost.
        self._waiters.setdefault(key, set()).add(future)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                record = await self.get_variable(session_id, variable_id)
                left = deadline - time.monotonic()
                if record is None or record.done or left <= 0:
                    return record
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(future, left)
                if not future.done():
                    return await self.get_variable(session_id, variable_id)
                future = asyncio.get_running_loop().create_future()
                self._waiters.setdefault(key, set()).add(future)
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[key]

    # engine registry
    async def put_engine(self, record: EngineRecord) -> None:
        await self._redis.hset(f"{self._ns}:engines", record.engine_id, _ENCODER.encode(record))

    async def list_engines(self, max_age_s: float | None = None) -> list[EngineRecord]:
        raw = await self._redis.hgetall(f"{self._ns}:engines")
        records = [_ENGINE.decode(value) for value in raw.values()]
        if max_age_s is None:
            return records
        oldest = time.time() - max_age_s
        return [r for r in records if r.last_seen >= oldest]

    async def delete_engine(self, engine_id: str) -> None:
        await self._redis.hdel(f"{self._ns}:engines", engine_id)

    # prefix index
    def _prefix_key(self, model: str, block_hash: bytes) -> str:
        return f"{self._ns}:prefix:{model}:{block_hash.hex()}"

    async def record_prefix(
        self, model: str, block_hashes: list[bytes], engine_id: str, ttl_s: float
    ) -> None:
        expires_at = time.time() + ttl_s
        ttl_ms = max(1, int(ttl_s * 1000))
        async with self._redis.pipeline(transaction=False) as pipe:
            for block_hash in block_hashes:
                key = self._prefix_key(model, block_hash)
                pipe.hset(key, engine_id, repr(expires_at))
                pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    async def match_prefix(self, model: str, block_hashes: list[bytes]) -> PrefixMatch:
        if not block_hashes:
            return NO_MATCH
        async with self._redis.pipeline(transaction=False) as pipe:
            for block_hash in block_hashes:
                pipe.hgetall(self._prefix_key(model, block_hash))
            replies = await pipe.execute()
        now = time.time()
        best = NO_MATCH
        for i, holders in enumerate(replies):
            live = tuple(e.decode() for e, exp in holders.items() if float(exp) > now)
            if not live:
                break
            best = PrefixMatch(i + 1, live)
        return best

    # counters
    async def incr(self, key: str, ttl_s: float) -> int:
        name = f"{self._ns}:counter:{key}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(name)
            pipe.pexpire(name, max(1, int(ttl_s * 1000)), nx=True)
            count, _ = await pipe.execute()
        return int(count)
