"""Chain summary: refine a running summary chunk by chunk, each step reading the last.

Run a server (`make serve`), then `python examples/chain_summary.py`. Every step is
submitted up front; the server runs each one as soon as the previous summary is generated,
with no client round trip between steps, and the program waits once, for the last one.
"""

from sample_text import chunks

import compat.frontend as P
from compat.frontend import LATENCY

SYSTEM = "You keep a short running summary of an article that you read one part at a time."


@P.SemanticFunction(system=SYSTEM, max_tokens=64, temperature=0)
def refine(summary: P.SemanticVariable, chunk: P.SemanticVariable):
    """Summary so far: {{input:summary}}
    Next part of the article: {{input:chunk}}
    Rewrite the summary so that it also covers the next part, in at most three sentences.
    {{output:new_summary}}"""


def chain_summary(text_chunks: list[str]) -> str:
    summary = P.SemanticVariable("(nothing yet)")
    for chunk in text_chunks:
        summary = refine(summary, chunk)
    return summary.get(perf=LATENCY)


if __name__ == "__main__":
    print(chain_summary(chunks()))
