"""The seed example: write a snake game and its tests with two dependent semantic calls.

Run a server (`make serve`), then `python examples/snake_game.py`. The second call reads
the first one's output on the server: the program sends two calls and waits once per
result, with no round trip in between. PARROT_URL points it at another server.
"""

import compat.frontend as P
from compat.frontend import LATENCY

# fmt: off
# The seed program, verbatim apart from its two import lines.

@P.SemanticFunction
def WritePythonCode(task: P.SemanticVariable):
    """ You are an expert software engineer.
    Write python code of {{input:task}}.
    Code: {{output:code}}
    """

@P.SemanticFunction
def WriteTestCode(
    task: P.SemanticVariable,
    code: P.SemanticVariable):
    """ You are an experienced QA engineer.
    You write test code for {{input:task}}.
    Code: {{input:code}}.
    Your test code: {{output:test}}
    """

def WriteSnakeGame():
    task = P.SemanticVariable("a snake game")
    code = WritePythonCode(task)
    test = WriteTestCode(task, code)
    return code.get(perf=LATENCY), test.get(perf=LATENCY)
# fmt: on


if __name__ == "__main__":
    code, test = WriteSnakeGame()
    print("=== code ===")
    print(code)
    print("=== test ===")
    print(test)
