"""Deterministic synthetic documents and prompts, so every run and system sees the same text.

Text is generated from a fixed vocabulary with a seeded RNG (no download). Sizes are in
approximate tokens: the words chosen average about 1.3 SmolLM2 tokens each.
"""

from __future__ import annotations

import random

_WORDS = (
    "the a of to and in that is for on with as by at from this be are was it an or "
    "which system data model time process energy water city river market report "
    "design network light signal harbor engine history school village winter summer "
    "field research method result value change growth policy trade ship coast tower "
    "island forest mountain road bridge library garden museum kitchen letter story "
    "music painting theater factory farm harvest storm season journey travel "
    "engineer doctor teacher student farmer captain builds measures studies "
    "describes records explains improves reduces carries follows early late large "
    "small quiet bright ancient modern careful simple complex northern southern "
    "important common rare useful steady rapid local national public private "
).split()
TOKENS_PER_WORD = 1.3


def words_for(tokens: int) -> int:
    return max(1, round(tokens / TOKENS_PER_WORD))


def paragraph(rng: random.Random, tokens: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(words_for(tokens))]
    out, sentence = [], []
    for w in words:
        sentence.append(w)
        if len(sentence) >= rng.randint(8, 16):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def document(seed: int, chunks: int, chunk_tokens: int) -> list[str]:
    """A document of `chunks` parts of about `chunk_tokens` tokens each."""
    rng = random.Random(seed)
    return [paragraph(rng, chunk_tokens) for _ in range(chunks)]


def system_prompt(seed: int, tokens: int, role: str) -> str:
    rng = random.Random(seed)
    return f"You are {role}. Follow the guidelines below carefully when you answer.\n" + paragraph(
        rng, tokens
    )


def query(seed: int, tokens: int = 24) -> str:
    return paragraph(random.Random(seed), tokens) + " What do you recommend?"
