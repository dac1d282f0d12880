"""The "Payment" HTTP authentication scheme (HTTP 402), as pure parsing and formatting.

Shared by the vendor (issues challenges, reads credentials, writes receipts) and the wallet
(reads challenges, writes credentials, reads receipts). No I/O: header values in, typed
values or :class:`~farthing.core.errors.MalformedMessage` out.

Shapes, after draft-ryan-httpauth-payment-01 (see docs/http.md for our methods)::

    WWW-Authenticate: Payment id="..", realm="..", method="szm:chain", intent="charge",
                      request="<b64url JSON>", expires="2026-11-21T10:00:00Z"
    Authorization:    Payment <b64url JSON {"id": .., "source"?: .., "payload": {..}}>
    Payment-Receipt:  <b64url JSON {"status": "success", "method": .., "timestamp": ..,
                                    "reference": .., ...}>

Challenge ids are stateless: ``id = b64url(nonce[16] || expires[8] || tag[16])`` where tag
is an HMAC by the vendor over (nonce, expires, realm, method, scope, price). The scope is
the priced route pattern (``/articles/*``), not one URL, so a client may pay *up front* for
another URL of the same route with a challenge it still holds; reuse cannot spend twice
because every payment carries a fresh card counter or chain index that the vendor accepts
once (see docs/http.md, "single use").
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from farthing.core.encoding import Writer, b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment, MalformedMessage, PaymentExpired
from farthing.core.primitives import constant_time_eq, hmac_sha256

__all__ = [
    "CHALLENGE_NONCE_LEN",
    "Challenge",
    "ChallengeId",
    "ChallengeSigner",
    "Credential",
    "JsonObject",
    "Receipt",
    "decode_json_b64",
    "encode_json_b64",
    "format_challenge",
    "format_credential",
    "format_rfc3339",
    "parse_challenges",
    "parse_credential",
    "parse_rfc3339",
]

JsonObject = dict[str, object]

CHALLENGE_NONCE_LEN: Final = 16
_TAG_LEN: Final = 16
_ID_LEN: Final = CHALLENGE_NONCE_LEN + 8 + _TAG_LEN
MAX_HEADER: Final = 8192
_METHOD: Final = re.compile(r"\A[a-z]+(:[a-z0-9-]+)?\Z")
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM: Final = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([!#$%&\'*+.^_`|~0-9A-Za-z-]+))\s*'
)
_CHALLENGE_PARAMS: Final = ("id", "realm", "method", "intent", "request", "expires", "description")
_CREDENTIAL_KEYS: Final = frozenset({"id", "source", "payload"})


# --- JSON in base64url, strict ------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, object]]) -> JsonObject:
    result: JsonObject = {}
    for key, value in pairs:
        if key in result:
            raise MalformedMessage("duplicate JSON member", code=ErrorCode.MALFORMED_CREDENTIAL)
        result[key] = value
    return result


def _reject_constant(name: str) -> object:
    raise MalformedMessage("non-finite number in JSON", code=ErrorCode.MALFORMED_CREDENTIAL)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf without ever saying "Infinity"
        raise MalformedMessage("non-finite number in JSON", code=ErrorCode.MALFORMED_CREDENTIAL)
    return value


def encode_json_b64(obj: JsonObject) -> str:
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url_encode(raw.encode("utf-8"))


def decode_json_b64(text: str, *, max_len: int = MAX_HEADER) -> JsonObject:
    """base64url JSON object; duplicates, NaN, non-objects and bad UTF-8 are refused."""
    try:
        raw = b64url_decode(text, max_len=max_len)
        obj = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except MalformedMessage as exc:
        raise MalformedMessage(exc.message, code=ErrorCode.MALFORMED_CREDENTIAL) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedMessage("not a JSON object", code=ErrorCode.MALFORMED_CREDENTIAL) from None
    if not isinstance(obj, dict):
        raise MalformedMessage("not a JSON object", code=ErrorCode.MALFORMED_CREDENTIAL)
    return obj


# --- time -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def format_rfc3339(unix: int) -> str:
    # Cached: every receipt of one second carries the same time, and strftime costs about
    # a third of writing a receipt header (measured on the paid path).
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MalformedMessage("bad RFC 3339 time") from None
    if moment.tzinfo is None:
        raise MalformedMessage("RFC 3339 time needs a zone")
    return int(moment.timestamp())


# --- challenges -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One ``WWW-Authenticate: Payment`` challenge."""

    id: str
    realm: str
    method: str
    intent: str
    request: JsonObject = field(hash=False)
    expires: int
    description: str | None = None

    def __post_init__(self) -> None:
        if not _METHOD.match(self.method):
            raise MalformedMessage("bad payment method identifier")


def _quote(value: str) -> str:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("control character in header parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_challenge(challenge: Challenge) -> str:
    params = {
        "id": challenge.id,
        "realm": challenge.realm,
        "method": challenge.method,
        "intent": challenge.intent,
        "request": encode_json_b64(challenge.request),
        "expires": format_rfc3339(challenge.expires),
    }
    if challenge.description is not None:
        params["description"] = challenge.description
    return "Payment " + ", ".join(f"{k}={_quote(v)}" for k, v in params.items())


def _split_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """RFC 9110 challenge list: ``scheme param=value, param=value, scheme2 ...``."""
    out: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while pos < len(header):
        while pos < len(header) and header[pos] in " ,":
            pos += 1
        scheme = _TOKEN.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while True:
            param = _PARAM.match(header, pos)
            if param is None:
                break
            name = param.group(1).lower()
            if name in params:
                raise MalformedMessage("duplicate challenge parameter")
            quoted = param.group(2)
            params[name] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else param.group(3)
            pos = param.end()
            if pos < len(header) and header[pos] == ",":
                pos += 1
        out.append((scheme.group(0), params))
    return out


def parse_challenges(headers: list[str]) -> list[Challenge]:
    """Every well-formed Payment challenge in the given WWW-Authenticate values.

    Challenges of other schemes are skipped; a Payment challenge with a missing or bad
    parameter is skipped too (a client should pick among the ones it understands).
    """
    found: list[Challenge] = []
    for header in headers:
        if len(header) > MAX_HEADER:
            raise MalformedMessage("header too long", code=ErrorCode.OVERSIZED)
        for scheme, params in _split_challenges(header):
            if scheme.lower() != "payment":
                continue
            try:
                found.append(_challenge_from_params(params))
            except MalformedMessage:
                continue
    return found


def _challenge_from_params(params: dict[str, str]) -> Challenge:
    missing = [p for p in _CHALLENGE_PARAMS[:6] if p not in params]
    if missing:
        raise MalformedMessage("challenge lacks parameters")
    return Challenge(
        id=params["id"],
        realm=params["realm"],
        method=params["method"],
        intent=params["intent"],
        request=decode_json_b64(params["request"]),
        expires=parse_rfc3339(params["expires"]),
        description=params.get("description"),
    )


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """The JSON inside ``Authorization: Payment <b64url>``."""

    id: str
    payload: JsonObject = field(hash=False)
    source: str | None = None


def format_credential(credential: Credential) -> str:
    obj: JsonObject = {"id": credential.id, "payload": credential.payload}
    if credential.source is not None:
        obj["source"] = credential.source
    return "Payment " + encode_json_b64(obj)


def parse_credential(header: str) -> Credential:
    """Strict: exactly ``Payment <token68>``, a JSON object with id, payload, optional source."""
    if len(header) > MAX_HEADER:
        raise MalformedMessage("credential too long", code=ErrorCode.OVERSIZED)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "payment" or not token or " " in token.strip():
        raise MalformedMessage("not a Payment credential", code=ErrorCode.MALFORMED_CREDENTIAL)
    obj = decode_json_b64(token.strip())
    if not set(obj) <= _CREDENTIAL_KEYS or "id" not in obj or "payload" not in obj:
        raise MalformedMessage("credential members wrong", code=ErrorCode.MALFORMED_CREDENTIAL)
    cid, payload, source = obj["id"], obj["payload"], obj.get("source")
    if not isinstance(cid, str) or not isinstance(payload, dict):
        raise MalformedMessage("credential member types", code=ErrorCode.MALFORMED_CREDENTIAL)
    if source is not None and not isinstance(source, str):
        raise MalformedMessage("credential member types", code=ErrorCode.MALFORMED_CREDENTIAL)
    return Credential(id=cid, payload=payload, source=source)


# --- receipts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Receipt:
    """The ``Payment-Receipt`` of a successful paid response."""

    method: str
    timestamp: int
    reference: str
    extra: JsonObject = field(default_factory=dict, hash=False)
    status: str = "success"

    def to_header(self) -> str:
        obj: JsonObject = dict(self.extra)
        obj.update(
            status=self.status,
            method=self.method,
            timestamp=format_rfc3339(self.timestamp),
            reference=self.reference,
        )
        return encode_json_b64(obj)

    @classmethod
    def from_header(cls, header: str) -> Receipt:
        obj = decode_json_b64(header)
        try:
            status, method = obj.pop("status"), obj.pop("method")
            timestamp, reference = obj.pop("timestamp"), obj.pop("reference")
        except KeyError:
            raise MalformedMessage("receipt lacks members") from None
        if not all(isinstance(v, str) for v in (status, method, timestamp, reference)):
            raise MalformedMessage("receipt member types")
        return cls(
            status=str(status),
            method=str(method),
            timestamp=parse_rfc3339(str(timestamp)),
            reference=str(reference),
            extra=obj,
        )


# --- stateless challenge ids ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeId:
    """A verified challenge id: its raw bytes, nonce and expiry."""

    raw: bytes
    nonce: bytes
    expires: int


class ChallengeSigner:
    """Makes and checks challenge ids with no database: nonce || expires || HMAC tag."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("challenge secret must be at least 32 bytes")
        self._secret = secret

    def _tag(
        self, nonce: bytes, expires: int, realm: str, method: str, scope: str, price: str
    ) -> bytes:
        message = (
            Writer("farthing/http/challenge")
            .bytes(nonce)
            .u64(expires)
            .text(realm)
            .text(method)
            .text(scope)
            .text(price)
            .finish()
        )
        return hmac_sha256(self._secret, message)[:_TAG_LEN]

    def issue(
        self, *, nonce: bytes, expires: int, realm: str, method: str, scope: str, price: str
    ) -> str:
        if len(nonce) != CHALLENGE_NONCE_LEN:
            raise ValueError("challenge nonce must be 16 random bytes")
        tag = self._tag(nonce, expires, realm, method, scope, price)
        return b64url_encode(nonce + expires.to_bytes(8, "big") + tag)

    def verify(
        self, challenge_id: str, *, now: int, realm: str, method: str, scope: str, price: str
    ) -> ChallengeId:
        """The id's nonce and expiry, or InvalidPayment / PaymentExpired."""
        try:
            raw = b64url_decode(challenge_id, max_len=64)
        except MalformedMessage:
            raise InvalidPayment("unknown challenge", code=ErrorCode.CHALLENGE_INVALID) from None
        if len(raw) != _ID_LEN:
            raise InvalidPayment("unknown challenge", code=ErrorCode.CHALLENGE_INVALID)
        nonce, expires = raw[:CHALLENGE_NONCE_LEN], int.from_bytes(raw[16:24], "big")
        expected = self._tag(nonce, expires, realm, method, scope, price)
        if not constant_time_eq(expected, raw[24:]):
            raise InvalidPayment("unknown challenge", code=ErrorCode.CHALLENGE_INVALID)
        if now >= expires:
            raise PaymentExpired("challenge expired", code=ErrorCode.CHALLENGE_EXPIRED)
        return ChallengeId(raw=raw, nonce=nonce, expires=expires)
