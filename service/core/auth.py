"""API keys, whichever transport carries them: a request presents one (HTTP
`Authorization: Bearer KEY` or `x-api-key: KEY`, the same as gRPC metadata) and gets the
scope of the key it matches, `api` (scoring, ranking, models) or `admin` (also
/v1/admin/* and loading or unloading models). With no key configured, auth is off. Keys are compared as SHA-256 digests,
each with `hmac.compare_digest`, and every configured key is compared, so the time a check
takes says nothing about how much of a key was right."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path

from service.config.sections import AuthSettings
from service.core.errors import APIError

API, ADMIN = "api", "admin"
KEY_HEADERS = ("authorization", "x-api-key")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_keys_file(path: Path) -> list[tuple[str, str]]:
    """(key, scope) per line: `KEY` (api) or `KEY admin`; blank lines and `#` comments skipped."""
    keys = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1] not in (API, ADMIN)):
            raise ValueError(f"{path}:{number}: expected `KEY` or `KEY admin`")
        keys.append((words[0], words[1] if len(words) == 2 else API))
    return keys


class KeyRing:
    def __init__(self, auth: AuthSettings):
        keys = [(k.get_secret_value(), API) for k in auth.api_keys]
        keys += [(k.get_secret_value(), ADMIN) for k in auth.admin_api_keys]
        if auth.api_keys_file is not None:
            keys += read_keys_file(Path(auth.api_keys_file))
        self._digests = [(_digest(key), scope) for key, scope in keys]
        keyed = {"/metrics"} if auth.metrics_require_key else set()
        self.open_paths = frozenset(auth.open_paths) - keyed

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def scope(self, key: str | None) -> str | None:
        """The scope of `key` (admin wins when a key is listed twice), None when it matches none."""
        if key is None:
            return None
        presented = _digest(key)
        found = None
        for digest, scope in self._digests:
            if hmac.compare_digest(presented, digest) and found != ADMIN:
                found = scope
        return found

    def check(self, key: str | None, admin: bool) -> None:
        """Nothing when `key` may make the call; else 401 (no or unknown key) or 403 (an
        api key on an admin call)."""
        if not self.enabled:
            return
        scope = self.scope(key)
        if scope is None:
            message = "an API key is needed" if key is None else "the API key is not valid"
            raise APIError(401, "unauthorized", f"{message}: send `Authorization: Bearer KEY` (or `x-api-key: KEY`)",
                           headers={"WWW-Authenticate": "Bearer"})
        if admin and scope != ADMIN:
            raise APIError(403, "forbidden", "this call needs an admin API key")


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request presents: a Bearer token, else an x-api-key value."""
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return api_key or None


def key_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{name: value} of the headers (or gRPC metadata) that can carry a key, names in lower
    case; 400 naming one sent more than once, as the two copies could present two keys."""
    found: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        if name in KEY_HEADERS:
            if name in found:
                raise APIError(400, "invalid_request", f"{name} is sent more than once; send one key", name)
            found[name] = value
    return found
