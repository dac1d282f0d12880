"""The issuer's JSON wire models (requests strict, responses plain), separate from rows.

Requests are strict: no type coercion ("5" is not 5), no unknown members, bounded
strings. Binary values travel as base64url without padding and are decoded strictly by the
routes (:func:`farthing.core.encoding.b64url_decode`). Amounts are integers: micro-units of
a currency (``*_micros``) or card units.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "B64_PATTERN",
    "AdmittedOut",
    "BrokerOut",
    "CardCodeOut",
    "CardStatusOut",
    "CardStatusRequest",
    "CashIn",
    "CurrencyReportOut",
    "CustomerOut",
    "DepositOut",
    "DepositPair",
    "HllCardCreated",
    "HllCardOut",
    "HllDepositRequest",
    "HllVerifyBatchOut",
    "HllVerifyBatchRequest",
    "HllVerifyItem",
    "HllVerifyOut",
    "HllVerifyRefused",
    "HllVerifyRequest",
    "LedgerCheckOut",
    "LoadOut",
    "MerchantCreated",
    "MerchantOut",
    "NewCustomer",
    "NewHllCard",
    "NewMerchant",
    "NewPaywordUser",
    "NewSzmBatch",
    "PaywordAdmitBatchOut",
    "PaywordAdmitBatchRequest",
    "PaywordAdmitItem",
    "PaywordAdmitRefused",
    "PaywordAdmitRequest",
    "PaywordRedeemRequest",
    "PaywordUserOut",
    "RedeemOut",
    "ReportOut",
    "RevenueOut",
    "SzmBatchOut",
    "SzmExportOut",
    "SzmRevenueRequest",
]

B64_PATTERN: Final = r"^[A-Za-z0-9_-]*$"
MAX_DEPOSIT_B64: Final = 3 * 1024 * 1024

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Tag = Annotated[str, StringConstraints(pattern=B64_PATTERN, max_length=64)]
Units = Annotated[int, Field(ge=1, le=1 << 40)]
UnitMicros = Annotated[int, Field(ge=1, le=10**12)]


def _b64(max_length: int) -> object:
    return StringConstraints(pattern=B64_PATTERN, max_length=max_length)


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- customers and merchants --------------------------------------------------------------


class NewCustomer(_Request):
    customer_id: Name
    currency: Currency


class CustomerOut(_Response):
    customer_id: str
    currency: str
    available_micros: int


class CashIn(_Request):
    amount_micros: Annotated[int, Field(ge=1, le=10**15)]
    reference: Name


class LoadOut(_Response):
    customer_id: str
    reference: str
    amount_micros: int
    available_micros: int


class NewMerchant(_Request):
    merchant_id: Name
    currency: Currency


class MerchantCreated(_Response):
    merchant_id: str
    currency: str
    key: str = Field(description="K_M, base64url; shown once, store it at the merchant")


class MerchantOut(_Response):
    merchant_id: str
    currency: str
    owed_micros: int


# --- HLL ----------------------------------------------------------------------------------


class NewHllCard(_Request):
    customer_id: Name
    units: Units
    unit_micros: UnitMicros | None = None
    token_public_key: Annotated[
        str, StringConstraints(pattern=B64_PATTERN, min_length=1, max_length=2048)
    ] = Field(
        description="the customer's token's RSA public key (DER SubjectPublicKeyInfo, "
        "base64url), made inside the token by `farthing wallet hll-token-key`"
    )


class HllCardCreated(_Response):
    """The personalisation output; the wallet reads it as the card file. K_C is never in
    it: only wrapped for the token that made ``token_public_key``."""

    card_id: str
    wrapped_card_key: str = Field(description="K_C, RSA-OAEP under the token's key, base64url")
    certificate: str = Field(description="the bank's card certificate, base64url")
    certificate_expires_at: int
    bank_key: str = Field(
        description="the bank's card-certification public key (Ed25519), base64url: the "
        "wallet binds the card to it"
    )
    units: int
    currency: str
    unit_micros: int


class HllCardOut(_Response):
    card_id: str
    currency: str
    unit_micros: int
    loaded_units: int
    spent_units: int
    status: str


class HllVerifyRequest(_Request):
    merchant_id: Name
    offer: Annotated[str, _b64(2048)]
    payment: Annotated[str, _b64(256)]
    tag: Tag


class HllVerifyOut(_Response):
    card_id: str
    counter: int
    units: int
    credited_micros: int
    # The same purchase was settled before (sent again after a lost answer): nothing new
    # was charged or credited.
    repeated: bool = False


class HllVerifyItem(_Request):
    offer: Annotated[str, _b64(2048)]
    payment: Annotated[str, _b64(256)]


class HllVerifyBatchRequest(_Request):
    """Online verifications of one merchant, sent together; ``tag`` covers all of them
    (:func:`farthing.http.issuer_wire.verify_batch_tag`). The number of items is checked
    by the route (``BATCH_TOO_LARGE``), the body's size by the issuer's body limit."""

    merchant_id: Name
    items: Annotated[list[HllVerifyItem], Field(min_length=1)]
    tag: Tag


class HllVerifyRefused(_Response):
    """One item of a batch the bank refused: the problem (RFC 9457 body, ``status`` and
    ``farthingCode`` included) that ``POST /v1/hll/verify`` answers for it alone."""

    problem: dict[str, object]


class HllVerifyBatchOut(_Response):
    """One outcome per item, in the request's order."""

    results: list[HllVerifyOut | HllVerifyRefused]


class HllDepositRequest(_Request):
    batch: Annotated[str, _b64(MAX_DEPOSIT_B64)]
    tag: Tag


class HllDepositLookup(_Request):
    merchant_id: Name
    batch_id: Annotated[str, _b64(64)]
    tag: Tag


class DepositPair(_Response):
    card_id: str
    counter: int
    units: int | None = None


class DepositOut(_Response):
    batch_id: str
    report: str = Field(description="the canonical deposit report, base64url")
    accepted: list[DepositPair]
    duplicates: list[DepositPair]
    invalid: list[DepositPair]
    credited_units: int
    credited_micros: int
    replayed: bool


# --- SZM ----------------------------------------------------------------------------------


class NewSzmBatch(_Request):
    protocol: Literal["szm:chain", "szm:prbg"]
    generator: Literal["hmac-ctr", "bbs"] | None = None
    count: Annotated[int, Field(ge=1, le=1_000_000)]
    units: Annotated[int, Field(ge=1, le=1 << 30)]
    unit_micros: UnitMicros
    currency: Currency
    expires_at: Annotated[int, Field(ge=0, le=(1 << 63) - 1)]


class SzmBatchOut(_Response):
    batch_id: str
    protocol: str
    count: int
    units: int
    currency: str
    unit_micros: int
    expires_at: int
    value_micros: int


class CardCodeOut(_Response):
    """``short``: the code printed on the card and typed (24 symbols, looked up at
    ``POST /v1/szm/cards/lookup``); ``code`` and ``compact``: the whole card in base32
    (``FTH1-...``) and base64url (what its QR code carries)."""

    card_id: str
    short: str
    code: str
    compact: str


class SzmExportOut(_Response):
    batch_id: str
    offset: int
    count: int
    cards: list[CardCodeOut]


class CardStatusRequest(_Request):
    """The holder's proof (:mod:`farthing.core.schemes.szm_status`): its clock and the MAC."""

    at: int = Field(ge=0, lt=1 << 63)
    proof: Annotated[str, _b64(64)]


class CardStatusOut(_Response):
    card_id: str
    units: int
    spent: int
    expires_at: int
    status: str


class CardLookupRequest(_Request):
    """The lookup id of a typed short card code (:func:`farthing.core.shortcode.lookup_id`)."""

    lookup: Annotated[str, _b64(32)]


class CardLookupOut(_Response):
    """The terms of the card a short code names (no secret), the tag binding them to the
    code, and what is left on it. ``modulus`` is the BBS modulus (base64url), else empty."""

    card_id: str
    protocol: str
    units: int
    currency: str
    unit_micros: int
    expires_at: int
    generator: str
    realm: str
    modulus: str
    tag: str
    spent: int
    status: str


class SzmRevenueRequest(_Request):
    currency: Currency


class RevenueOut(_Response):
    currency: str
    recognised_micros: int


# --- PayWord ------------------------------------------------------------------------------


class NewPaywordUser(_Request):
    user_id: Name
    customer_id: Name
    public_key: Annotated[str, _b64(64)]
    credit_limit_units: Units
    unit_micros: UnitMicros


class PaywordUserOut(_Response):
    user_id: str
    certificate: str
    expires_at: int
    broker_id: str
    broker_public_key: str


class BrokerOut(_Response):
    broker_id: str
    public_key: str


class PaywordAdmitRequest(_Request):
    merchant_id: Name
    commitment: Annotated[str, _b64(4096)]
    tag: Tag


class AdmittedOut(_Response):
    commitment_id: str
    outstanding_micros: int
    credit_limit_micros: int


class PaywordAdmitItem(_Request):
    commitment: Annotated[str, _b64(4096)]


class PaywordAdmitBatchRequest(_Request):
    """New commitments one vendor presents together; ``tag`` covers all of them
    (:func:`farthing.http.issuer_wire.admit_batch_tag`). The number of items is checked
    by the route (``BATCH_TOO_LARGE``), the body's size by the issuer's body limit."""

    merchant_id: Name
    items: Annotated[list[PaywordAdmitItem], Field(min_length=1)]
    tag: Tag


class PaywordAdmitRefused(_Response):
    """One commitment of a batch the broker refused: the problem (RFC 9457 body,
    ``status`` and ``farthingCode`` included) ``POST /v1/payword/commitments`` answers
    for it alone."""

    problem: dict[str, object]


class PaywordAdmitBatchOut(_Response):
    """One outcome per item, in the request's order."""

    results: list[AdmittedOut | PaywordAdmitRefused]


class PaywordRedeemRequest(_Request):
    merchant_id: Name
    redemption: Annotated[str, _b64(4096)]
    tag: Tag


class RedeemOut(_Response):
    commitment_id: str
    index: int
    credited_units: int
    credited_micros: int


# --- ledger -------------------------------------------------------------------------------


class LedgerCheckOut(_Response):
    balanced: bool
    problems: list[str]
    txn_count: int
    entry_count: int


class CurrencyReportOut(_Response):
    currency: str
    balances_micros: dict[str, int] = Field(
        description="signed balance per account kind: positive held/owed to the issuer"
    )
    hll_outstanding_micros: int
    szm_outstanding_micros: int
    merchants_owed_micros: int


class ReportOut(_Response):
    currencies: list[CurrencyReportOut]
    merchants: list[MerchantOut]
    ledger: LedgerCheckOut
