"""Every integer the Triton kernels read in one step, packed into one int32 buffer.

Built on the host from the step's block tables and uploaded with a single copy. A
`Capacity` fixes the layout: an eager step packs at its exact sizes; a CUDA graph packs
every step at the sizes it was captured with, and the rows it does not use carry padding
that the kernels skip:

    field        shape                  padding  meaning
    slots        [tokens]               -1       KV slot of each new token (-1: no write)
    dec_tables   [decodes, width]       0        each decode's own blocks (after its prefix)
    dec_lens     [decodes]              0        keys in those blocks (0: attend nothing)
    row_member   [decodes]              -1       the row's member index in its group, or -1
    members      [decodes]              0        q row of each member, groups back to back
    grp_tables   [groups, grp_width]    0        each group's shared prefix blocks
    grp_lens     [groups]               0        prefix length in tokens
    grp_tiles    [3, tiles]             0        (group, first row, end row); empty if equal
    pf_tables    [prefills, pf_width]   0        each prefill's blocks
    pf_spans     [3, prefills]          0        (first row in q, new tokens, context length)
    pf_tiles     [2, pf_tiles]          0        (span, first token)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from parrot_kernels.triton.prefill import prefill_tiles
from parrot_kernels.triton.prefix import prefix_tiles

Decode = tuple[list[int], int]  # (block table, length including the new token)
Group = tuple[list[int], int]  # (decode rows, number of shared leading blocks)
Prefill = tuple[list[int], int, int]  # (block table, tokens already computed, new tokens)


class Capacity(NamedTuple):
    tokens: int
    decodes: int
    width: int
    groups: int
    grp_width: int
    tiles: int
    prefills: int
    pf_width: int
    pf_tiles: int


class StepMetadata(NamedTuple):
    slots: torch.Tensor
    dec_tables: torch.Tensor
    dec_lens: torch.Tensor
    row_member: torch.Tensor
    members: torch.Tensor
    grp_tables: torch.Tensor
    grp_lens: torch.Tensor
    grp_tiles: torch.Tensor
    pf_tables: torch.Tensor
    pf_spans: torch.Tensor
    pf_tiles: torch.Tensor


def _shapes(cap: Capacity) -> list[tuple[int, ...]]:
    """Field shapes in StepMetadata order."""
    d = cap.decodes
    return [
        (cap.tokens,),
        (d, cap.width),
        (d,),
        (d,),
        (d,),
        (cap.groups, cap.grp_width),
        (cap.groups,),
        (3, cap.tiles),
        (cap.prefills, cap.pf_width),
        (3, cap.prefills),
        (2, cap.pf_tiles),
    ]


def unpack(flat: torch.Tensor, cap: Capacity) -> StepMetadata:
    """Views of each field inside `flat` (host or device)."""
    views, at = [], 0
    for shape in _shapes(cap):
        n = int(np.prod(shape))
        views.append(flat[at : at + n].view(shape))
        at += n
    return StepMetadata(*views)


def exact_capacity(
    decodes: list[Decode],
    groups: list[Group],
    prefills: list[Prefill],
    block_size: int,
    q_per_kv: int,
) -> Capacity:
    skip = {r: nb for rows, nb in groups for r in rows}
    widths = [
        -(-(n - skip.get(i, 0) * block_size) // block_size) for i, (_, n) in enumerate(decodes)
    ]
    return Capacity(
        tokens=len(decodes) + sum(n for _, _, n in prefills),
        decodes=len(decodes),
        width=max(widths, default=0),
        groups=len(groups),
        grp_width=max((nb for _, nb in groups), default=0),
        tiles=len(prefix_tiles([len(rows) for rows, _ in groups], q_per_kv)),
        prefills=len(prefills),
        pf_width=max((-(-(s + n) // block_size) for _, s, n in prefills), default=0),
        pf_tiles=len(prefill_tiles([n for _, _, n in prefills], q_per_kv)),
    )


def pack(
    decodes: list[Decode],
    groups: list[Group],
    prefills: list[Prefill],
    block_size: int,
    q_per_kv: int,
    cap: Capacity,
    pin: bool = False,
) -> torch.Tensor:
    """The step's metadata laid out for `cap` in a host int32 tensor (pinned if asked)."""
    bs = block_size
    total = sum(int(np.prod(s)) for s in _shapes(cap))
    flat = torch.zeros(total, dtype=torch.int32, pin_memory=pin)
    m = StepMetadata(*(t.numpy() for t in unpack(flat, cap)))
    m.slots[:] = -1
    m.row_member[:] = -1
    skip = [0] * len(decodes)
    members = [r for rows, _ in groups for r in rows]
    assert len(members) <= cap.decodes and len(groups) <= cap.groups
    for g, (rows, nb) in enumerate(groups):
        m.grp_tables[g, :nb] = decodes[rows[0]][0][:nb]
        m.grp_lens[g] = nb * bs
        for r in rows:
            skip[r] = nb
    m.members[: len(members)] = members
    m.row_member[members] = np.arange(len(members))
    tiles = prefix_tiles([len(rows) for rows, _ in groups], q_per_kv)
    assert len(tiles) <= cap.tiles
    if tiles:
        m.grp_tiles[:, : len(tiles)] = np.array(tiles).T
    for i, (table, length) in enumerate(decodes):
        pos = length - 1
        m.slots[i] = table[pos // bs] * bs + pos % bs
        own = table[skip[i] : -(-length // bs)]
        m.dec_tables[i, : len(own)] = own
        m.dec_lens[i] = length - skip[i] * bs
    row = len(decodes)
    for p, (table, start, n) in enumerate(prefills):
        used = table[: -(-(start + n) // bs)]
        m.pf_tables[p, : len(used)] = used
        m.pf_spans[:, p] = (row, n, start + n)
        pos = np.arange(start, start + n)
        m.slots[row : row + n] = np.asarray(used)[pos // bs] * bs + pos % bs
        row += n
    pf = prefill_tiles([n for _, _, n in prefills], q_per_kv)
    assert len(pf) <= cap.pf_tiles
    if pf:
        m.pf_tiles[:, : len(pf)] = np.array(pf).T
    return flat
