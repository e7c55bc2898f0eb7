"""Parrot's scheduling rules for SGLang's scheduler, as pure logic over SGLang's request shapes.

The plugin (plugin.py) applies these to SGLang's own objects; everything here reads only the
fields it needs - a request's `rid`, `routing_key` and `origin_input_ids`, and a radix tree
behind the small `PrefixTree` protocol - so it is tested with named fakes and, where SGLang
imports, with SGLang's real `Req` and `RadixCache`.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.sglang.tags import ParrotTag

UNTAGGED = ParrotTag()  # requests that did not come from Parrot: latency, their own app


class _Ranks:
    """First-seen ranks of names (apps, groups), bounded LRU so they cannot grow forever."""

    def __init__(self, tickets: itertools.count, capacity: int = 1 << 16) -> None:
        self._tickets = tickets
        self._capacity = capacity
        self._ranks: OrderedDict[str, int] = OrderedDict()

    def rank(self, name: str) -> int:
        rank = self._ranks.get(name)
        if rank is None:
            rank = self._ranks[name] = next(self._tickets)
            if len(self._ranks) > self._capacity:
                self._ranks.popitem(last=False)
        else:
            self._ranks.move_to_end(name)
        return rank


def tag_of(req: Any) -> ParrotTag:
    return ParrotTag.decode(getattr(req, "routing_key", None)) or UNTAGGED


class WaitingOrder:
    """App-FIFO with task groups kept together:

        (latency before throughput, higher priority, older app, older group)

    Ties keep the order SGLang's own policy produced (the sort is stable), so its
    longest-prefix-match order still decides within one app and group.
    """

    def __init__(self) -> None:
        tickets = itertools.count()
        self._apps = _Ranks(tickets)
        self._groups = _Ranks(tickets)
        self._requests = _Ranks(tickets)

    def key(self, req: Any) -> tuple[int, int, int, int]:
        tag = tag_of(req)
        own = self._requests.rank(str(req.rid))
        app = self._apps.rank(tag.app_id) if tag.app_id is not None else own
        group = self._groups.rank(tag.group_id) if tag.group_id is not None else own
        return (0 if tag.is_latency else 1, -tag.priority, app, group)

    def sort(self, waiting: MutableSequence[Any]) -> None:
        waiting[:] = sorted(waiting, key=self.key)


def has_latency_work(reqs: Iterable[Any]) -> bool:
    return any(tag_of(r).is_latency for r in reqs)


@dataclass(frozen=True, slots=True)
class LatencyCap:
    """While latency-critical work is live, at most `cap` requests run, so its decode steps
    stay short. A waiting latency request with none of its kind running may always start
    one, so throughput work already running cannot starve it."""

    cap: int = 8

    def allowance(self, running_bs: int, latency_waiting: bool, latency_running: bool) -> int:
        """How many more requests may be admitted now; -1 means no limit."""
        if not (latency_waiting or latency_running):
            return -1
        room = self.cap - running_bs
        if latency_waiting and not latency_running:
            room = max(room, 1)
        return max(room, 0)


class PrefixTree(Protocol):
    """The radix-tree operations pinning needs (SGLang: match_prefix, inc/dec_lock_ref)."""

    def match(self, token_ids: Sequence[int]) -> tuple[int, Any]: ...

    def lock(self, node: Any) -> None: ...

    def unlock(self, node: Any) -> None: ...


@dataclass(slots=True)
class _Pending:
    rid: str
    token_ids: list[int]
    tries: int = 0


class PinBook:
    """Declared shared prefixes kept out of eviction while their Parrot contexts live.

    A fill request tagged `pin=ctx` is noted while it waits; once it has left the queue and
    the running batch (its prefix is in the tree), the matching node is locked. A request
    tagged `unpin=ctx` (sent when the context is freed) unlocks it.
    """

    MAX_TRIES = 8  # observations to wait for a chunked prefill to finish inserting
    SLACK_TOKENS = 64  # page alignment: a match this close to the full prefix counts

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._pinned: dict[str, Any] = {}
        self._released: OrderedDict[str, None] = OrderedDict()

    @property
    def num_pinned(self) -> int:
        return len(self._pinned)

    def pinned(self, context_id: str) -> bool:
        return context_id in self._pinned

    def observe(self, tree: PrefixTree, waiting: Sequence[Any], running: Sequence[Any]) -> None:
        for req in waiting:
            tag = tag_of(req)
            if tag.unpin is not None:
                self.release(tree, tag.unpin)
            ctx = tag.pin
            if ctx is not None and ctx not in self._released and ctx not in self._pinned:
                self._pending.setdefault(ctx, _Pending(str(req.rid), list(req.origin_input_ids)))
        live = {str(r.rid) for r in itertools.chain(waiting, running)}
        for ctx, pending in list(self._pending.items()):
            if pending.rid in live:
                continue
            matched, node = tree.match(pending.token_ids)
            complete = matched >= len(pending.token_ids) - self.SLACK_TOKENS
            pending.tries += 1
            if matched and (complete or pending.tries >= self.MAX_TRIES):
                tree.lock(node)
                self._pinned[ctx] = node
                del self._pending[ctx]
            elif pending.tries >= self.MAX_TRIES:
                del self._pending[ctx]  # evicted before we saw it finish: nothing to keep

    def release(self, tree: PrefixTree, context_id: str) -> None:
        self._pending.pop(context_id, None)
        node = self._pinned.pop(context_id, None)
        if node is not None:
            tree.unlock(node)
        self._released[context_id] = None
        if len(self._released) > 1 << 16:
            self._released.popitem(last=False)
