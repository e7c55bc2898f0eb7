"""Token sampling for a step: penalties, greedy / temperature / top-k / top-p, logprobs.

Rows that need nothing but argmax (the common benchmark case) are handled in one
vectorised call; only rows with stochastic or penalised sampling are processed one by one.
"""

from __future__ import annotations

import torch

from engine.builtin.sequence import Sequence
from engine.protocol import TokenLogprob, TopLogprob


def _apply_penalties(logits: torch.Tensor, seq: Sequence) -> torch.Tensor:
    sp = seq.sampling
    if not seq.output_ids or (
        sp.repetition_penalty == 1.0 and sp.presence_penalty == 0.0 and sp.frequency_penalty == 0.0
    ):
        return logits
    logits = logits.clone()
    ids, counts = torch.tensor(seq.output_ids).unique(return_counts=True)
    if sp.repetition_penalty != 1.0:
        picked = logits[ids]
        logits[ids] = torch.where(
            picked > 0, picked / sp.repetition_penalty, picked * sp.repetition_penalty
        )
    logits[ids] -= sp.presence_penalty + sp.frequency_penalty * counts.float()
    return logits


def _suppress(logits: torch.Tensor, seq: Sequence, eos_ids: tuple[int, ...]) -> torch.Tensor:
    """Before min_tokens, end-of-sequence and stop tokens may not be picked."""
    sp = seq.sampling
    if len(seq.output_ids) >= sp.min_tokens:
        return logits
    banned = [*eos_ids, *sp.stop_token_ids]
    if banned:
        logits = logits.clone()
        logits[banned] = float("-inf")
    return logits


def _sample_row(logits: torch.Tensor, seq: Sequence) -> int:
    sp = seq.sampling
    if sp.greedy:
        return int(logits.argmax())
    logits = logits / sp.temperature
    if sp.top_k:
        k = min(sp.top_k, logits.shape[-1])
        kth = torch.topk(logits, k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sp.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(-1)
        # keep the smallest set whose mass reaches top_p (always at least one token)
        drop = cumulative - sorted_probs > sp.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=seq.generator))


def _logprobs(logits: torch.Tensor, token_id: int, k: int) -> TokenLogprob:
    logp = torch.log_softmax(logits, dim=-1)
    top: list[TopLogprob] = []
    if k:
        values, ids = logp.topk(k)
        top = [TopLogprob(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
    return TokenLogprob(token_id, float(logp[token_id]), top)


def sample(
    logits: torch.Tensor, seqs: list[Sequence], eos_ids: tuple[int, ...]
) -> list[tuple[int, TokenLogprob | None]]:
    """logits [S, V] float32, one row per sequence -> (token id, logprob info) per row."""
    simple = [
        i
        for i, s in enumerate(seqs)
        if s.sampling.greedy
        and s.sampling.repetition_penalty == 1.0
        and s.sampling.presence_penalty == 0.0
        and s.sampling.frequency_penalty == 0.0
        and len(s.output_ids) >= s.sampling.min_tokens
    ]
    picked: list[int] = [0] * len(seqs)
    if simple:
        argmax = logits[simple].argmax(dim=-1).tolist()
        for i, token in zip(simple, argmax, strict=True):
            picked[i] = token
    simple_set = set(simple)
    for i, seq in enumerate(seqs):
        if i not in simple_set:
            row = _suppress(_apply_penalties(logits[i], seq), seq, eos_ids)
            picked[i] = _sample_row(row, seq)
    results: list[tuple[int, TokenLogprob | None]] = []
    for i, seq in enumerate(seqs):
        k = seq.sampling.logprobs
        results.append((picked[i], None if k is None else _logprobs(logits[i], picked[i], k)))
    return results
