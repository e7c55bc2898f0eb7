"""`Session`: one application run on a Parrot server, over its HTTP API (sync and async).

The server address is, in order of precedence: the `url` argument, the `PARROT_URL`
environment variable, `http://127.0.0.1:8000`. The API key likewise: `api_key`, then
`PARROT_API_KEY`. The model: `model`, then `PARROT_MODEL`, then the first one the server
lists. `PARROT_MAX_TOKENS` (or `max_tokens_cap`) caps every output's length, for quick runs.
The server session is created on first use and deleted by `close()`.

Programs that never make a Session use a default one per context (`current()`), created
on first use and closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import os
from typing import Any

import httpx

from compat.frontend.criteria import PerformanceCriteria
from compat.frontend.errors import ParrotError

DEFAULT_URL = "http://127.0.0.1:8000"
WAIT_S = 600.0  # one GET waits this long on the server before asking again

_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "parrot_session", default=None
)


def current() -> Session:
    """The session of this context: the innermost `with Session(...)`, else a default."""
    session = _current.get()
    if session is None or session.closed:
        session = Session()
        _current.set(session)
        atexit.register(session.close)
    return session


class Session:
    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 30.0,
        max_tokens_cap: int | None = None,
    ) -> None:
        self.url = (url or os.environ.get("PARROT_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key or os.environ.get("PARROT_API_KEY")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._model = model or os.environ.get("PARROT_MODEL")
        cap = max_tokens_cap or os.environ.get("PARROT_MAX_TOKENS")
        self.max_tokens_cap = int(cap) if cap else None
        self._timeout = httpx.Timeout(timeout_s, read=WAIT_S + timeout_s)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=self._timeout)
        self._async: dict[int, httpx.AsyncClient] = {}  # one client per event loop
        self._id: str | None = None
        self._token: contextvars.Token[Session | None] | None = None
        self.closed = False

    # ---- plumbing --------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        return _body(response)

    async def arequest(self, method: str, path: str, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        client = self._async.get(id(loop))
        if client is None:
            client = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeout
            )
            self._async[id(loop)] = client
        return _body(await client.request(method, path, **kwargs))

    @property
    def id(self) -> str:
        """The server session id (created on first use)."""
        if self._id is None:
            self._id = self.request("POST", "/v1/sessions", json={})["id"]
        return self._id

    @property
    def model(self) -> str:
        if self._model is None:
            models = self.request("GET", "/v1/models")["data"]
            if not models:
                raise ParrotError(503, "the server serves no model yet", "no_model")
            self._model = str(models[0]["id"])
        return self._model

    # ---- the API -------------------------------------------------------------------

    def submit(self, call: dict[str, Any]) -> dict[str, Any]:
        """Submit one semantic call; returns {"id", "outputs": {name: variable id}}."""
        return self.request("POST", f"/v1/sessions/{self.id}/calls", json=call)

    async def asubmit(self, call: dict[str, Any]) -> dict[str, Any]:
        return await self.arequest("POST", f"/v1/sessions/{self.id}/calls", json=call)

    def create_variable(self, name: str, value: str | None = None) -> str:
        body = {"name": name or "var"} | ({"value": value} if value is not None else {})
        return self.request("POST", f"/v1/sessions/{self.id}/variables", json=body)["id"]

    def set_variable(self, var_id: str, value: str) -> None:
        self.request("PUT", f"/v1/sessions/{self.id}/variables/{var_id}", json={"value": value})

    def _params(self, criteria: PerformanceCriteria | str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": WAIT_S}
        if criteria is not None:
            params["criteria"] = str(criteria)
        return params

    def get(self, var_id: str, criteria: PerformanceCriteria | str | None = None) -> str:
        """Block until the variable is ready; raises ParrotError if it failed."""
        path = f"/v1/sessions/{self.id}/variables/{var_id}"
        while True:
            view = self.request("GET", path, params=self._params(criteria))
            if view["ready"]:
                return view["value"]

    async def aget(self, var_id: str, criteria: PerformanceCriteria | str | None = None) -> str:
        path = f"/v1/sessions/{self.id}/variables/{var_id}"
        while True:
            view = await self.arequest("GET", path, params=self._params(criteria))
            if view["ready"]:
                return view["value"]

    # ---- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Delete the server session (freeing its contexts) and close the connections.
        Async programs should `await aclose()` so their clients close on their loop."""
        if self.closed:
            return
        self.closed = True
        if self._id is not None:
            # The server may be gone already; the session then expires on its own.
            with contextlib.suppress(httpx.HTTPError):
                self._http.delete(f"/v1/sessions/{self._id}")
        self._http.close()
        self._async.clear()

    async def aclose(self) -> None:
        client = self._async.pop(id(asyncio.get_running_loop()), None)
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Session:
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        self.close()


def _body(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise ParrotError.from_response(response.status_code, body)
    return body
