"""Optional token authorization as in TorchServe >= 0.11 (off unless --enable-token-auth).

At start the server writes `key_file.json` (mode 0600) with an inference key, a management key
(both expire after token_expiration_min) and an API key that never expires. Clients send
`Authorization: Bearer <key>`; the inference port checks the inference key, the management port
the management key (the metrics port stays open, as in TorchServe). `GET /token?type=inference|management` on the management
port, with the API key, replaces that key and rewrites the file. Failures answer TorchServe's
400 InvalidKeyException (its clients expect 400, not 401). Keys are compared in constant time.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import os
import re
import secrets
import time
import weakref
from pathlib import Path
from typing import Any

from triserve.options import TorchServeOptions
from triserve.protocols.torchserve.forms import error_response

FAILED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
_BEARER = re.compile(r"^Bearer\s+(\S+)$")


def _key() -> str:
    return secrets.token_urlsafe(6)  # 6 random bytes, base64url: 8 characters, as TorchServe


class TokenAuth:
    def __init__(self, key_file: Path, expiration_min: int) -> None:
        self.key_file = key_file
        self.expiration_s = expiration_min * 60
        self.keys: dict[str, tuple[str, float | None]] = {}
        for kind in ("management", "inference"):
            self.keys[kind] = (_key(), time.time() + self.expiration_s)
        self.keys["API"] = (_key(), None)
        self.write()

    def write(self) -> None:
        data: dict[str, Any] = {}
        for kind, (key, expires) in self.keys.items():
            data[kind] = {"key": key}
            if expires is not None:
                stamp = dt.datetime.fromtimestamp(expires, dt.timezone.utc)
                data[kind]["expiration time"] = stamp.isoformat().replace("+00:00", "Z")
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(data, f, indent=2)

    def check(self, kind: str, authorization: str | None) -> bool:
        match = _BEARER.match(authorization or "")
        if not match:
            return False
        key, expires = self.keys[kind]
        if expires is not None and time.time() > expires:
            return False
        return hmac.compare_digest(match.group(1).encode(), key.encode())

    def refresh(self, kind: str) -> None:
        self.keys[kind] = (_key(), time.time() + self.expiration_s)
        self.write()


_BY_SERVER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def auth_for(dataplane: Any, options: TorchServeOptions) -> TokenAuth | None:
    """The server's token keys (one set shared by its TorchServe front ends), or None when off."""
    if not options.enable_token_auth:
        return None
    if dataplane not in _BY_SERVER:
        _BY_SERVER[dataplane] = TokenAuth(options.token_key_file, options.token_expiration_min)
    return _BY_SERVER[dataplane]


class RequireToken:
    """ASGI wrapper: every HTTP request must carry the `kind` key (the API key for `/token`)."""

    def __init__(self, app: Any, auth: TokenAuth, kind: str) -> None:
        self.app = app
        self.auth = auth
        self.kind = kind

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            kind = "API" if scope["path"] == "/token" else self.kind
            if not self.auth.check(kind, header):
                await error_response(400, "InvalidKeyException", FAILED)(scope, receive, send)
                return
        await self.app(scope, receive, send)
