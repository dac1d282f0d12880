"""Idempotent retry: the same paid request sent again gets the same good, with no new charge.

An answer lost after the vendor committed a payment (a reset connection, a timeout) must
not cost the reader the good. The vendor records, with the payment itself and in the same
conditional write, a *request tag*: a digest of the HTTP method, the canonical path and
the credential exactly as sent. A later request whose payment is the one the store
accepted last (for SZM and PayWord: index equal to ``spent``) and whose tag is equal is
that request again; it is served again without taking a unit. A credential sent to
another path, with another HTTP method or with any byte changed has another tag and stays
a replay. The window is the challenge's: an expired challenge id is refused before any
payment is looked at.

Only safe methods (GET, HEAD; RFC 9110, section 9.2.1) are retried: serving a retry calls
the app again, which for another method could repeat its effect. Their requests get no
tag, so their payments are never served twice.
"""

from __future__ import annotations

import struct
from typing import Final

from farthing.core.encoding import MAX_FIELD, header
from farthing.core.primitives import constant_time_eq, sha256

__all__ = ["REQUEST_TAG_LEN", "RETRYABLE_METHODS", "request_tag", "same_request"]

REQUEST_TAG_LEN: Final = 16
RETRYABLE_METHODS: Final = frozenset({"GET", "HEAD"})
_DOMAIN: Final = "farthing/http/paid-request"
_HEADER: Final = header(_DOMAIN)
_U16: Final = struct.Struct(">H")


def request_tag(*, http_method: str, path: str, authorization: str) -> bytes | None:
    """The tag of a paid request, or None if it may not be retried.

    ``path`` is the canonical path the price was looked up for; ``authorization`` the
    header's value exactly as received (the tag binds every byte of the credential).
    """
    if http_method not in RETRYABLE_METHODS:
        return None
    raw_path = path.encode("utf-8", "surrogatepass")
    raw_credential = authorization.encode("latin-1", "replace")
    if len(raw_path) > MAX_FIELD or len(raw_credential) > MAX_FIELD:
        return None
    # canonical(domain, method, path, credential), as Writer builds it, without its objects:
    # this runs on every paid request.
    raw_method = http_method.encode("ascii")
    message = b"".join(
        (
            _HEADER,
            _U16.pack(len(raw_method)),
            raw_method,
            _U16.pack(len(raw_path)),
            raw_path,
            _U16.pack(len(raw_credential)),
            raw_credential,
        )
    )
    return sha256(message)[:REQUEST_TAG_LEN]


def same_request(stored: bytes | None, request: bytes | None) -> bool:
    """Is ``request`` the request whose tag was stored with the payment? (constant time)"""
    if stored is None or request is None:
        return False
    return constant_time_eq(stored, request)
