"""The "Payment" HTTP authentication scheme (HTTP 402), as pure parsing and formatting.

Shared by the vendor (issues challenges, reads credentials, writes receipts) and the wallet
(reads challenges, writes credentials, reads receipts). No I/O: header values in, typed
values or :class:`~farthing.core.errors.MalformedMessage` out.

Shapes, after draft-httpauth-payment-02 (see docs/http.md for our methods)::

    WWW-Authenticate: Payment id="..", realm="..", method="szmchain", intent="charge",
                      request="<b64url JCS JSON>", expires="2026-11-21T10:00:00Z",
                      opaque="<b64url JCS {"nonce": ..}>"
    Authorization:    Payment <b64url JSON {"challenge": {id, realm, method, intent,
                                    request, expires, opaque, ...as received},
                                    "source"?: .., "payload": {..}}>
    Payment-Receipt:  <b64url JSON {"status": "success", "method": .., "timestamp": ..,
                                    "reference": .., ...}>

Challenge ids are stateless and follow the draft's recommended binding ("HMAC-SHA256
Binding"): ``id = b64url(HMAC-SHA256(secret, realm|method|intent|request|expires|digest|
opaque[|header]))`` over the parameters as they appear on the wire. A fresh random nonce in
``opaque`` makes every id unique. The vendor checks a credential's echoed challenge with one
HMAC and no database row (:class:`ChallengeBinder`).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, cast

import orjson
import rfc8785

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import ErrorCode, InvalidPayment, MalformedMessage, PaymentExpired
from farthing.core.primitives import constant_time_eq, hmac_sha256, sha256

__all__ = [
    "CHALLENGE_NONCE_LEN",
    "INTENT",
    "OWS",
    "PAYMENT_AUTHORIZATION",
    "Challenge",
    "ChallengeBinder",
    "ChallengeEcho",
    "ChallengeId",
    "Credential",
    "JsonObject",
    "Receipt",
    "content_digest",
    "decode_json_b64",
    "encode_jcs_b64",
    "encode_json_b64",
    "format_accept_payment",
    "format_challenge",
    "format_credential",
    "format_rfc3339",
    "order_by_preference",
    "parse_accept_payment",
    "parse_challenges",
    "parse_credential",
    "parse_rfc3339",
]

JsonObject = dict[str, object]

INTENT: Final = "charge"
PAYMENT_AUTHORIZATION: Final = "Payment-Authorization"  # the one allowed ``header`` value
CHALLENGE_NONCE_LEN: Final = 16
_ID_LEN: Final = 32  # an HMAC-SHA256
MAX_HEADER: Final = 8192
# HTTP's optional whitespace (RFC 9110 5.6.3): space and tab only. ``str.strip()`` would also
# take the C0 separators and Unicode spaces (\x1f, \x85, \xa0), letting a broken header pass.
OWS: Final = " \t"
_METHOD: Final = re.compile(r"\A[a-z]+\Z")  # the draft: lowercase ASCII letters only
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM: Final = re.compile(
    r"[ \t]*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*"
    r'(?:"((?:[^"\\]|\\.)*)"|([!#$%&\'*+.^_`|~0-9A-Za-z-]+))[ \t]*'
)
_REQUIRED_PARAMS: Final = ("id", "realm", "method", "intent", "request")
_ECHO_OPTIONAL: Final = ("expires", "digest", "opaque", "header", "description")


# --- JSON in base64url, strict ------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, object]]) -> JsonObject:
    result: JsonObject = dict(pairs)
    if len(result) != len(pairs):  # a member named twice collapsed into one
        raise MalformedMessage("duplicate JSON member", code=ErrorCode.MALFORMED_CREDENTIAL)
    return result


def _reject_constant(name: str) -> object:
    raise MalformedMessage("non-finite number in JSON", code=ErrorCode.MALFORMED_CREDENTIAL)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 overflows to inf without ever saying "Infinity"
        raise MalformedMessage("non-finite number in JSON", code=ErrorCode.MALFORMED_CREDENTIAL)
    return value


def encode_json_b64(obj: JsonObject) -> str:
    """Compact JSON, keys sorted, UTF-8, in base64url. orjson writes it ~5x faster than
    ``json`` (a receipt: ~1 us against ~5.5 us; the same bytes, a test compares them);
    what orjson refuses (an integer past 64 bits) goes through ``json``."""
    try:
        raw = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        text = json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        raw = text.encode("utf-8")
    return b64url_encode(raw)


def encode_jcs_b64(obj: JsonObject) -> str:
    """JCS (RFC 8785) JSON in base64url: what the draft requires of ``request`` and
    ``opaque``, so that every implementation binds the same bytes."""
    value = cast("rfc8785._impl._Value", obj)  # a JSON object: the values rfc8785 takes
    return b64url_encode(rfc8785.dumps(value))


# One decoder for every credential: ``json.loads`` with hooks builds a new one per call
# (a fifth of reading a credential's JSON).
_STRICT_JSON: Final = json.JSONDecoder(
    object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant, parse_float=_finite_float
)


def decode_json_b64(text: str, *, max_len: int = MAX_HEADER) -> JsonObject:
    """base64url JSON object; duplicates, NaN, non-objects and bad UTF-8 are refused."""
    try:
        raw = b64url_decode(text, max_len=max_len)
        obj = _STRICT_JSON.decode(raw.decode("utf-8"))
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


@functools.lru_cache(maxsize=64)
def parse_rfc3339(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise MalformedMessage("bad RFC 3339 time") from None
    if moment.tzinfo is None:
        raise MalformedMessage("RFC 3339 time needs a zone")
    return int(moment.timestamp())


# --- challenges -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One ``WWW-Authenticate: Payment`` challenge.

    ``request``, ``expires`` and ``opaque`` are the values; ``request_b64``,
    ``expires_text`` and ``opaque_b64`` their text on the wire, which a credential echoes
    unchanged (computed here, JCS, when a challenge is built rather than parsed).
    """

    id: str
    realm: str
    method: str
    intent: str
    request: JsonObject = field(hash=False)
    expires: int | None = None
    description: str | None = None
    digest: str | None = None
    opaque: dict[str, str] | None = field(default=None, hash=False)
    header: str | None = None
    request_b64: str = ""
    expires_text: str = ""
    opaque_b64: str = ""

    def __post_init__(self) -> None:
        if not _METHOD.match(self.method):
            raise MalformedMessage("bad payment method identifier")
        if not self.id:
            raise MalformedMessage("challenge id is empty")
        if self.header is not None and self.header != PAYMENT_AUTHORIZATION:
            raise MalformedMessage("challenge selects an unknown credential header")
        if not self.request_b64:
            object.__setattr__(self, "request_b64", encode_jcs_b64(self.request))
        if self.expires is not None and not self.expires_text:
            object.__setattr__(self, "expires_text", format_rfc3339(self.expires))
        if self.opaque is not None and not self.opaque_b64:
            object.__setattr__(self, "opaque_b64", encode_jcs_b64(dict(self.opaque)))

    @property
    def credential_header(self) -> str:
        """The request header the credential for this challenge must travel in."""
        return self.header or "Authorization"

    def echo(self) -> ChallengeEcho:
        """The challenge as a credential repeats it: every parameter, as received."""
        return ChallengeEcho(
            id=self.id,
            realm=self.realm,
            method=self.method,
            intent=self.intent,
            request=self.request_b64,
            expires=self.expires_text or None,
            digest=self.digest,
            opaque=self.opaque_b64 or None,
            header=self.header,
            description=self.description,
        )


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _quote(value: str) -> str:
    if _CONTROL.search(value):  # one C scan; a generator over the characters cost ~30 us
        raise ValueError("control character in header parameter")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_challenge(challenge: Challenge) -> str:
    params = {
        "id": challenge.id,
        "realm": challenge.realm,
        "method": challenge.method,
        "intent": challenge.intent,
        "request": challenge.request_b64,
    }
    optional = {
        "expires": challenge.expires_text or None,
        "digest": challenge.digest,
        "opaque": challenge.opaque_b64 or None,
        "header": challenge.header,
        "description": challenge.description,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
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
    parameter is skipped too (a client should pick among the ones it understands), and so
    is one selecting a credential header other than ``Payment-Authorization`` (the draft).
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


def _opaque_map(text: str) -> dict[str, str]:
    obj = decode_json_b64(text)
    if not all(isinstance(v, str) for v in obj.values()):
        raise MalformedMessage("opaque is not a map of strings")
    return {k: str(v) for k, v in obj.items()}


def _challenge_from_params(params: dict[str, str]) -> Challenge:
    if not all(params.get(p) for p in _REQUIRED_PARAMS):
        raise MalformedMessage("challenge lacks parameters")  # or has one empty
    expires_text, opaque_b64 = params.get("expires"), params.get("opaque")
    return Challenge(
        id=params["id"],
        realm=params["realm"],
        method=params["method"],
        intent=params["intent"],
        request=decode_json_b64(params["request"]),
        request_b64=params["request"],
        expires=parse_rfc3339(expires_text) if expires_text is not None else None,
        expires_text=expires_text or "",
        description=params.get("description"),
        digest=params.get("digest"),
        opaque=_opaque_map(opaque_b64) if opaque_b64 is not None else None,
        opaque_b64=opaque_b64 or "",
        header=params.get("header"),
    )


# --- request bodies -------------------------------------------------------------------------


def content_digest(body: bytes) -> str:
    """The ``digest`` of a request body: an RFC 9530 ``Content-Digest`` value, SHA-256
    (``sha-256=:<base64>:``), as the draft's example writes it."""
    return "sha-256=:" + base64.b64encode(sha256(body)).decode("ascii") + ":"


# --- client preferences ---------------------------------------------------------------------

_RANGE: Final = re.compile(
    r"\A[ \t]*([a-z]+|\*)/([A-Za-z0-9-]+|\*)[ \t]*"
    r"(?:;[ \t]*q[ \t]*=[ \t]*(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?))?[ \t]*\Z"
)


def parse_accept_payment(value: str) -> list[tuple[str, str, float]] | None:
    """``Accept-Payment: szmchain/charge, hll/*;q=0.5``: (method, intent, q) per range, or
    None when the header is malformed (the draft lets a server ignore it then)."""
    ranges = []
    for part in value.split(","):
        if not part.strip(OWS):
            continue
        match = _RANGE.match(part)
        if match is None:
            return None
        ranges.append((match.group(1), match.group(2), float(match.group(3) or 1)))
    return ranges


def format_accept_payment(methods: Sequence[str], *, intent: str = "charge") -> str:
    """``Accept-Payment`` naming ``methods`` for ``intent``, most wanted first: the first
    without a weight (q=1), each next one 0.1 lower (at least 0.001), so a server that sorts
    by q keeps this order."""
    ranges = []
    for rank, method in enumerate(methods):
        thousandths = max(1, 1000 - 100 * rank)
        weight = "" if thousandths == 1000 else ";q=" + f"{thousandths / 1000:.3f}".rstrip("0")
        ranges.append(f"{method}/{intent}{weight}")
    return ", ".join(ranges)


def _preference(challenge: Challenge, ranges: list[tuple[str, str, float]]) -> float | None:
    """The q of the most specific range that matches the challenge, None if none does."""
    best: tuple[int, float] | None = None
    for method, intent, q in ranges:
        if method not in ("*", challenge.method) or intent not in ("*", challenge.intent):
            continue
        specificity = (method != "*") * 2 + (intent != "*")
        if best is None or specificity > best[0]:
            best = (specificity, q)
    return None if best is None else best[1]


def order_by_preference(challenges: list[Challenge], accept: str | None) -> list[Challenge]:
    """The challenges a client's ``Accept-Payment`` asks for, most wanted first (the
    draft's rules: drop q=0 and unmatched, sort by q, keep the server's order on ties).
    Without the header, with a malformed one, or when nothing would be left: all of them."""
    ranges = parse_accept_payment(accept) if accept is not None else None
    if not ranges:
        return challenges
    scored = [(q, c) for c in challenges if (q := _preference(c, ranges))]
    if not scored:
        return challenges
    return [c for _, c in sorted(scored, key=lambda pair: -pair[0])]


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ChallengeEcho:
    """The ``challenge`` member of a credential: the challenge's parameters as text, as
    the server sent them (``request`` and ``opaque`` still base64url)."""

    id: str
    realm: str
    method: str
    intent: str
    request: str
    expires: str | None = None
    digest: str | None = None
    opaque: str | None = None
    header: str | None = None
    description: str | None = None

    def to_json(self) -> JsonObject:
        obj: JsonObject = {
            "id": self.id,
            "realm": self.realm,
            "method": self.method,
            "intent": self.intent,
            "request": self.request,
        }
        for name in _ECHO_OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                obj[name] = value
        return obj

    @classmethod
    def from_json(cls, obj: object) -> ChallengeEcho:
        """Strict about what it reads: the five required members, every member read a
        string. Members it does not know are ignored (the draft's rule)."""
        if not isinstance(obj, dict):
            raise MalformedMessage("credential challenge", code=ErrorCode.MALFORMED_CREDENTIAL)
        values: dict[str, str | None] = {}
        for name in (*_REQUIRED_PARAMS, *_ECHO_OPTIONAL):
            value = obj.get(name)
            if value is None and name not in _REQUIRED_PARAMS:
                values[name] = None
                continue
            if not isinstance(value, str) or not value:
                raise MalformedMessage(
                    f"credential challenge {name}", code=ErrorCode.MALFORMED_CREDENTIAL
                )
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]

    def binding_input(self) -> bytes:
        """The draft's HMAC input: seven fixed slots, an eighth for ``header``."""
        slots = [
            self.realm,
            self.method,
            self.intent,
            self.request,
            self.expires or "",
            self.digest or "",
            self.opaque or "",
        ]
        if self.header is not None:
            slots.append(self.header)
        return "|".join(slots).encode("utf-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential:
    """The JSON inside ``Authorization: Payment <b64url>`` (or ``Payment-Authorization``)."""

    challenge: ChallengeEcho
    payload: JsonObject = field(hash=False)
    source: str | None = None

    @classmethod
    def answering(
        cls, challenge: Challenge, payload: JsonObject, *, source: str | None = None
    ) -> Credential:
        return cls(challenge=challenge.echo(), payload=payload, source=source)


def format_credential(credential: Credential) -> str:
    obj: JsonObject = {"challenge": credential.challenge.to_json(), "payload": credential.payload}
    if credential.source is not None:
        obj["source"] = credential.source
    return "Payment " + encode_json_b64(obj)


def parse_credential(header: str) -> Credential:
    """Exactly ``Payment <token68>``: a JSON object with a ``challenge`` object, a
    ``payload`` object and an optional ``source`` string; other members are ignored."""
    if len(header) > MAX_HEADER:
        raise MalformedMessage("credential too long", code=ErrorCode.OVERSIZED)
    scheme, _, token = header.strip(OWS).partition(" ")
    token = token.strip(OWS)
    if scheme.lower() != "payment" or not token or " " in token or "\t" in token:
        raise MalformedMessage("not a Payment credential", code=ErrorCode.MALFORMED_CREDENTIAL)
    obj = decode_json_b64(token)
    if "challenge" not in obj or "payload" not in obj:
        raise MalformedMessage("credential members wrong", code=ErrorCode.MALFORMED_CREDENTIAL)
    payload, source = obj["payload"], obj.get("source")
    if not isinstance(payload, dict):
        raise MalformedMessage("credential member types", code=ErrorCode.MALFORMED_CREDENTIAL)
    if source is not None and not isinstance(source, str):
        raise MalformedMessage("credential member types", code=ErrorCode.MALFORMED_CREDENTIAL)
    return Credential(
        challenge=ChallengeEcho.from_json(obj["challenge"]), payload=payload, source=source
    )


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
    """A verified challenge: its id's raw bytes (the HMAC) and its expiry."""

    raw: bytes
    expires: int


def _challenge_invalid() -> InvalidPayment:
    return InvalidPayment("unknown challenge", code=ErrorCode.CHALLENGE_INVALID)


@dataclass(frozen=True, slots=True)
class _HeaderTemplate:
    """The parts of a challenge header and of its binding that do not change from one
    challenge to the next (realm, method, intent, request, header), quoted once."""

    binding_head: str  # "realm|method|intent|request|"
    binding_tail: str  # "|header" or ""
    params: str  # 'realm="..", method="..", intent="charge", request=".."'
    tail: str  # ', header="Payment-Authorization"' or ""


def _header_template(
    realm: str, method: str, request_b64: str, header: str | None
) -> _HeaderTemplate:
    if header is not None and header != PAYMENT_AUTHORIZATION:
        raise MalformedMessage("challenge selects an unknown credential header")
    if not _METHOD.match(method):
        raise MalformedMessage("bad payment method identifier")
    constant = (("realm", realm), ("method", method), ("intent", INTENT), ("request", request_b64))
    params = ", ".join(f"{k}={_quote(v)}" for k, v in constant)
    return _HeaderTemplate(
        binding_head=f"{realm}|{method}|{INTENT}|{request_b64}|",
        binding_tail="" if header is None else f"|{header}",
        params=params,
        tail="" if header is None else f", header={_quote(header)}",
    )


def _nonce_opaque(nonce: bytes) -> str:
    """``opaque`` of a fresh challenge: JCS ``{"nonce": "<b64url>"}`` in base64url (a
    base64url string needs no escaping, so the JCS text is this concatenation)."""
    return b64url_encode(b'{"nonce":"' + b64url_encode(nonce).encode("ascii") + b'"}')


class ChallengeBinder:
    """Makes and checks challenge ids with no database: the draft's HMAC-SHA256 binding."""

    __slots__ = ("_secret", "_templates")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("challenge secret must be at least 32 bytes")
        self._secret = secret
        # One per (realm, method, request, header) a vendor issues: its routes x methods x 2.
        self._templates: dict[tuple[str, str, str, str | None], _HeaderTemplate] = {}

    def challenge_header(
        self,
        *,
        realm: str,
        method: str,
        request_b64: str,
        expires: int,
        nonce: bytes,
        header: str | None = None,
    ) -> str:
        """``format_challenge(issue(...))`` for a challenge without ``digest``, the same
        text, without building the challenge: what every paid answer carries (its next
        challenge). The constant parameters are quoted once per route and method; per
        call, one HMAC and a few concatenations (bench/profile.py measures both)."""
        if len(nonce) != CHALLENGE_NONCE_LEN:
            raise ValueError("challenge nonce must be 16 random bytes")
        key = (realm, method, request_b64, header)
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = _header_template(realm, method, request_b64, header)
        expires_text = format_rfc3339(expires)
        opaque = _nonce_opaque(nonce)
        binding = f"{template.binding_head}{expires_text}||{opaque}{template.binding_tail}"
        challenge_id = b64url_encode(hmac_sha256(self._secret, binding.encode("utf-8")))
        return (
            f'Payment id="{challenge_id}", {template.params}, expires="{expires_text}", '
            f'opaque="{opaque}"{template.tail}'
        )

    def _id(self, echo: ChallengeEcho) -> bytes:
        return hmac_sha256(self._secret, echo.binding_input())

    def issue(
        self,
        *,
        realm: str,
        method: str,
        request: JsonObject,
        request_b64: str,
        expires: int,
        nonce: bytes,
        digest: str | None = None,
        header: str | None = None,
    ) -> Challenge:
        """A fresh ``charge`` challenge; ``request_b64`` is ``request`` in JCS base64url
        (the caller caches it per route), ``nonce`` the random bytes that make it unique."""
        if len(nonce) != CHALLENGE_NONCE_LEN:
            raise ValueError("challenge nonce must be 16 random bytes")
        opaque = {"nonce": b64url_encode(nonce)}
        unbound = Challenge(
            id="-",
            realm=realm,
            method=method,
            intent=INTENT,
            request=request,
            request_b64=request_b64,
            expires=expires,
            digest=digest,
            opaque=opaque,
            header=header,
        )
        challenge_id = b64url_encode(self._id(unbound.echo()))
        return Challenge(
            id=challenge_id,
            realm=realm,
            method=method,
            intent=INTENT,
            request=request,
            request_b64=request_b64,
            expires=expires,
            expires_text=unbound.expires_text,
            digest=digest,
            opaque=opaque,
            opaque_b64=unbound.opaque_b64,
            header=header,
        )

    def verify(
        self,
        echo: ChallengeEcho,
        *,
        now: int,
        realm: str,
        request_b64: str,
        digest: str | None = None,
        header: str | None = None,
    ) -> ChallengeId:
        """The echoed challenge, if this vendor issued it for this very request: the id
        is the HMAC of the echoed parameters, and realm, intent, request, digest and the
        credential's header are this request's. Else InvalidPayment (``invalid-challenge``),
        or PaymentExpired once its ``expires`` has passed."""
        try:
            raw = b64url_decode(echo.id, max_len=64)
        except MalformedMessage:
            raise _challenge_invalid() from None
        if len(raw) != _ID_LEN or not constant_time_eq(self._id(echo), raw):
            raise _challenge_invalid()
        expected = (realm, INTENT, request_b64, digest, header)
        if (echo.realm, echo.intent, echo.request, echo.digest, echo.header) != expected:
            raise _challenge_invalid()
        if echo.expires is None:
            raise _challenge_invalid()  # we never issue one without
        expires = parse_rfc3339(echo.expires)
        if now >= expires:
            raise PaymentExpired("challenge expired", code=ErrorCode.CHALLENGE_EXPIRED)
        return ChallengeId(raw=raw, expires=expires)
