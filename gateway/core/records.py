"""Conversions between in-process variables, their state-store records and API views."""

from __future__ import annotations

import time

from gateway.core.errors import CallFailed, failure_type
from gateway.core.graph import Variable
from gateway.protocol.semantic import VariableView
from gateway.state import VariableRecord


def to_record(variable: Variable) -> VariableRecord:
    producer = variable.producer.call_id if variable.producer is not None else None
    common = {
        "session_id": variable.session_id,
        "variable_id": variable.var_id,
        "name": variable.name,
        "updated_at": time.time(),
        "producer": producer,
    }
    if variable.error is not None:
        error = variable.error
        return VariableRecord(
            status="failed",
            error=error.message,
            error_status=error.status,
            error_code=error.code,
            **common,
        )
    if variable.done:
        return VariableRecord(status="ready", value=variable.value, **common)
    return VariableRecord(status="pending", **common)


def failure_of(record: VariableRecord) -> CallFailed:
    status = record.error_status or 500
    return CallFailed(
        status, record.error or "the variable failed", record.error_code, failure_type(status)
    )


def apply_record(variable: Variable, record: VariableRecord) -> None:
    """Bring a mirrored variable up to date with its record (set elsewhere)."""
    if record.status == "ready":
        variable.resolve(record.value or "")
    elif record.status == "failed":
        variable.fail(failure_of(record))


def view_of(variable: Variable) -> VariableView:
    if variable.ready:
        return VariableView(
            id=variable.var_id, name=variable.name, ready=True, status="ready", value=variable.value
        )
    return VariableView(
        id=variable.var_id,
        name=variable.name,
        ready=False,
        status="failed" if variable.error else "pending",
    )


def view_of_record(record: VariableRecord) -> VariableView:
    ready = record.status == "ready"
    return VariableView(
        id=record.variable_id,
        name=record.name,
        ready=ready,
        status=record.status,
        value=record.value if ready else None,
    )
