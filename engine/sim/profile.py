"""`CostProfile`: how long one engine step takes, and the engine's size, for the simulator.

A step of continuous batching computes `rows` tokens (prefill chunks plus one token per
decoding sequence). Its time is

    t(step) = rows_cost(rows) + decode_attn_s_per_pair * decode_pairs
                              + prefill_attn_s_per_pair * prefill_pairs

where `rows_cost` is piecewise linear in the number of rows (weights are read once per step,
so a few rows cost about as much as one, and many rows become compute bound), and the pairs
count query-key pairs of attention: a decoding sequence with context c adds c decode pairs
(bandwidth bound: its KV is read once per token), a prefill chunk of n tokens starting at
position p adds n*p + n*(n+1)/2 prefill pairs (compute bound). Profiles are JSON files in
engine/sim/presets/ (see docs/backends.md for how each was made).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

PRESETS = Path(__file__).with_name("presets")


@dataclass(frozen=True, slots=True)
class CostProfile:
    name: str
    model: str
    source: str  # the command that measured it, or the published figures it is derived from
    rows: tuple[int, ...]  # step sizes (tokens computed in one step), ascending
    rows_s: tuple[float, ...]  # seconds of a step of that many rows at negligible context
    decode_attn_s_per_pair: float  # seconds per query-key pair of a decoding sequence
    prefill_attn_s_per_pair: float  # seconds per query-key pair inside a prefill chunk
    block_size: int = 16
    num_blocks: int = 4096
    context_length: int = 8192
    max_batch_size: int = 64
    max_step_tokens: int = 512
    latency_cap: int = 64
    # Decoding sequences that share leading KV blocks read them once per step (the builtin
    # engine's shared-prefix attention); off for engines without such a kernel.
    shared_prefix_attention: bool = True
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.rows) != len(self.rows_s) or len(self.rows) < 2:
            raise ValueError("a profile needs at least two (rows, seconds) points")
        if list(self.rows) != sorted(set(self.rows)):
            raise ValueError("profile rows must be strictly ascending")

    def rows_cost(self, rows: int) -> float:
        """Seconds for a step of `rows` tokens (linear between points, extrapolated past)."""
        xs, ys = self.rows, self.rows_s
        i = min(max(bisect.bisect_left(xs, rows), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return max(y0 + (y1 - y0) * (rows - x0) / (x1 - x0), 0.0)

    def step_s(self, rows: int, decode_pairs: int, prefill_pairs: int) -> float:
        return (
            self.rows_cost(rows)
            + self.decode_attn_s_per_pair * decode_pairs
            + self.prefill_attn_s_per_pair * prefill_pairs
        )

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    # ---- files -------------------------------------------------------------------------

    def to_json(self) -> str:
        data = asdict(self)
        data["rows"], data["rows_s"] = list(self.rows), list(self.rows_s)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CostProfile:
        data = json.loads(text)
        data["rows"] = tuple(int(x) for x in data["rows"])
        data["rows_s"] = tuple(float(x) for x in data["rows_s"])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), "utf-8")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.json"))


def load_profile(name_or_path: str) -> CostProfile:
    """A preset by name (`cpu-smollm2`, `a100-llama2-7b`, ...) or a JSON file path."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PRESETS / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no simulator profile '{name_or_path}'; presets: {', '.join(preset_names())}"
        )
    return CostProfile.from_json(path.read_text("utf-8"))
