"""The issuer's secrets (a JSON key file, mode 0600) and its configuration.

The key file holds every long-lived secret of one issuer, as hex::

    {"version": 1, "broker_id": "...", "realm": "...",
     "hll_master": K_B, "szm_chain_master": ..., "szm_prbg_master": ...,
     "merchant_key_wrap": AEAD key sealing merchant keys at rest,
     "payword_broker_key": Ed25519 private key (32-byte seed),
     "bbs": {"p": ..., "q": ...}}

It is created once by ``farthing issuer init`` (never overwritten) and read by the issuer
only (:func:`load_issuer_keys`).

An SZM vendor, which shares the issuer's database and card secrets, gets a key file of its
own holding only what verifying and sealing SZM payments needs
(:class:`farthing.keyfiles.VendorKeys`)::

    {"version": 1, "kind": "farthing-vendor-keys", "realm": "...",
     "szm_chain_master": ..., "szm_prbg_master": ..., "bbs": {"p": ..., "q": ...}}

made from the issuer's by ``farthing vendor init --issuer-keys`` (:func:`vendor_keys`,
:func:`farthing.keyfiles.write_vendor_key_file`; the vendor reads it with
:func:`farthing.keyfiles.load_vendor_keys`, without importing this package). It holds no
HLL bank key K_B, no PayWord broker key and no merchant-key wrap, so a compromised vendor
host cannot mint HLL card keys, sign PayWord certificates or read merchant keys. Either
file readable by group or others is refused, as ssh does.

:class:`IssuerConfig` is everything else the app needs, passed explicitly to
:func:`farthing.issuer.app.create_issuer_app`; there is no global settings object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from farthing.core.clock import RandomSource
from farthing.core.prbg import (
    DEFAULT_MODULUS_BITS,
    BbsKey,
    generate_blum_modulus,
    require_strong_modulus,
)
from farthing.core.primitives import ed25519_public_key
from farthing.keyfiles import (
    FILE_FORMAT_VERSION,
    SECRET_LEN,
    VendorKeys,
    bad_key_file,
    bbs_from_json,
    bbs_json,
    read_private_json,
    write_private_json,
)

__all__ = [
    "DEFAULT_DB",
    "DEFAULT_KEYS",
    "ENV_BODY_BUDGET",
    "ENV_CURRENCIES",
    "ENV_DB",
    "ENV_KEYS",
    "ENV_RATE_LIMIT",
    "IssuerConfig",
    "IssuerKeys",
    "RateLimit",
    "RateLimits",
    "generate_issuer_keys",
    "load_issuer_keys",
    "vendor_keys",
    "write_key_file",
]

ENV_DB: Final = "FARTHING_ISSUER_DB"
ENV_KEYS: Final = "FARTHING_ISSUER_KEYS"
ENV_CURRENCIES: Final = "FARTHING_ISSUER_CURRENCIES"
ENV_RATE_LIMIT: Final = "FARTHING_ISSUER_RATE_LIMIT"
ENV_BODY_BUDGET: Final = "FARTHING_ISSUER_BODY_BUDGET"
DEFAULT_DB: Final = "farthing-issuer.sqlite"
DEFAULT_KEYS: Final = "farthing-issuer.keys.json"
_SECRETS: Final = (
    "hll_master",
    "szm_chain_master",
    "szm_prbg_master",
    "merchant_key_wrap",
    "payword_broker_key",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerKeys:
    """Every secret of one issuer. ``repr`` shows the ids only."""

    broker_id: str
    realm: str
    hll_master: bytes = field(repr=False)
    szm_chain_master: bytes = field(repr=False)
    szm_prbg_master: bytes = field(repr=False)
    merchant_key_wrap: bytes = field(repr=False)
    payword_broker_key: bytes = field(repr=False)
    bbs: BbsKey = field(repr=False)

    def __post_init__(self) -> None:
        for name in _SECRETS:
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != SECRET_LEN:
                raise ValueError(f"{name} must be {SECRET_LEN} bytes")
        require_strong_modulus(self.bbs.n)  # a key file with a weaker BBS key is refused
        for name in ("broker_id", "realm"):
            text = getattr(self, name)
            if not isinstance(text, str) or not 0 < len(text.encode()) <= 255:
                raise ValueError(f"{name} must be 1..255 bytes of text")

    @property
    def broker_public_key(self) -> bytes:
        return ed25519_public_key(self.payword_broker_key)


def generate_issuer_keys(
    rng: RandomSource,
    *,
    broker_id: str,
    realm: str | None = None,
    bbs_bits: int = DEFAULT_MODULUS_BITS,
) -> IssuerKeys:
    """Fresh random secrets and a fresh Blum modulus of ``bbs_bits`` bits."""
    return IssuerKeys(
        broker_id=broker_id,
        realm=realm or broker_id,
        hll_master=rng(SECRET_LEN),
        szm_chain_master=rng(SECRET_LEN),
        szm_prbg_master=rng(SECRET_LEN),
        merchant_key_wrap=rng(SECRET_LEN),
        payword_broker_key=rng(SECRET_LEN),
        bbs=generate_blum_modulus(bbs_bits, rng),
    )


def _to_json(keys: IssuerKeys) -> dict[str, object]:
    document: dict[str, object] = {
        "version": FILE_FORMAT_VERSION,
        "broker_id": keys.broker_id,
        "realm": keys.realm,
    }
    document.update({name: getattr(keys, name).hex() for name in _SECRETS})
    document["bbs"] = bbs_json(keys.bbs)
    return document


def write_key_file(path: Path, keys: IssuerKeys) -> None:
    """Create ``path`` (mode 0600) holding ``keys``; refuses to overwrite an existing file."""
    write_private_json(path, _to_json(keys))


def load_issuer_keys(path: str | Path) -> IssuerKeys:
    """Read a key file written by :func:`write_key_file`.

    LocalProtocolError(MISUSE) if it is missing, readable by group or others, or malformed;
    the message never contains key material.
    """
    document = read_private_json(Path(path), missing="no key file; run `farthing issuer init`")
    try:
        return _from_json(document)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise bad_key_file("the key file is malformed") from None


def _from_json(document: Mapping[str, object]) -> IssuerKeys:
    if document["version"] != FILE_FORMAT_VERSION or "kind" in document:
        raise ValueError("unknown key file version")
    secrets = {name: bytes.fromhex(str(document[name])) for name in _SECRETS}
    return IssuerKeys(
        broker_id=str(document["broker_id"]),
        realm=str(document["realm"]),
        bbs=bbs_from_json(document["bbs"]),
        **secrets,
    )


def vendor_keys(keys: IssuerKeys) -> VendorKeys:
    """The part of the issuer's keys an SZM vendor needs."""
    return VendorKeys(
        realm=keys.realm,
        szm_chain_master=keys.szm_chain_master,
        szm_prbg_master=keys.szm_prbg_master,
        bbs=keys.bbs,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` per second."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Per client address and per operator token; per worker process (see docs/scaling.md)."""

    enabled: bool = True
    per_client: RateLimit = RateLimit(rate=100.0, burst=200)
    per_operator: RateLimit = RateLimit(rate=20.0, burst=50)
    max_tracked: int = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuerConfig:
    """What the issuer app is built from (see :func:`~farthing.issuer.app.create_issuer_app`).

    ``currencies``: the currencies this issuer keeps books in; accounts and cards in any
    other are refused. ``max_body_bytes`` bounds every request body, except deposits which
    may carry up to ``max_deposit_bytes`` (1000 items of about 0.9 KB, base64url).
    ``body_budget_bytes``: what one worker holds of request bodies at once beyond each
    request's first ``max_body_bytes`` (so, of deposits); a body past it is answered 503.
    ``max_batch_chain_units`` bounds count x units of one hash-chain batch over HTTP: each
    unit costs a hash at issue, and a typo should not hold a worker for hours (2**24 units
    take seconds; the CLI, on the operator's own machine, has no such bound).
    """

    keys: IssuerKeys
    currencies: tuple[str, ...] = ("EUR",)
    max_body_bytes: int = 64 * 1024
    max_deposit_bytes: int = 2 * 1024 * 1024
    body_budget_bytes: int = 64 * 1024 * 1024
    rate_limits: RateLimits = RateLimits()
    hll_unit_micros: int = 1000
    hll_deposit_window: int = 30 * 86_400
    certificate_ttl: int = 30 * 86_400
    max_batch_cards: int = 10_000
    max_batch_chain_units: int = 1 << 24
    max_export_page: int = 1000
    dashboard_remote: bool = False  # the operator dashboard answers loopback clients only
