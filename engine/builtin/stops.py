"""Stop-string matching on streamed text, holding back text that may still become a stop."""

from __future__ import annotations


def _held_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def scan(pending: str, delta: str, stops: list[str], include_stop: bool) -> tuple[str, str, bool]:
    """Feed new text. Returns (text safe to emit now, text still held back, stop hit)."""
    text = pending + delta
    if not stops:
        return text, "", False
    hit = -1
    hit_stop = ""
    for stop in stops:
        i = text.find(stop)
        if i != -1 and (hit == -1 or i < hit):
            hit, hit_stop = i, stop
    if hit != -1:
        end = hit + len(hit_stop) if include_stop else hit
        return text[:end], "", True
    held = _held_suffix(text, stops)
    return text[: len(text) - held], text[len(text) - held :], False
