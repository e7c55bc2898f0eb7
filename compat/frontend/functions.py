"""`SemanticFunction`: a Python function whose docstring is a prompt template.

    @SemanticFunction
    def WritePythonCode(task: SemanticVariable):
        \"\"\"You are an expert software engineer.
        Write python code of {{input:task}}.
        Code: {{output:code}}\"\"\"

Calling it submits one semantic call and returns at once: the output variable, or a
tuple of them in template order. Parameters fill the `{{input:NAME}}` placeholders of the
same name (a SemanticVariable, or any value, sent as text); a parameter named like an
output and given a SemanticVariable makes the call fill that variable.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from compat.frontend import session as sessions
from compat.frontend.criteria import PerformanceCriteria
from compat.frontend.variables import SemanticVariable

_PLACEHOLDER = re.compile(r"\{\{\s*(input|output)\s*:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_tokens",
    "seed",
    "stop",
    "ignore_eos",
)


class SemanticFunction:
    """Use as `@SemanticFunction` or `@SemanticFunction(max_tokens=64, temperature=0)`;
    `outputs={"code": {...}}` sets sampling per output, `criteria` hints the objective.
    With `chat=True` (or a `system` prompt) the docstring up to its final output is a user
    message rendered by the model's chat template, and the output is the assistant's reply."""

    def __new__(cls, fn: Callable[..., Any] | None = None, **options: Any) -> Any:
        if fn is None:
            return lambda f: cls(f, **options)
        return super().__new__(cls)

    def __init__(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        model: str | None = None,
        outputs: dict[str, dict[str, Any]] | None = None,
        criteria: PerformanceCriteria | str | None = None,
        session: sessions.Session | None = None,
        chat: bool = False,
        system: str | None = None,
        **sampling: Any,
    ) -> None:
        assert fn is not None
        unknown = set(sampling) - set(_SAMPLING)
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        if not fn.__doc__:
            raise ValueError(f"semantic function {fn.__name__} needs a docstring template")
        self.__wrapped__ = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.template = inspect.cleandoc(fn.__doc__)
        self.signature = inspect.signature(fn)
        found = _PLACEHOLDER.findall(self.template)
        self.inputs = list(dict.fromkeys(name for kind, name in found if kind == "input"))
        self.outputs = [name for kind, name in found if kind == "output"]
        self._model = model
        self._criteria = criteria
        self._session = session
        self._sampling = sampling
        self._per_output = outputs or {}
        self._chat = chat or system is not None
        self._system = system
        if self._chat and (len(self.outputs) != 1 or not _ends_with_output(self.template)):
            raise ValueError("a chat semantic function ends with its one '{{output:NAME}}'")

    @classmethod
    def from_template(cls, name: str, template: str, **options: Any) -> SemanticFunction:
        """A semantic function from a template string; its inputs become keyword
        parameters (for templates built at run time, e.g. a reduce over N parts)."""
        found = _PLACEHOLDER.findall(template)
        names = dict.fromkeys(n for kind, n in found if kind == "input")

        def fn(**kwargs: Any) -> Any:  # pragma: no cover - never run, only inspected
            return None

        fn.__name__ = name
        fn.__doc__ = template
        kind = inspect.Parameter.KEYWORD_ONLY
        fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(n, kind) for n in names]
        )
        return cls(fn, **options)

    def _call_body(self, session: sessions.Session, args: tuple, kwargs: dict) -> dict:
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        inputs: dict[str, Any] = {}
        for name in self.inputs:
            if name not in values:
                raise TypeError(f"{self.__name__}() has no parameter for input '{name}'")
            value = values[name]
            inputs[name] = (
                value.binding(session)
                if isinstance(value, SemanticVariable)
                else {"value": str(value)}
            )
        outputs: dict[str, Any] = {}
        for name in self.outputs:
            spec = {**self._sampling, **self._per_output.get(name, {})}
            if session.max_tokens_cap is not None:
                spec["max_tokens"] = min(spec.get("max_tokens", 128), session.max_tokens_cap)
            target = values.get(name)
            if isinstance(target, SemanticVariable):
                spec["var"] = target.binding(session)["var"]
            outputs[name] = spec
        body: dict[str, Any] = {
            "model": self._model or session.model,
            "inputs": inputs,
            "outputs": outputs,
        }
        if self._chat:
            # The docstring minus its final output is the user's turn; the output is the reply.
            user = self.template[: self.template.rindex("{{")].rstrip()
            system = [{"role": "system", "content": self._system}] if self._system else []
            body["messages"] = [*system, {"role": "user", "content": user}]
        else:
            body["template"] = self.template
        if self._criteria is not None:
            body["criteria"] = str(self._criteria)
        return body

    def _results(self, session: sessions.Session, created: dict, values: dict) -> Any:
        results = []
        for name in self.outputs:
            target = values.get(name)
            if isinstance(target, SemanticVariable):
                results.append(target)
            else:
                results.append(SemanticVariable.produced(session, created["outputs"][name], name))
        return results[0] if len(results) == 1 else tuple(results)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Submit the call (one request) and return its output variable(s) at once."""
        session = self._session or sessions.current()
        body = self._call_body(session, args, kwargs)
        created = session.submit(body)
        return self._results(session, created, self.signature.bind(*args, **kwargs).arguments)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        session = self._session or sessions.current()
        body = self._call_body(session, args, kwargs)
        created = await session.asubmit(body)
        return self._results(session, created, self.signature.bind(*args, **kwargs).arguments)


def _ends_with_output(template: str) -> bool:
    last = list(_PLACEHOLDER.finditer(template))[-1:]
    return bool(last) and last[0].group(1) == "output" and not template[last[0].end() :].strip()
