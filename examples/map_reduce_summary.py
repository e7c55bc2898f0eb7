"""Map-reduce summary: summarise every chunk (map), then combine the summaries (reduce).

Run a server (`make serve`), then `python examples/map_reduce_summary.py`. The program
submits every call at once and waits once, for the final summary. The server sees the
map calls fan in to the reduce, so it runs them as one task group, batched together, and
it fills their long shared instruction once as a shared prefix context.
"""

from sample_text import chunks

import compat.frontend as P
from compat.frontend import LATENCY

INSTRUCTIONS = (
    "You are a careful editor working for a science magazine. You read one passage of a "
    "longer article at a time and write a faithful summary of it. Keep names, numbers and "
    "dates exactly as written, do not add facts, and do not comment on style."
)

# Chat form: the docstring-style template is the user's turn, the output the reply.
summarize = P.SemanticFunction.from_template(
    "summarize",
    "Summarize this passage in one sentence.\nPassage: {{input:chunk}}{{output:summary}}",
    system=INSTRUCTIONS,
    max_tokens=48,
    temperature=0,
)


def reducer(n: int) -> P.SemanticFunction:
    parts = "\n".join(f"- {{{{input:part{i}}}}}" for i in range(n))
    template = (
        "Here are summaries of consecutive parts of one article:\n"
        f"{parts}\n"
        "Write a short paragraph summarising the whole article.{{output:summary}}"
    )
    return P.SemanticFunction.from_template(
        "combine", template, system=INSTRUCTIONS, max_tokens=96, temperature=0
    )


def map_reduce(text_chunks: list[str]) -> str:
    partial = [summarize(chunk=chunk) for chunk in text_chunks]
    combine = reducer(len(partial))
    final = combine(**{f"part{i}": part for i, part in enumerate(partial)})
    return final.get(perf=LATENCY)


if __name__ == "__main__":
    print(map_reduce(chunks()))
