"""The cards a wallet holds: how each kind is read in, stored (secrets sealed) and described.

Every card, of every kind, carries in its public ``params`` the set of origins it may pay
(``sites``, chosen by the reader when adding it, changed by bind/unbind; empty: it pays
nobody), and its issuer: an SZM card its realm, an HLL card its bank (``bank``, the bank's
card-certification public key, checked against the card's certificate when added), a
PayWord account the broker of its certificate.

Kinds, by payment method:

``szm:chain`` / ``szm:prbg``
    An anonymous prepaid card bought from a vendor, read from its printed code
    (``FTH1-...``, :func:`farthing.core.cardcode.from_text`) or from the compact base64url
    form a QR code or file carries. The whole card (it contains the card secret) is sealed;
    the position ``spent`` and, for a BBS card, the generator state (sealed) advance with
    each payment.
``hll:mac``
    A bank's smart card. Its 16-byte id, balance, denomination and the bank's card
    certificate come from the bank's personalisation output (:class:`HllCardFile`, a small
    JSON file). The card key K_C is never in that file: it comes wrapped for the customer's
    PKCS#11 token (SoftHSM2, a hardware token or HSM) and is unwrapped inside it (see
    :mod:`farthing.wallet.pkcs11_card`). A *software* card (K_C sealed in the wallet) exists
    only for tests, made in code, never read from a file. The wallet keeps only where the
    token is (module path, token label, key label) and the token's user PIN, sealed, so
    payments run without asking for it. Whoever has the wallet file *and* its passphrase
    can pay with the token while it is plugged in, as a card in a reader with its PIN on a
    note would; the token still never gives out K_C. The counter and balance live in the
    wallet file, beside the token (see :mod:`farthing.wallet.pkcs11_card` for what that
    weakens).
``payword``
    A user Ed25519 key and the broker's certificate for it. The private key is sealed; the
    per-vendor commitments are made when first paying a vendor (:mod:`farthing.wallet.methods`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from farthing.core import cardcode
from farthing.core.cardcode import CardCode, Protocol
from farthing.core.encoding import Reader, Writer, b64url_decode, b64url_encode
from farthing.core.errors import Conflict, ErrorCode, LocalProtocolError, MalformedMessage
from farthing.core.money import Denomination
from farthing.core.primitives import constant_time_eq, ed25519_public_key, sha256
from farthing.core.schemes import hll, payword
from farthing.wallet.secretbox import SecretBox, record_id
from farthing.wallet.store import CardRow, NewCard

__all__ = [
    "BANK",
    "BANK_KEY_LEN",
    "HLL_CARD_FORMAT",
    "NO_EXPIRY",
    "SITES",
    "CardInfo",
    "HllCardFile",
    "HllSecret",
    "Pkcs11Location",
    "card_bank",
    "card_sites",
    "describe",
    "hll_card",
    "hll_certificate",
    "hll_secret",
    "parse_szm_code",
    "payword_card",
    "payword_certificate",
    "payword_private_key",
    "pkcs11_location",
    "secret_record",
    "szm_card",
    "szm_code",
    "with_bank",
    "with_sites",
]

HLL_CARD_FORMAT: Final = "farthing-hll-card/1"
BANK_KEY_LEN: Final = 32
SITES: Final = "sites"  # params: the origins a card may pay
BANK: Final = "bank"  # params: an HLL card's bank, b64url of its card-certification key
_LEGACY_SITE: Final = "site"  # the one site of an SZM card, before site sets
NO_EXPIRY: Final = (1 << 63) - 1
_HLL_SECRET_DOMAIN: Final = "farthing/wallet/hll-secret"  # noqa: S105 -- a domain name
_PAYWORD_SECRET_DOMAIN: Final = "farthing/wallet/payword-secret"  # noqa: S105
_SHORT_METHOD: Final = {
    "szm:chain": "chain",
    "szm:prbg": "prbg",
    "hll:mac": "hll",
    "payword": "payword",
}


def _default_label(method: str, card_key: bytes) -> str:
    return f"{_SHORT_METHOD[method]}-{b64url_encode(card_key)[:8]}"


def secret_record(row_method: str, card_key: bytes, member: str) -> bytes:
    """The associated data that ties a sealed card value to its row and column."""
    return record_id("cards/" + row_method, card_key, member)


# --- sites ---------------------------------------------------------------------------------


def card_sites(card: CardRow) -> tuple[str, ...]:
    """The origins a card may pay, as the reader chose them (sorted). A card stored before
    site sets has none (pays nobody until bound), or the one ``site`` an SZM card had."""
    sites = card.params.get(SITES)
    if isinstance(sites, list):
        return tuple(sorted(str(site) for site in sites))
    legacy = card.params.get(_LEGACY_SITE)
    return (str(legacy),) if isinstance(legacy, str) else ()


def with_sites(params: Mapping[str, object], sites: Iterable[str]) -> dict[str, object]:
    """``params`` with the card's site set replaced by ``sites``."""
    kept = {name: value for name, value in params.items() if name != _LEGACY_SITE}
    return {**kept, SITES: sorted(set(sites))}


# --- SZM -----------------------------------------------------------------------------------


def parse_szm_code(text: str) -> CardCode:
    """A card from its printed code (``FTH1-...``) or its compact base64url form."""
    stripped = "".join(text.split())
    if stripped.upper().startswith(cardcode.TEXT_PREFIX):
        return cardcode.from_text(text)
    return cardcode.from_compact(stripped)


def szm_card(
    code: CardCode, box: SecretBox, *, label: str | None = None, spent: int = 0
) -> NewCard:
    """The stored form of an SZM card; ``spent``: units its issuer says are spent already
    (a card typed into a second wallet), 0 for a fresh one."""
    if not 0 <= spent <= code.units:
        raise MalformedMessage(
            f"the card cannot have {spent} of {code.units} units spent", code=ErrorCode.BAD_FIELD
        )
    method = code.protocol.value
    return NewCard(
        label=label or _default_label(method, code.card_id),
        method=method,
        card_key=code.card_id,
        realm=code.realm,
        currency=code.currency,
        unit_micros=code.unit_micros,
        total=code.units,
        spent=spent,
        balance=code.units - spent,
        expires_at=code.expires_at,
        params={"generator": code.generator.value},
        secret=box.seal(secret_record(method, code.card_id, "secret"), cardcode.encode_card(code)),
    )


def szm_code(box: SecretBox, card: CardRow) -> CardCode:
    """The card's code, opened from the store."""
    raw = box.open(secret_record(card.method, card.card_key, "secret"), card.secret)
    code = cardcode.decode_card(raw)
    if code.protocol is not Protocol(card.method) or code.card_id != card.card_key:
        raise LocalProtocolError("a stored card does not match its row", code=ErrorCode.INTERNAL)
    return code


# --- HLL -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HllCardFile:
    """The bank's personalisation output for one HLL card, as a JSON file::

    {"format": "farthing-hll-card/1", "cardId": "<b64url 16 bytes>", "balance": 5000,
     "currency": "EUR", "unitMicros": 1000, "expiresAt": 1900000000 (optional),
     "wrappedKey": "<b64url>" (K_C wrapped for the token), "certificate": "<b64url>",
     "bankKey": "<b64url>" (the bank's card-certification public key)}

    The issuer API's answer to personalising a card (``wrapped_card_key``, ``bank_key``)
    reads the same. ``bank_key`` names the card's bank: the wallet checks the certificate
    against it and pays no challenge naming another bank.
    ``card_key`` (a software card's K_C) is for tests only: no file carries it.
    """

    card_id: bytes
    balance: int
    denomination: Denomination
    card_key: bytes | None = field(default=None, repr=False)
    expires_at: int = NO_EXPIRY
    wrapped_key: bytes | None = field(default=None, repr=False)
    certificate: bytes | None = None
    bank_key: bytes | None = None

    def __post_init__(self) -> None:
        if self.bank_key is not None and len(self.bank_key) != BANK_KEY_LEN:
            raise MalformedMessage("a bank key is 32 bytes", code=ErrorCode.BAD_FIELD)
        if len(self.card_id) != hll.CARD_ID_LEN or not 0 <= self.balance < NO_EXPIRY:
            raise MalformedMessage("HLL card id or balance out of range", code=ErrorCode.BAD_FIELD)
        if self.card_key is not None and len(self.card_key) != hll.KEY_LEN:
            raise MalformedMessage("an HLL card key is 32 bytes", code=ErrorCode.BAD_FIELD)

    def to_json(self) -> str:
        obj: dict[str, object] = {
            "format": HLL_CARD_FORMAT,
            "cardId": b64url_encode(self.card_id),
            "balance": self.balance,
            "currency": self.denomination.currency,
            "unitMicros": self.denomination.unit_micros,
        }
        if self.wrapped_key is not None:
            obj["wrappedKey"] = b64url_encode(self.wrapped_key)
        if self.certificate is not None:
            obj["certificate"] = b64url_encode(self.certificate)
        if self.bank_key is not None:
            obj["bankKey"] = b64url_encode(self.bank_key)
        if self.expires_at != NO_EXPIRY:
            obj["expiresAt"] = self.expires_at
        return json.dumps(obj, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HllCardFile:
        """Our file format, or the issuer API's answer to creating a card
        (``wrapped_card_key``). A key in the clear is never read from a file."""
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: hostile nesting
            raise _bad_file() from None
        if isinstance(obj, dict) and "wrapped_card_key" in obj:
            return _from_issuer_answer(obj)
        if not isinstance(obj, dict) or obj.get("format") != HLL_CARD_FORMAT:
            raise _bad_file()
        return cls(
            card_id=b64url_decode(_string(obj, "cardId")),
            balance=_integer(obj, "balance"),
            denomination=Denomination(
                currency=_string(obj, "currency"), unit_micros=_integer(obj, "unitMicros")
            ),
            expires_at=_integer(obj, "expiresAt") if "expiresAt" in obj else NO_EXPIRY,
            wrapped_key=_optional_b64(obj, "wrappedKey"),
            certificate=_optional_b64(obj, "certificate"),
            bank_key=_optional_b64(obj, "bankKey"),
        )


def _from_issuer_answer(obj: dict[str, object]) -> HllCardFile:
    """``{"card_id", "wrapped_card_key", "certificate", "bank_key", "units", "currency",
    "unit_micros", ...}`` from the issuer."""
    return HllCardFile(
        card_id=_id_bytes(_string(obj, "card_id")),
        balance=_integer(obj, "units"),
        denomination=Denomination(
            currency=_string(obj, "currency"), unit_micros=_integer(obj, "unit_micros")
        ),
        wrapped_key=_optional_b64(obj, "wrapped_card_key"),
        certificate=_optional_b64(obj, "certificate"),
        bank_key=_optional_b64(obj, "bank_key"),
    )


def _optional_b64(obj: dict[str, object], name: str) -> bytes | None:
    if name not in obj:
        return None
    return b64url_decode(_string(obj, name), max_len=4096)


def _id_bytes(text: str) -> bytes:
    """A card id as 32 hex digits or as base64url."""
    return _hex(text) if len(text) == 2 * hll.CARD_ID_LEN else b64url_decode(text)


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _bad_file() from None


def _bad_file() -> MalformedMessage:
    return MalformedMessage(
        f"not an HLL card file ({HLL_CARD_FORMAT} JSON)", code=ErrorCode.BAD_FIELD
    )


def _string(obj: dict[str, object], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise _bad_file()
    return value


def _integer(obj: dict[str, object], name: str) -> int:
    value = obj.get(name)
    if type(value) is not int:
        raise _bad_file()
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Pkcs11Location:
    """Where an HLL card key lives: a PKCS#11 module, a token in it, a key on the token."""

    module_path: str
    token_label: str
    key_label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HllSecret:
    """What is sealed for an HLL card: the key (software card) or the token's PIN."""

    card_key: bytes | None = field(default=None, repr=False)
    pin: str | None = field(default=None, repr=False)


def hll_card(
    card: HllCardFile,
    box: SecretBox,
    *,
    token: Pkcs11Location | None = None,
    pin: str | None = None,
    label: str | None = None,
) -> NewCard:
    """The stored form of an HLL card: software (key from the file) or in a token (PIN)."""
    if token is None and card.card_key is None:
        raise LocalProtocolError("the card file holds no key: give the PKCS#11 token that holds it")
    if token is not None and not pin:
        raise LocalProtocolError("a PKCS#11 card needs the token's PIN")
    bank_key = _bank_of(card)
    secret = HllSecret(card_key=card.card_key if token is None else None, pin=pin)
    params: dict[str, object] = {"cardId": b64url_encode(card.card_id), BANK: bank_key}
    if card.certificate is not None:
        params["certificate"] = b64url_encode(card.certificate)
    if token is not None:
        params["pkcs11"] = {
            "module": token.module_path,
            "token": token.token_label,
            "key": token.key_label,
        }
    return NewCard(
        label=label or _default_label("hll:mac", card.card_id),
        method="hll:mac",
        card_key=card.card_id,
        realm=None,
        currency=card.denomination.currency,
        unit_micros=card.denomination.unit_micros,
        total=card.balance,
        spent=0,
        balance=card.balance,
        expires_at=card.expires_at,
        params=params,
        secret=box.seal(secret_record("hll:mac", card.card_id, "secret"), _encode_hll(secret)),
    )


def _bank_of(card: HllCardFile) -> str:
    """The card's bank (b64url of its card-certification key), after checking that the
    bank signed the card's certificate for this card and denomination."""
    if card.bank_key is None:
        raise LocalProtocolError(
            "the card file names no bank (bankKey): the wallet binds a card to its bank"
        )
    if card.certificate is not None:
        # Signature, card id and denomination only: an expired certificate still names
        # the bank (it only stops merchants from serving the card deferred).
        certificate = hll.decode_card_certificate(card.certificate)
        hll.verify_card_certificate(
            card.bank_key,
            certificate,
            card_id=card.card_id,
            denomination=card.denomination,
            now=min(0, certificate.expires_at - 1),
        )
    return b64url_encode(card.bank_key)


def with_bank(card: CardRow, bank_key: bytes) -> dict[str, object]:
    """The params of an HLL card stored before cards named their bank, now naming
    ``bank_key``: checked against the card's certificate, as when a card is added.
    Conflict if the card already names another bank."""
    if card.method != "hll:mac":
        raise LocalProtocolError("only an HLL card has a bank")
    certificate = hll_certificate(card)
    named = _bank_of(
        HllCardFile(
            card_id=card.card_key,
            balance=card.balance,
            denomination=Denomination(currency=card.currency, unit_micros=card.unit_micros),
            certificate=certificate,
            bank_key=bank_key,
        )
    )
    if card_bank(card) not in (None, named):
        raise Conflict(f"{card.label} belongs to another bank")
    return {**card.params, BANK: named}


def card_bank(card: CardRow) -> str | None:
    """An HLL card's bank (b64url of its card-certification key); None if the card was
    added before cards named their bank."""
    bank = card.params.get(BANK)
    return bank if isinstance(bank, str) else None


def _encode_hll(secret: HllSecret) -> bytes:
    writer = Writer(_HLL_SECRET_DOMAIN).bytes(secret.card_key or b"")
    return writer.text(secret.pin or "").finish()


def hll_secret(box: SecretBox, card: CardRow) -> HllSecret:
    raw = box.open(secret_record(card.method, card.card_key, "secret"), card.secret)
    reader = Reader(raw, _HLL_SECRET_DOMAIN)
    key, pin = reader.bytes(max_len=hll.KEY_LEN), reader.text(max_len=256)
    reader.finish()
    return HllSecret(card_key=key or None, pin=pin or None)


def hll_certificate(card: CardRow) -> bytes | None:
    """The bank's certificate for an HLL card, if the card file had one."""
    encoded = card.params.get("certificate")
    return b64url_decode(encoded, max_len=4096) if isinstance(encoded, str) else None


def pkcs11_location(card: CardRow) -> Pkcs11Location | None:
    where = card.params.get("pkcs11")
    if not isinstance(where, dict):
        return None
    return Pkcs11Location(
        module_path=str(where["module"]),
        token_label=str(where["token"]),
        key_label=str(where["key"]),
    )


# --- PayWord -------------------------------------------------------------------------------


def payword_card(
    certificate: payword.Certificate,
    private_key: bytes,
    box: SecretBox,
    *,
    label: str | None = None,
) -> NewCard:
    """The stored form of a PayWord account: the user key (sealed) and its certificate."""
    if len(private_key) != 32 or not constant_time_eq(
        ed25519_public_key(private_key), certificate.user_public_key
    ):
        raise LocalProtocolError("the private key does not belong to the certificate")
    encoded = payword.encode_certificate(certificate)
    card_key = sha256(encoded)[:16]
    secret = Writer(_PAYWORD_SECRET_DOMAIN).bytes(private_key).finish()
    return NewCard(
        label=label or _default_label("payword", card_key),
        method="payword",
        card_key=card_key,
        realm=certificate.broker_id,
        currency=certificate.denomination.currency,
        unit_micros=certificate.denomination.unit_micros,
        total=certificate.credit_limit,
        spent=0,
        balance=certificate.credit_limit,
        expires_at=certificate.expires_at,
        params={"certificate": b64url_encode(encoded), "user": certificate.user_id},
        secret=box.seal(secret_record("payword", card_key, "secret"), secret),
    )


def payword_certificate(card: CardRow) -> payword.Certificate:
    encoded = card.params.get("certificate")
    if not isinstance(encoded, str):
        raise LocalProtocolError("a stored certificate is missing", code=ErrorCode.INTERNAL)
    return payword.decode_certificate(b64url_decode(encoded))


def payword_private_key(box: SecretBox, card: CardRow) -> bytes:
    raw = box.open(secret_record(card.method, card.card_key, "secret"), card.secret)
    reader = Reader(raw, _PAYWORD_SECRET_DOMAIN)
    key = reader.bytes(exact=32)
    reader.finish()
    return key


# --- descriptions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CardInfo:
    """What a person sees of a card; no secret."""

    label: str
    method: str
    realm: str | None
    currency: str
    unit_micros: int
    total_units: int
    units_left: int
    spent: int
    expires_at: int
    where: str
    sites: tuple[str, ...] = ()

    @property
    def value_left_micros(self) -> int:
        return self.units_left * self.unit_micros


def describe(card: CardRow) -> CardInfo:
    token = pkcs11_location(card)
    if token is not None:
        where = f"PKCS#11 token {token.token_label!r}, key {token.key_label!r}"
    elif card.method == "hll:mac":
        where = "software key in the wallet"
    elif card.method == "payword":
        where = f"credit from broker {card.realm}"
    else:
        where = f"prepaid at {card.realm}"
    sites = card_sites(card)
    if sites:
        where += f", pays only {', '.join(sites)}"
    else:
        where += f", pays no site: nobody until `farthing wallet bind {card.label} --site URL`"
    return CardInfo(
        label=card.label,
        method=card.method,
        realm=card.realm,
        currency=card.currency,
        unit_micros=card.unit_micros,
        total_units=card.total,
        units_left=card.balance,
        spent=card.spent,
        expires_at=card.expires_at,
        where=where,
        sites=sites,
    )
