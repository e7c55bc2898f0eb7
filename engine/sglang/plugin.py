"""The Parrot plugin for SGLang: app-FIFO/task-group order, a latency cap, pinned prefixes.

SGLang loads it from the `sglang.srt.plugins` entry point group (enable it with
`SGLANG_PLUGINS=parrot` when several plugins are installed) in each scheduler process and
calls `register()`, which hooks two methods through SGLang's `HookRegistry`:

    SchedulePolicy.calc_priority      AROUND: SGLang's own sort runs first, then Parrot
                                      re-sorts the waiting queue (stable) and applies the
                                      declared prefix pins/unpins seen in it
    Scheduler.get_num_allocatable_reqs AROUND: the latency cap on admissions

Settings come from the environment of the SGLang server: PARROT_SGLANG_LATENCY_CAP (default
8) and PARROT_SGLANG_PIN_PREFIXES (default 1). SGLang is imported only inside `register`
and the tree adapter, so this module imports without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.sglang.policy import LatencyCap, PinBook, WaitingOrder, has_latency_work

log = logging.getLogger(__name__)

CALC_PRIORITY = "sglang.srt.managers.schedule_policy.SchedulePolicy.calc_priority"
ALLOCATABLE = "sglang.srt.managers.scheduler.Scheduler.get_num_allocatable_reqs"


class RadixTree:
    """`PrefixTree` over SGLang's radix cache (`match_prefix`, `inc_lock_ref`, `dec_lock_ref`)."""

    def __init__(self, cache: Any) -> None:
        self._cache = cache

    def match(self, token_ids: Sequence[int]) -> tuple[int, Any]:
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        result = self._cache.match_prefix(MatchPrefixParams(key=RadixKey(list(token_ids))))
        return result.device_prefix_len, result.last_device_node

    def lock(self, node: Any) -> None:
        self._cache.inc_lock_ref(node)

    def unlock(self, node: Any) -> None:
        self._cache.dec_lock_ref(node)


def _running_reqs(batch: Any) -> list[Any]:
    return list(getattr(batch, "reqs", None) or [])


@dataclass(slots=True)
class ParrotPlugin:
    """The hooks' shared state inside one SGLang scheduler process."""

    cap: LatencyCap = field(default_factory=LatencyCap)
    pin_prefixes: bool = True
    order: WaitingOrder = field(default_factory=WaitingOrder)
    pins: PinBook = field(default_factory=PinBook)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ParrotPlugin:
        env = dict(os.environ if env is None else env)
        cap = int(env.get("PARROT_SGLANG_LATENCY_CAP", "8"))
        pin = env.get("PARROT_SGLANG_PIN_PREFIXES", "1") not in ("0", "false", "no")
        return cls(cap=LatencyCap(cap), pin_prefixes=pin)

    def around_calc_priority(self, original: Any, policy: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(policy, *args, **kwargs)
        waiting = args[0] if args else kwargs["waiting_queue"]
        running_batch = args[1] if len(args) > 1 else kwargs.get("running_batch")
        if self.pin_prefixes and getattr(policy, "tree_cache", None) is not None:
            try:
                self.pins.observe(
                    RadixTree(policy.tree_cache), waiting, _running_reqs(running_batch)
                )
            except Exception:  # a tree API we do not know must not stop the scheduler
                log.exception("parrot: prefix pinning failed; disabling it")
                self.pin_prefixes = False
        self.order.sort(waiting)
        return result

    def around_allocatable(
        self, original: Any, scheduler: Any, running_bs: int, *args: Any, **kwargs: Any
    ) -> int:
        allowed = original(scheduler, running_bs, *args, **kwargs)
        batch = kwargs.get("running_batch") or (args[1] if len(args) > 1 else None)
        batch = batch or getattr(scheduler, "running_batch", None)
        room = self.cap.allowance(
            running_bs,
            has_latency_work(getattr(scheduler, "waiting_queue", ())),
            has_latency_work(_running_reqs(batch)),
        )
        return allowed if room < 0 else min(allowed, room)


def register() -> ParrotPlugin:
    """Entry point (`sglang.srt.plugins`): hook SGLang's scheduler. Returns the plugin state."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    plugin = ParrotPlugin.from_env()
    HookRegistry.register(CALC_PRIORITY, plugin.around_calc_priority, HookType.AROUND)
    HookRegistry.register(ALLOCATABLE, plugin.around_allocatable, HookType.AROUND)
    log.info("parrot plugin registered (latency cap %d)", plugin.cap.cap)
    return plugin
