"""The dashboard's login session and CSRF tokens (no server-side state).

After the operator types a token, the browser holds a cookie
``b64url(SHA-256(token)) "." expiry "." mac``: the MAC (HMAC-SHA256 under a key derived
from the issuer's key file, so every worker accepts it) binds the token's hash and the
expiry. Each request looks the hash up again, so revoking the token ends its sessions;
the token itself never leaves the login form. The cookie is HttpOnly, SameSite=Strict,
path ``/dashboard``.

CSRF: every form carries ``HMAC(key, "csrf" || cookie)`` (the login form: a random value
doubled in a short-lived cookie), and a POST is refused unless it matches and its
``Origin`` (if sent) is the dashboard's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from farthing.core.clock import Clock
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import MalformedMessage
from farthing.core.primitives import constant_time_eq, hmac_sha256

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "Sessions"]

SESSION_COOKIE: Final = "farthing_dashboard"
LOGIN_COOKIE: Final = "farthing_login"
SESSION_SECONDS: Final = 8 * 3600


@dataclass(frozen=True, slots=True)
class Sessions:
    key: bytes
    clock: Clock

    def issue(self, token_digest: bytes) -> str:
        expires = self.clock.now() + SESSION_SECONDS
        body = f"{b64url_encode(token_digest)}.{expires}"
        return f"{body}.{b64url_encode(self._mac(b'session', body))}"

    def token_digest(self, cookie: str | None) -> bytes | None:
        """The token hash a valid, unexpired cookie names, else None."""
        if not cookie or len(cookie) > 256 or cookie.count(".") != 2:
            return None
        digest, expires, mac = cookie.split(".")
        body = f"{digest}.{expires}"
        try:
            ok = constant_time_eq(b64url_decode(mac, max_len=44), self._mac(b"session", body))
            if not ok or not expires.isdigit() or int(expires) < self.clock.now():
                return None
            return b64url_decode(digest, max_len=44)
        except MalformedMessage:
            return None

    def csrf(self, cookie: str) -> str:
        return b64url_encode(self._mac(b"csrf", cookie))

    def csrf_ok(self, cookie: str | None, sent: str | None) -> bool:
        if not cookie or not sent:
            return False
        return constant_time_eq(self.csrf(cookie).encode(), sent.encode())

    def _mac(self, purpose: bytes, body: str) -> bytes:
        return hmac_sha256(self.key, purpose + b"\x00" + body.encode())
