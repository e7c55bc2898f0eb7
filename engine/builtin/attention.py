"""Per-step attention plan over paged KV, built once per step and reused by every layer.

Token order in the flat batch: all decode tokens first (one per sequence), then prefill
chunks. Decode sequences whose block tables start with the same blocks form a shared-prefix
group: their queries are stacked against the prefix KV once, their private suffixes are
attended in the batched decode call, and the two partial results are merged exactly.

    seq A blocks: [ P0 P1 P2 | a3 a4 ]      prefix attention: q[A,B,C] vs KV(P0..P2), once
    seq B blocks: [ P0 P1 P2 | b3 ]         suffix attention: each q vs its own a*/b*/c*
    seq C blocks: [ P0 P1 P2 | c3 c4 c5 ]   merge by log-sum-exp

That split is for the torch path and (as the same groups) the GPU's Triton kernels. With the
C kernels on CPU, a group's rows go to the shared-prefix kernel in items of up to 16 query
rows (parrot_kernels/native/shared_decode.c: on AMX tiles, else in AVX-512 BF16 vectors),
which reads the prefix once per item (rearranged once for all the items over it) and attends
to prefix and suffix in one online softmax, so no partial results are merged; the other rows
go to the paged kernel, which reads each row's whole table in place. Where the shared-prefix
kernel did not build (no AVX-512 BF16) there are no groups on the C path: the paged kernel
reads the prefix again for every row. The shared-prefix kernel also takes short prefill
chunks (a user's question behind a long prompt): each token is a row over the keys up to
itself, consecutive tokens share an item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.builtin.kv_cache import KVCache
from parrot_kernels import dispatch
from parrot_kernels.cpu import (
    causal_attention,
    causal_bias,
    decode_attention,
    mask_to_bias,
    prefix_attention,
)
from parrot_kernels.merge import merge_attention_states

if TYPE_CHECKING:
    from parrot_kernels.native import PagedDecode, SharedDecode, SharedItems
    from parrot_kernels.triton.step import TritonAttention

# A shared prefix shorter than this many blocks is not worth a separate attention call.
MIN_SHARED_BLOCKS = 2
# Prefill chunks up to this many tokens go to the shared-prefix kernel on AMX tiles: a few
# tokens over a long context, which the torch path gathers whole for every chunk. Longer
# chunks keep the torch path's blocked causal attention, which runs on the same tiles. The
# kernel's vector variant (no AMX) takes every chunk: there torch's attention measured about
# 4x slower than the kernel at every chunk size (docs/BENCHMARKS.md, "Engine").
TILE_PREFILL_TOKENS = 64


@dataclass(slots=True)
class SharedGroup:
    rows: torch.Tensor  # decode rows in the group
    prefix_slots: torch.Tensor  # [Lp]


@dataclass(slots=True)
class TileChunk:
    """A short prefill chunk as tile-kernel items: each token a row over its own table row."""

    tables: torch.Tensor  # [n, nb]: the sequence's table, once per token
    lens: torch.Tensor  # [n]: keys each token sees (causal: up to and including itself)
    items: SharedItems  # up to a tile's rows of consecutive tokens over the keys before them
    lse: torch.Tensor  # [n, Hq] scratch the kernel writes (unused: nothing is merged)


@dataclass(slots=True)
class PrefillSpan:
    start: int  # first row of the chunk in the flat batch
    end: int
    slots: torch.Tensor | None  # every KV slot of the sequence up to the chunk's last token
    bias: torch.Tensor | None  # causal mask for the chunk's queries, built once for all layers
    tiles: TileChunk | None = None  # instead of slots and bias: the shared-prefix kernel's items


def _slots(table: list[int], start_block: int, length: int, block_size: int) -> list[int]:
    return [b * block_size + o for b in table[start_block:] for o in range(block_size)][:length]


class AttentionPlan:
    """Callable per layer: writes the new KV, then attends (see module docstring)."""

    def __init__(
        self,
        kv: KVCache,
        scale: float,
        slot_mapping: torch.Tensor,
        num_decode: int,
        decode_tables: torch.Tensor | None,
        decode_lens: torch.Tensor | None,
        decode_bias: torch.Tensor | None,
        groups: list[SharedGroup],
        prefills: list[PrefillSpan],
        native: PagedDecode | None = None,
        threads: int | None = None,
        shared: SharedDecode | None = None,
        shared_items: SharedItems | None = None,
        paged_lens: torch.Tensor | None = None,
    ):
        self.kv = kv
        self.scale = scale
        self.slot_mapping = slot_mapping
        self.num_decode = num_decode
        self.decode_tables = decode_tables
        self.decode_lens = decode_lens
        self.decode_bias = decode_bias  # only for the torch path
        self.groups = groups
        self.prefills = prefills
        self.native = native
        self.threads = threads  # torch threads for the attention; None: the caller's
        # The C path's shared-prefix items, and the lengths the paged kernel gets: 0 for the
        # items' rows, which the shared-prefix kernel then writes.
        self.shared = shared
        self.shared_items = shared_items
        self.paged_lens = paged_lens if paged_lens is not None else decode_lens
        # Whether any decode row is left to the paged kernel: where the shared-prefix items
        # cover them all, its call (one a layer, with nothing to read) is skipped.
        self.paged_rows = self.paged_lens is not None and bool(self.paged_lens.any())

    @classmethod
    def build(
        cls,
        kv: KVCache,
        scale: float,
        num_heads: int,
        decodes: list[tuple[list[int], int]],
        prefills: list[tuple[list[int], int, int]],
        share_prefixes: bool = True,
        native: PagedDecode | None = None,
        threads: int | None = None,
        shared: SharedDecode | None = None,
    ) -> AttentionPlan:
        """decodes: (block table, length incl. the new token); prefills: (table, start, n).

        `native`: the C decode kernel (parrot_kernels/native.py); None keeps the torch ops.
        `shared`: with `native`, the shared-prefix kernel for groups (None: no groups).
        `threads`: torch threads the attention runs on (engine/builtin/threads.py); None
        keeps the caller's count.
        """
        bs = kv.block_size
        dtype = kv.k.dtype
        group = num_heads // kv.k.shape[2]
        slot_mapping: list[int] = []
        for table, length in decodes:
            pos = length - 1
            slot_mapping.append(table[pos // bs] * bs + pos % bs)
        spans = []
        row = len(decodes)
        for table, start, n in prefills:
            slots = _slots(table, 0, start + n, bs)
            slot_mapping.extend(slots[start:])
            if (
                native is not None
                and shared is not None
                and (n <= TILE_PREFILL_TOKENS or not shared.tiles)
            ):
                tiles = _tile_chunk(shared, table, start, n, num_heads, kv.k.shape[2], bs)
                spans.append(PrefillSpan(row, row + n, None, None, tiles))
            else:
                bias = causal_bias(n, start + n, group, dtype)
                spans.append(PrefillSpan(row, row + n, torch.tensor(slots), bias))
            row += n

        groups: list[SharedGroup] = []
        skip = [0] * len(decodes)  # leading blocks of each decode covered by its group
        # With the C kernels, groups go to the shared-prefix kernel: the torch group path (gather,
        # attend, merge: some 25 small ops per group and layer) took longer than the paged
        # kernel reading the prefix again for every row (docs/BENCHMARKS.md, "Engine").
        items: list[tuple[list[int], int]] = []
        if share_prefixes and native is not None and shared is not None and len(decodes) > 1:
            per = shared.rows_per_item(num_heads, kv.k.shape[2])
            for rows, num_blocks in _shared_groups(decodes):
                items += [(part, num_blocks * bs) for part in split_group(rows, per)]
        elif share_prefixes and native is None and len(decodes) > 1:
            for rows, num_blocks in _shared_groups(decodes):
                groups.append(
                    SharedGroup(
                        torch.tensor(rows),
                        torch.tensor(_slots(decodes[rows[0]][0], 0, num_blocks * bs, bs)),
                    )
                )
                for r in rows:
                    skip[r] = num_blocks

        decode_tables = decode_lens = decode_bias = paged_lens = None
        if decodes:
            lens = [length - skip[i] * bs for i, (_, length) in enumerate(decodes)]
            width = -(-max(lens) // bs)
            tables = torch.zeros(len(decodes), width, dtype=torch.long)
            for i, (table, _) in enumerate(decodes):
                own = table[skip[i] :]
                tables[i, : len(own)] = torch.tensor(own)
            decode_tables = tables
            decode_lens = torch.tensor(lens, dtype=torch.long)
            if native is None:
                valid = torch.arange(width * bs).unsqueeze(0) < decode_lens.unsqueeze(1)
                decode_bias = mask_to_bias(valid, dtype)
            if items:
                paged_lens = decode_lens.clone()
                paged_lens[[r for rows, _ in items for r in rows]] = 0
        return cls(
            kv,
            scale,
            torch.tensor(slot_mapping, dtype=torch.long),
            len(decodes),
            decode_tables,
            decode_lens,
            decode_bias,
            groups,
            spans,
            native,
            threads,
            shared,
            shared.items(items, len(decodes)) if items else None,
            paged_lens,
        )

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        self.kv.write(layer, self.slot_mapping, k, v)
        if self.threads is None:
            return self._attend(q, self.kv.k[layer], self.kv.v[layer])
        own = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._attend(q, self.kv.k[layer], self.kv.v[layer])
        finally:
            torch.set_num_threads(own)

    def _attend(self, q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(q)
        nd = self.num_decode
        if nd:
            dec, lse = self._decode(q[:nd], k_flat, v_flat)
            for g in self.groups:
                pk, pv = k_flat[g.prefix_slots], v_flat[g.prefix_slots]
                p_out, p_lse = prefix_attention(q[g.rows], pk, pv, self.scale)
                merged, _ = merge_attention_states(p_out, p_lse, dec[g.rows], lse[g.rows])
                dec[g.rows] = merged
            out[:nd] = dec
        for span in self.prefills:
            if span.tiles is not None:
                c = span.tiles
                self.shared(
                    q[span.start : span.end],
                    k_flat,
                    v_flat,
                    c.tables,
                    c.lens,
                    self.kv.block_size,
                    self.scale,
                    c.items,
                    out[span.start : span.end],
                    c.lse,
                )
                continue
            out[span.start : span.end] = causal_attention(
                q[span.start : span.end],
                k_flat[span.slots],
                v_flat[span.slots],
                self.scale,
                span.bias,
            )
        return out

    def _decode(
        self, q: torch.Tensor, k_flat: torch.Tensor, v_flat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each decode row against its own (private) blocks: output and log-sum-exp."""
        bs = self.kv.block_size
        if self.native is not None:
            if self.paged_rows:
                out, lse = self.native(
                    q, k_flat, v_flat, self.decode_tables, self.paged_lens, bs, self.scale
                )
            else:
                out = torch.empty(q.shape, dtype=q.dtype)
                lse = torch.empty(q.shape[:2], dtype=torch.float32)
            if self.shared_items is not None:
                items, tables, lens = self.shared_items, self.decode_tables, self.decode_lens
                self.shared(q, k_flat, v_flat, tables, lens, bs, self.scale, items, out, lse)
            return out, lse
        shape = (-1, bs, *k_flat.shape[1:])
        return decode_attention(
            q,
            k_flat.view(shape),
            v_flat.view(shape),
            self.decode_tables,
            self.decode_bias,
            self.scale,
        )


def split_group(rows: list[int], per: int) -> list[list[int]]:
    """A group's rows as items of at most `per`: as few items as that allows, the rows
    spread evenly over them (7 rows at 5 per item: 4 and 3, not 5 and 2)."""
    count = -(-len(rows) // per)
    size = -(-len(rows) // count)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _tile_chunk(
    shared: SharedDecode,
    table: list[int],
    start: int,
    n: int,
    num_heads: int,
    num_kv_heads: int,
    block_size: int,
) -> TileChunk:
    """Token j of the chunk sees keys [0, start + j]; an item's tokens share the keys before
    the first of them, rounded down to 16 (the kernel's prefix unit), and each reads the rest
    (under 16 + a tile's tokens) as its own."""
    per = shared.rows_per_item(num_heads, num_kv_heads)
    need = -(-(start + n) // block_size)
    tables = torch.tensor(table[:need], dtype=torch.long).expand(n, need).contiguous()
    lens = torch.arange(start + 1, start + n + 1, dtype=torch.long)
    groups = [(list(range(i, min(i + per, n))), (start + i) // 16 * 16) for i in range(0, n, per)]
    lse = torch.empty(n, num_heads, dtype=torch.float32)
    return TileChunk(tables, lens, shared.items(groups, n), lse)


def _shared_groups(decodes: list[tuple[list[int], int]]) -> list[tuple[list[int], int]]:
    """Group decode rows by first block; a group's prefix is its members' common full blocks.

    A block listed in two block tables is shared, hence full (contexts never share a
    partially written block), so the common leading blocks are safe to read as a prefix.
    """
    by_first: dict[int, list[int]] = {}
    for i, (table, _) in enumerate(decodes):
        if len(table) > 1:
            by_first.setdefault(table[0], []).append(i)
    groups = []
    for rows in by_first.values():
        if len(rows) < 2:
            continue
        tables = [decodes[r][0] for r in rows]
        common = 0
        # The last block of each table holds the token being decoded: never part of a prefix.
        limit = min(len(t) for t in tables) - 1
        while common < limit and all(t[common] == tables[0][common] for t in tables):
            common += 1
        if common >= MIN_SHARED_BLOCKS:
            groups.append((rows, common))
    return groups


def device_plan(
    kv: KVCache,
    scale: float,
    num_heads: int,
    decodes: list[tuple[list[int], int]],
    prefills: list[tuple[list[int], int, int]],
    share_prefixes: bool = True,
) -> TritonAttention:
    """CUDA: the same plan (same groups) as Triton kernel metadata.

    See parrot_kernels/dispatch.py.
    """
    groups = _shared_groups(decodes) if share_prefixes and len(decodes) > 1 else []
    return dispatch.triton_attention(kv, scale, num_heads, decodes, groups, prefills)
