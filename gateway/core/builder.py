"""From call requests to linked `Call`s in a session graph, checked before anything changes.

A batch (one call, or a whole graph request) is resolved completely first: templates
parsed, inputs bound to variables or literals, outputs given variables, sampling checked,
and the union of the session graph and the batch checked for cycles. Only then is it
committed, so a 400 leaves the session exactly as it was.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from engine.errors import InvalidRequest
from engine.protocol import EngineInfo, SamplingParams
from gateway.core.chat import RenderChat, chat_template
from gateway.core.errors import GraphError, TemplateError
from gateway.core.graph import Bound, Call, OutputSlot, SessionGraph, Variable
from gateway.core.template import Template, parse_template
from gateway.protocol.semantic import CallRequest, OutputSpec

LookupVariable = Callable[[str], Awaitable[Variable | None]]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


@dataclass(slots=True)
class Batch:
    calls: list[Call]
    new_variables: list[Variable]  # outputs created by this batch (pending)


class CallBuilder:
    def __init__(
        self, graph: SessionGraph, lookup: LookupVariable, render: Callable[[str], RenderChat]
    ) -> None:
        self._graph = graph
        self._lookup = lookup
        self._render = render

    async def build(
        self, requests: Sequence[CallRequest], infos: dict[str, EngineInfo], graph_form: bool
    ) -> Batch:
        prefixes = [f"calls[{i}]." if graph_form else "" for i in range(len(requests))]
        templates = [await self._template(r, p) for r, p in zip(requests, prefixes, strict=True)]
        calls: list[Call] = []
        new_vars: list[Variable] = []
        claimed: set[int] = set()  # ids of variables given a producer by this batch
        for request, template, prefix in zip(requests, templates, prefixes, strict=True):
            call = Call(
                new_id("call"),
                self._graph,
                request.model,
                template.segments,
                {},
                [],
                chat=request.messages is not None,
                hint=request.criteria,
            )
            info = infos[request.model]
            for name in request.outputs:
                if name not in template.outputs:
                    raise TemplateError(
                        f"output '{name}' is not a placeholder of the template",
                        f"{prefix}outputs.{name}",
                    )
            for name in template.outputs:
                spec = request.outputs.get(name, OutputSpec())
                param = f"{prefix}outputs.{name}"
                variable = await self._output_variable(spec, name, param, claimed)
                if spec.var is None:
                    new_vars.append(variable)
                call.outputs.append(OutputSlot(name, variable, self._sampling(spec, info, param)))
            calls.append(call)
        for call, request, template, prefix in zip(
            calls, requests, templates, prefixes, strict=True
        ):
            call.inputs = await self._bind(request, template, prefix, calls if graph_form else [])
        _check_acyclic(calls)
        self._commit(calls, new_vars)
        return Batch(calls, new_vars)

    async def _template(self, request: CallRequest, prefix: str) -> Template:
        if request.template is not None:
            return parse_template(request.template, f"{prefix}template")
        messages = request.messages or []
        try:
            raw = await chat_template(messages, list(request.outputs), self._render(request.model))
        except TemplateError as exc:
            exc.param = f"{prefix}{exc.param}" if exc.param else None
            raise
        return parse_template(raw, f"{prefix}messages")

    async def _variable(self, var_id: str, param: str) -> Variable:
        variable = self._graph.variables.get(var_id) or await self._lookup(var_id)
        if variable is None:
            raise GraphError(
                f"unknown variable '{var_id}' in this session", param, code="unknown_variable"
            )
        return variable

    async def _output_variable(
        self, spec: OutputSpec, name: str, param: str, claimed: set[int]
    ) -> Variable:
        if spec.var is None:
            return Variable(new_id("var"), spec.name or name, self._graph.session_id)
        variable = await self._variable(spec.var, f"{param}.var")
        if variable.producer is not None or id(variable) in claimed:
            raise GraphError(
                f"variable '{spec.var}' already has a producing call",
                f"{param}.var",
                code="variable_already_bound",
            )
        if variable.done:
            raise GraphError(
                f"variable '{spec.var}' already has a value",
                f"{param}.var",
                code="variable_already_bound",
            )
        claimed.add(id(variable))
        return variable

    @staticmethod
    def _sampling(spec: OutputSpec, info: EngineInfo, param: str) -> SamplingParams:
        sampling = spec.sampling()
        try:
            sampling.validate(info.vocab_size)
        except InvalidRequest as exc:
            raise GraphError(exc.message, f"{param}.{exc.param}", code="invalid_value") from exc
        return sampling

    async def _bind(
        self, request: CallRequest, template: Template, prefix: str, batch: list[Call]
    ) -> dict[str, Bound]:
        for name in request.inputs:
            if name not in template.inputs:
                raise TemplateError(
                    f"input '{name}' is not a placeholder of the template", f"{prefix}inputs.{name}"
                )
        bound: dict[str, Bound] = {}
        for name in template.inputs:
            param = f"{prefix}inputs.{name}"
            binding = request.inputs.get(name)
            if binding is None:
                raise GraphError(
                    f"unbound input '{name}': bind it to a 'var' or a 'value'",
                    param,
                    code="unbound_input",
                )
            if binding.value is not None:
                bound[name] = binding.value
            elif binding.var is not None:
                bound[name] = await self._variable(binding.var, f"{param}.var")
            else:
                bound[name] = _reference(binding.ref or "", batch, f"{param}.ref")
        return bound

    def _commit(self, calls: list[Call], new_vars: list[Variable]) -> None:
        graph = self._graph
        for variable in new_vars:
            graph.variables[variable.var_id] = variable
        for call in calls:
            graph.calls[call.call_id] = call
            for slot in call.outputs:
                slot.variable.producer = call
                graph.variables.setdefault(slot.variable.var_id, slot.variable)
            for variable in call.input_vars:
                variable.consumers.append(call)
                graph.variables.setdefault(variable.var_id, variable)


def _reference(ref: str, batch: list[Call], param: str) -> Variable:
    """`"INDEX.OUTPUT"`: an output of another call of the same graph request."""
    index, _, name = ref.partition(".")
    if not index.isdigit() or not name:
        raise GraphError(f"'ref' must look like 'INDEX.OUTPUT', got '{ref}'", param)
    if not batch:
        raise GraphError("'ref' bindings are only allowed in graph requests", param)
    if int(index) >= len(batch):
        raise GraphError(f"'ref' '{ref}' names no call of this graph request", param)
    for slot in batch[int(index)].outputs:
        if slot.name == name:
            return slot.variable
    raise GraphError(f"call {index} of this graph request has no output '{name}'", param)


def _check_acyclic(batch: list[Call]) -> None:
    """The session graph was acyclic, so a cycle must pass through a call of this batch."""
    producers = {id(s.variable): c for c in batch for s in c.outputs}
    on_path, finished = 1, 2
    state: dict[int, int] = {}
    for start in batch:
        if id(start) in state:
            continue
        # Iterative DFS upstream: calls on `path` are being explored, `stack` their inputs.
        path = [start]
        state[id(start)] = on_path
        stack = [iter(start.input_vars)]
        while stack:
            variable = next(stack[-1], None)
            if variable is None:
                stack.pop()
                state[id(path.pop())] = finished
                continue
            upstream = variable.producer or producers.get(id(variable))
            if upstream is None or state.get(id(upstream)) == finished:
                continue
            if state.get(id(upstream)) == on_path:
                raise GraphError(
                    f"the calls would form a cycle: variable '{variable.var_id}' "
                    f"('{variable.name}') is read by a call it depends on",
                    "inputs",
                    code="cycle",
                )
            state[id(upstream)] = on_path
            path.append(upstream)
            stack.append(iter(upstream.input_vars))
