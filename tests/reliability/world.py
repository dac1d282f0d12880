"""One deployment for the reliability tests: an issuer's store and keys with accounts and
cards, and a vendor config (TOML) selling ``/articles/*`` for two units with every method.

The issuer and the SZM vendor share one store (the SZM vendor is the card issuer), as in
the demo. Everything the attacker-side tests need to make payments is here too: cards and
commitments as the holder sees them, and payments at any index or counter.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
from fastapi import FastAPI

from farthing.core.cardcode import CardCode, Generator
from farthing.core.clock import Clock, RandomSource, SystemClock
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.hashchain import ChainWalker
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key, hmac_sha256
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
from farthing.http.issuer_client import IssuerClient
from farthing.http.methods import SCHEME_OF
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    Receipt,
    format_credential,
    parse_challenges,
)
from farthing.issuer import (
    IssuerConfig,
    IssuerKeys,
    IssuerServices,
    RateLimits,
    build_services,
    generate_issuer_keys,
    issuer_app,
    write_key_file,
)
from farthing.issuer.config import vendor_keys
from farthing.issuer.szm_service import BatchSpec
from farthing.keyfiles import write_vendor_key_file
from farthing.paywall.app import create_vendor_app
from farthing.paywall.config import load_vendor_config
from farthing.paywall.goods import GoodsApp
from farthing.paywall.middleware import Paywall
from farthing.store import Store, SzmProtocol, open_store
from farthing.testing import DeterministicRandom
from farthing.testing.payword import PaywordSpender

REALM = "reliability"
BROKER_ID = "broker.test"
MERCHANT_ID = "shop"
CUSTOMER_ID = "alice"
PAYWORD_USER = "alice-pw"
ACTOR = "test:reliability"
UNIT = 1000
EUR = Denomination(currency="EUR", unit_micros=UNIT)
PRICE_MICROS = 2000
PRICE_UNITS = 2
ARTICLES = {f"{name}.txt": f"article {name}: " + name * 40 + "\n" for name in "abcdefgh"}
CARD_TTL = 30 * 86_400


@functools.cache
def issuer_keys() -> IssuerKeys:
    """One set of issuer keys for every test (a small BBS modulus: keys are not the subject)."""
    return generate_issuer_keys(
        DeterministicRandom("reliability keys"), broker_id=BROKER_ID, realm=REALM, bbs_bits=2048
    )


@dataclass(frozen=True, slots=True)
class Paid:
    """One accepted payment as its receipt tells it: units (index - units, index] of ``key``."""

    key: str
    index: int
    units: int


def paid_from_receipt(header: str) -> Paid:
    receipt = Receipt.from_header(header)
    extra = receipt.extra
    key = extra.get("card") or extra.get("commitment")
    index = extra.get("index", extra.get("counter"))
    units = extra.get("units")
    assert isinstance(key, str), extra
    assert isinstance(index, int), extra
    assert isinstance(units, int), extra
    return Paid(key=key, index=index, units=units)


def sealed_type(header: str) -> str:
    """The original content type a sealed answer's receipt names (bound by the seal)."""
    sealed = Receipt.from_header(header).extra.get("sealed")
    assert isinstance(sealed, dict), header
    content_type = sealed.get("contentType")
    assert isinstance(content_type, str), header
    return content_type


def overlapping(paid: Iterable[Paid]) -> list[tuple[Paid, Paid]]:
    """Pairs of accepted payments of one card that claim the same unit (must be none)."""
    clashes = []
    by_key: dict[str, list[Paid]] = {}
    for item in paid:
        by_key.setdefault(item.key, []).append(item)
    for items in by_key.values():
        items.sort(key=lambda p: p.index)
        for before, after in itertools.pairwise(items):
            if after.index - after.units < before.index:
                clashes.append((before, after))
    return clashes


def units_by_key(paid: Iterable[Paid]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for item in paid:
        totals[item.key] = totals.get(item.key, 0) + item.units
    return totals


# --- payments at any position -----------------------------------------------------------------


def authorization(challenge: Challenge, method: str, payment: bytes, **extra: bytes) -> str:
    payload: dict[str, object] = {"payment": b64url_encode(payment)}
    payload.update({name: b64url_encode(value) for name, value in extra.items()})
    return format_credential(Credential.answering(challenge, payload))


@dataclass
class ChainHolder:
    """An szm:chain card as its holder has it, with a walker for cheap payments."""

    card: szm_chain.ChainCard
    walker: ChainWalker = field(init=False)

    def __post_init__(self) -> None:
        self.walker = szm_chain.card_walker(self.card)

    @property
    def key(self) -> str:
        return b64url_encode(self.card.card_id)

    def at(self, index: int, now: int, units: int = PRICE_UNITS) -> tuple[bytes, bytes]:
        """(payment bytes, sealing key) paying ``units`` up to ``index``."""
        base = replace(self.card, spent=index - units)
        _, payment, key = szm_chain.next_payment(base, units, now=now, walker=self.walker)
        return szm_chain.encode_payment(payment), key


@dataclass
class PrbgHolder:
    card: szm_prbg.PrbgCard

    @property
    def key(self) -> str:
        return b64url_encode(self.card.card_id)

    def at(self, index: int, now: int, units: int = PRICE_UNITS) -> tuple[bytes, bytes]:
        base = replace(self.card, spent=index - units)
        _, payment, key = szm_prbg.next_payment(base, units, now=now)
        return szm_prbg.encode_payment(payment), key


@dataclass
class PaywordHolder:
    """One commitment of the PayWord user to a vendor, and its seed."""

    commitment: payword.Commitment
    seed: bytes

    @property
    def encoded(self) -> bytes:
        return payword.encode_commitment(self.commitment)

    @property
    def commitment_id(self) -> bytes:
        return payword.commitment_id(self.commitment)

    @property
    def key(self) -> str:
        return b64url_encode(self.commitment_id)

    def at(self, index: int, now: int, units: int = PRICE_UNITS) -> bytes:
        spender = PaywordSpender(self.commitment, self.seed, spent=index - units)
        return payword.encode_payment(spender.reserve(units, now=now).payment)


@dataclass
class HllHolder:
    """An HLL card whose key the test knows (a software card), paying any counter."""

    card_id: bytes
    card_key: bytes
    certificate: bytes  # the bank's card certificate, for deferred-mode vendors

    @property
    def key(self) -> str:
        return b64url_encode(self.card_id)

    def pay(self, offer: hll.Offer, counter: int) -> bytes:
        sigma = hmac_sha256(self.card_key, hll.purchase_message(self.card_id, offer, counter))
        purchase = hll.Purchase(card_id=self.card_id, counter=counter, sigma=sigma)
        return hll.encode_payment(purchase)


Holder = ChainHolder | PrbgHolder | PaywordHolder | HllHolder


def hll_offer(
    challenge: Challenge | str, expires: int, *, good: str, merchant: str = MERCHANT_ID
) -> hll.Offer:
    """The offer the vendor rebuilds for a request (docs/http.md, ``hll``)."""
    challenge_id = challenge.id if isinstance(challenge, Challenge) else challenge
    return hll.Offer(
        merchant_id=merchant,
        good=good,
        amount=PRICE_UNITS,
        denomination=EUR,
        challenge=b64url_decode(challenge_id),
        expires_at=expires,
    )


def challenge_ids(headers: list[str]) -> dict[str, tuple[Challenge, int]]:
    """Scheme (``szm:chain``) -> (challenge, expiry) from a 402's WWW-Authenticate values."""
    return {
        SCHEME_OF[c.method]: (c, c.expires or 0)
        for c in parse_challenges(headers)
        if c.method in SCHEME_OF
    }


# --- the deployment ---------------------------------------------------------------------------


@dataclass
class World:
    folder: Path
    target: str
    store: Store
    services: IssuerServices
    keys: IssuerKeys
    key_file: Path
    merchant_key: bytes
    operator_token: str
    user_private: bytes
    certificate: payword.Certificate
    config_path: Path
    clock: Clock
    rng: RandomSource

    def chain_cards(self, count: int, units: int = 60) -> list[ChainHolder]:
        codes = self._issue(SzmProtocol.CHAIN, None, count, units)
        return [ChainHolder(szm_chain.card_from_code(code)) for code in codes]

    def prbg_cards(self, count: int, units: int = 60) -> list[PrbgHolder]:
        codes = self._issue(SzmProtocol.PRBG, Generator.HMAC_CTR, count, units)
        return [PrbgHolder(szm_prbg.card_from_code(code)) for code in codes]

    def _issue(
        self, protocol: SzmProtocol, generator: Generator | None, count: int, units: int
    ) -> list[CardCode]:
        spec = BatchSpec(
            protocol=protocol,
            count=count,
            units=units,
            denomination=EUR,
            expires_at=self.clock.now() + CARD_TTL,
            generator=generator,
        )
        batch = self.services.szm.issue_batch(ACTOR, spec)
        page = self.services.szm.export(ACTOR, batch.batch_id, offset=0, limit=count)
        return [card.code for card in page.cards]

    def commitments(
        self, count: int, length: int = 60, vendor_id: str = MERCHANT_ID
    ) -> list[PaywordHolder]:
        holders = []
        for _ in range(count):
            seed = self.rng(32)
            commitment = payword.commit(
                self.user_private,
                self.certificate,
                vendor_id=vendor_id,
                seed=seed,
                length=length,
                now=self.clock.now(),
                ttl=CARD_TTL,
                rng=self.rng,
            )
            holders.append(PaywordHolder(commitment=commitment, seed=seed))
        return holders

    def hll_cards(self, count: int, units: int = 200) -> list[HllHolder]:
        made = [
            self.services.hll.personalise(ACTOR, CUSTOMER_ID, units=units, unit_micros=UNIT)
            for _ in range(count)
        ]
        return [
            HllHolder(card_id=m.card_id, card_key=m.card_key, certificate=m.certificate)
            for m in made
        ]

    def spent(self, holder: Holder) -> int:
        """What the store says this card, commitment or HLL card has been charged."""
        if isinstance(holder, ChainHolder | PrbgHolder):
            row = self.store.szm_card(b64url_decode(holder.key))
            return 0 if row is None else row.spent
        if isinstance(holder, PaywordHolder):
            held = self.store.payword_commitment(holder.commitment_id)
            return 0 if held is None else held.spent
        return self.services.hll.card(holder.card_id).spent_units

    def issuer_app(self) -> FastAPI:
        return issuer_app(self.services)

    def bank(self) -> IssuerClient:
        """The merchant's client of this world's issuer, in process."""
        return IssuerClient(
            "http://issuer.test",
            merchant_id=MERCHANT_ID,
            merchant_key=self.merchant_key,
            transport=httpx.ASGITransport(app=self.issuer_app()),
        )

    def vendor_app(self, *, clock: Clock | None = None) -> Paywall:
        """The vendor of ``vendor.toml`` in process, on this world's store, its bank (HLL
        online) being this world's issuer app."""
        config = load_vendor_config(self.config_path)
        goods = GoodsApp(config.content_dir)
        bank = self.bank()
        return create_vendor_app(
            config.settings,
            content=goods,
            prices=config.prices,
            store=self.store,
            bank=bank,
            broker=bank,
            clock=clock or self.clock,
            offers=goods.offers,
        )

    def close(self) -> None:
        self.store.close()


def build_world(
    folder: Path,
    target: str,
    *,
    hll_mode: str = "online",
    issuer_url: str = "http://127.0.0.1:9",
    deposit_interval: int = 3600,
    clock: Clock | None = None,
    rng: RandomSource = os.urandom,
) -> World:
    """Keys, a migrated store with a customer, the merchant ``shop`` and a PayWord user, the
    goods, and ``vendor.toml`` with szm, payword and hll (``online`` or ``deferred``).

    The [hll] section is always written: it holds the issuer's URL and the merchant key,
    without which the vendor cannot deposit PayWord claims (or, since the background
    deposit task, even start; see docs/reliability.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    keys = issuer_keys()
    key_file = folder / "issuer.keys.json"
    write_key_file(key_file, keys)
    store = open_store(target, clock=clock)
    config = IssuerConfig(keys=keys, rate_limits=RateLimits(enabled=False))
    services = build_services(config, store, clock=clock, rng=rng)
    token = services.accounts.create_operator_token(ACTOR, "ops").token
    services.accounts.create_customer(ACTOR, CUSTOMER_ID, "EUR")
    services.accounts.load(ACTOR, CUSTOMER_ID, 10**12, "cash-1")
    merchant_key = services.accounts.create_merchant(ACTOR, MERCHANT_ID, "EUR").key
    user_private = rng(32)
    user = services.payword.register_user(
        ACTOR,
        user_id=PAYWORD_USER,
        customer_id=CUSTOMER_ID,
        public_key=ed25519_public_key(user_private),
        credit_limit=10**7,
        unit_micros=UNIT,
    )
    config_path = write_vendor_config(
        folder, target, keys, merchant_key, hll_mode=hll_mode, issuer_url=issuer_url,
        deposit_interval=deposit_interval,
    )  # fmt: skip
    return World(
        folder=folder, target=target, store=store, services=services, keys=keys,
        key_file=key_file, merchant_key=merchant_key, operator_token=token,
        user_private=user_private, certificate=user.certificate, config_path=config_path,
        clock=clock, rng=rng,
    )  # fmt: skip


def write_vendor_config(
    folder: Path,
    target: str,
    keys: IssuerKeys,
    merchant_key: bytes,
    *,
    hll_mode: str,
    issuer_url: str,
    deposit_interval: int,
) -> Path:
    goods = folder / "goods" / "articles"
    goods.mkdir(parents=True, exist_ok=True)
    for name, text in ARTICLES.items():
        (goods / name).write_text(text)
    lines = [
        f'realm = "{REALM}"',
        f'database = "{target}"',
        'content_dir = "goods"',
        f"deposit_interval = {deposit_interval}",
        "[prices]",
        f'"/articles/*" = "{PRICE_MICROS} EUR"',
        "[szm]",
        'keys = "vendor.keys.json"',
        "[payword]",
        f'vendor_id = "{MERCHANT_ID}"',
        f'broker_id = "{BROKER_ID}"',
        f'broker_public_key = "{keys.broker_public_key.hex()}"',
        f"unit_micros = {UNIT}",
    ]
    vendor_key_file = folder / "vendor.keys.json"
    if not vendor_key_file.exists():
        write_vendor_key_file(vendor_key_file, vendor_keys(keys))
    key_file = folder / "merchant.key"
    key_file.write_text(merchant_key.hex() + "\n")
    key_file.chmod(0o600)
    lines += [
        "[hll]",
        f'issuer_url = "{issuer_url}"',
        f'merchant_id = "{MERCHANT_ID}"',
        'merchant_key_file = "merchant.key"',
        f"unit_micros = {UNIT}",
        f'mode = "{hll_mode}"',
        "risk_limit = 1000000",
        "merchant_cap = 1000000000",
        f'bank_public_key = "{hll.card_certification_public_key(keys.hll_master).hex()}"',
    ]
    path = folder / "vendor.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
