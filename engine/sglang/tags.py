"""`ParrotTag`: the Parrot scheduling facts a request carries into SGLang's scheduler process.

SGLang keeps a request's `routing_key` on its scheduler-side `Req` and otherwise only counts
it in metrics, so the backend writes the tag there and the plugin reads it back. The codec
uses only the standard library: it runs inside SGLang's processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

PREFIX = "parrot1:"


@dataclass(frozen=True, slots=True)
class ParrotTag:
    objective: str = "latency"  # latency | throughput
    priority: int = 0
    app_id: str | None = None
    group_id: str | None = None
    pin: str | None = None  # a fill: keep this context's prefix in the radix tree
    unpin: str | None = None  # a free: release that pin

    @property
    def is_latency(self) -> bool:
        return self.objective == "latency"

    def encode(self) -> str:
        fields = {"o": "l" if self.is_latency else "t"}
        if self.priority:
            fields["p"] = self.priority
        for key, value in (("a", self.app_id), ("g", self.group_id)):
            if value is not None:
                fields[key] = value
        for key, value in (("pin", self.pin), ("unpin", self.unpin)):
            if value is not None:
                fields[key] = value
        return PREFIX + json.dumps(fields, separators=(",", ":"))

    @classmethod
    def decode(cls, routing_key: str | None) -> ParrotTag | None:
        """The tag of a routing key, or None for requests that did not come from Parrot."""
        if not routing_key or not routing_key.startswith(PREFIX):
            return None
        try:
            fields = json.loads(routing_key[len(PREFIX) :])
            return cls(
                objective="latency" if fields.get("o", "l") == "l" else "throughput",
                priority=int(fields.get("p", 0)),
                app_id=fields.get("a"),
                group_id=fields.get("g"),
                pin=fields.get("pin"),
                unpin=fields.get("unpin"),
            )
        except (ValueError, TypeError, AttributeError):
            return None
