"""`SemanticVariable`: a value in a program's data flow, known now or produced by the server.

A variable made with a value is sent inline to the calls that read it (no request of its
own). An output of a semantic function lives on the server; `get()` waits for it with the
program's performance criteria, `aget()` is the same for asyncio programs.
"""

from __future__ import annotations

from typing import Any

from compat.frontend import session as sessions
from compat.frontend.criteria import PerformanceCriteria

Criteria = PerformanceCriteria | str | None


class SemanticVariable:
    def __init__(
        self, value: str | None = None, *, name: str = "", session: sessions.Session | None = None
    ) -> None:
        self.name = name
        self._value = value
        self._id: str | None = None
        self._session = session

    @classmethod
    def produced(cls, session: sessions.Session, var_id: str, name: str) -> SemanticVariable:
        """An output variable of a submitted call."""
        variable = cls(name=name, session=session)
        variable._id = var_id
        return variable

    @property
    def session(self) -> sessions.Session:
        if self._session is None:
            self._session = sessions.current()
        return self._session

    @property
    def id(self) -> str | None:
        """The server variable id; None for a value only ever sent inline."""
        return self._id

    @property
    def ready(self) -> bool:
        """Whether the value is known here without asking the server."""
        return self._value is not None

    def binding(self, session: sessions.Session) -> dict[str, Any]:
        """How a call reads this variable: inline when the value is known, else by id (a
        variable with neither is created on the server, to be `set()` later)."""
        if self._id is None and self._value is not None:
            return {"value": self._value}
        if self._id is None:
            self._session = self._session or session
            self._id = self.session.create_variable(self.name or "input")
        return {"var": self._id}

    def set(self, value: str) -> None:
        """Give an input its value (on the server if calls already read it)."""
        if self._id is not None:
            self.session.set_variable(self._id, value)
        self._value = value

    def get(self, perf: Criteria = None) -> str:
        """The value, waiting for the server if needed; `perf` is the program's criteria
        for it (e.g. LATENCY: the calls producing it are scheduled latency-critical)."""
        if self._value is None:
            self._value = self.session.get(self._server_id(), perf)
        return self._value

    async def aget(self, perf: Criteria = None) -> str:
        if self._value is None:
            self._value = await self.session.aget(self._server_id(), perf)
        return self._value

    def _server_id(self) -> str:
        if self._id is None:
            raise ValueError(f"{self!r} has no value and no call produces it")
        return self._id

    def __repr__(self) -> str:
        state = repr(self._value) if self._value is not None else f"id={self._id}"
        return f"SemanticVariable({self.name or '?'}, {state})"
