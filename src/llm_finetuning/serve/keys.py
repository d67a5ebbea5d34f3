"""API keys and whose they are: each key names an owner, and what an owner creates only that owner sees.

`llmft serve --api-key K` is one key (owner `default`); `--api-keys FILE` holds `owner: key` lines (YAML) for a
server several people or teams share. No key at all is allowed on loopback only (owner `local`).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path

import yaml
from fastapi import Request

from llm_finetuning.errors import UserError
from llm_finetuning.serve.protocol import ApiError

_OWNER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LOCAL = "local"


class ApiKeys:
    """Bearer tokens -> owners. Empty: every request is the `local` owner."""

    def __init__(self, owners: Mapping[str, str] | None = None) -> None:
        self._by_key = {key.encode(): owner for owner, key in (owners or {}).items()}

    @classmethod
    def single(cls, key: str | None) -> ApiKeys:
        return cls({"default": key} if key else None)

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def owner(self, request: Request) -> str:
        """The owner of the request's key; 401 for a missing or unknown key."""
        if not self._by_key:
            return LOCAL
        given = request.headers.get("authorization", "").encode()
        found = None
        for key, owner in self._by_key.items():  # compare against every key: the time says nothing of which
            if hmac.compare_digest(given, b"Bearer " + key):
                found = owner
        if found is None:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing or wrong API key", code="invalid_api_key")
        return found


def load_keys(path: str | Path) -> ApiKeys:
    """`owner: key` lines; owners are lowercase names (they appear in model ids), keys at least 16 characters."""
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--api-keys {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"--api-keys {path}: expected `owner: key` lines, e.g. `team-a: sk-...`")
    seen: dict[str, str] = {}
    for owner, key in data.items():
        owner = str(owner)
        if not _OWNER.match(owner):
            raise UserError(f"--api-keys {path}: owner `{owner}`: use lowercase letters, digits, '-' or '_'")
        if not isinstance(key, str) or len(key) < 16:
            raise UserError(f"--api-keys {path}: the key of `{owner}` must be a string of at least 16 characters")
        if key in seen:
            raise UserError(f"--api-keys {path}: `{owner}` and `{seen[key]}` share a key; give each its own")
        seen[key] = owner
    return ApiKeys({owner: key for key, owner in seen.items()})
