"""API keys -> tenants. With no keys configured every request is the `default` tenant."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from gateway.errors import unauthorized

DEFAULT_TENANT = "default"


def _digest(key: str) -> bytes:
    # Keys are looked up by digest so the comparison time does not depend on the secret.
    return hashlib.sha256(key.encode()).digest()


def read_keys_file(path: str) -> list[tuple[str, str]]:
    """Lines of `KEY [TENANT]`; blank lines and `#` comments are skipped."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"{path}:{number}: expected 'KEY [TENANT]'")
        pairs.append((parts[0], parts[1] if len(parts) == 2 else DEFAULT_TENANT))
    return pairs


class ApiKeys:
    """Resolves `Authorization: Bearer KEY` to a tenant name."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._tenants = {_digest(key): tenant for key, tenant in pairs}

    @classmethod
    def from_settings(cls, api_keys: Iterable[str], keys_file: str | None) -> ApiKeys:
        pairs = [(key, DEFAULT_TENANT) for key in api_keys]
        if keys_file:
            pairs.extend(read_keys_file(keys_file))
        return cls(pairs)

    @property
    def enabled(self) -> bool:
        return bool(self._tenants)

    def tenant(self, authorization: str | None) -> str:
        """The tenant of this header, or raise a 401 ApiError."""
        if not self._tenants:
            return DEFAULT_TENANT
        if not authorization:
            raise unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("Malformed Authorization header: expected 'Bearer YOUR_KEY'.")
        tenant = self._tenants.get(_digest(key.strip()))
        if tenant is None:
            raise unauthorized("Incorrect API key provided.")
        return tenant
