"""The wallet: cards of every scheme, a spending policy, and payments for HTTP 402 challenges.

``Wallet`` implements :class:`farthing.wallet.auth.Payer`, so it plugs into httpx::

    with Wallet.open(path, passphrase) as wallet:
        client = httpx.Client(auth=PaymentAuth(wallet))
        client.get("https://news.example/articles/a")     # pays the 402, opens the body

Paying one request (:meth:`Wallet.pay`):

0. *Where.* Only over https, or plain http on loopback (INSECURE_TRANSPORT otherwise); a
   card of any kind only at the origins in its set, chosen by the reader when adding it
   and changed with :meth:`bind` / :meth:`unbind` (a card with none pays nobody); only
   for a challenge naming the card's issuer (an HLL challenge's ``bank``, if it has one,
   is the card's bank; a PayWord challenge's ``broker`` is the certificate's broker);
   not a card a vendor of that realm refused as invalid; not a card with a lost payment
   still waiting to be resent. A card that fails the site or issuer check is never
   quoted: nothing of it leaves the wallet (WRONG_SITE, WRONG_ISSUER).
1. *Quote.* Every offered challenge the wallet understands is matched against every such
   card (method, realm, currency, unit, expiry, units left). Quotes are ranked by the method
   preference (default: ``szm:chain``, ``szm:prbg``, ``hll:mac``, ``payword``: the sealed,
   private SZM cards first), then by the money charged, then the card that expires first.
2. *Policy.* The best quote the spending policy allows wins. A refusal raises
   :class:`~farthing.core.errors.PolicyRefused` before anything changed.
3. *Turn.* The chosen card's turn (:mod:`farthing.wallet.turns`): while another payment
   of the card, in this process or another, has no answer yet, :class:`CardInFlight`
   (``PaymentAuth`` waits and asks again), so a card's payments reach vendors in order.
   The confirm callback, if any, is asked now (once, not while waiting). The turn is
   given back when the answer is recorded (step 5).
4. *Write-ahead.* In one ``BEGIN IMMEDIATE`` transaction: re-check the policy against
   today's spending, re-read the card, compute the payment with the pure core, write the
   card's new index or counter, add a ``pending`` history entry and a row saying where the
   card was before. Only after the commit (``synchronous=FULL``) does the payment leave
   :meth:`pay` (its credential is kept, sealed, to be resent if the answer is lost); a
   crash loses at most this unit and never reuses it, and two processes with one card queue
   on the lock.
5. *Settle.* A 2xx: :meth:`settle` opens an SZM body with the payment's key (an answer not
   sealed for it is SEAL_BROKEN: the vendor is not the card's issuer, or the answer was
   changed) and marks the entry ``paid``. Anything else: :meth:`refused`. Without a valid
   receipt the vendor did not take the payment, so the card goes back to where it was and
   the next payment reuses the index (``released``); a card refused as invalid is not
   offered to that realm again; PAYMENT_STALE (a copy of the card paid since) moves the
   card to the vendor's position instead (``spent-elsewhere``). With a receipt and a 5xx,
   or with no answer at all (:meth:`lost`), the payment is kept and resent byte for byte by
   :meth:`pay_up_front` for the next request to the same URL, until its challenge expires
   (then ``lost``).

Negotiating. :meth:`accept_payment` names the methods of the cards that may pay a site (the
card chosen with :meth:`pay_only_with`, if any), in the wallet's preference order, for the
request's ``Accept-Payment``: the vendor then offers only those. A challenge that selects
``Payment-Authorization`` is paid in that field (the payment's ``header``).

Paying up front. :meth:`remember` keeps the challenges of each (origin, route scope) in
memory; :meth:`pay_up_front` pays a later request with one of them if the URL path matches
the challenge's ``resource`` pattern (``*`` one path segment, ``**`` any suffix) and it
expires more than ``up_front_margin`` seconds from now. The wallet cannot know the path
exists; a vendor that does not sell it answers without a receipt and the index comes back.
Anything but a policy refusal makes it return None, and the ordinary 402 round trip decides.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Final

import httpx

from farthing.core.cardcode import CardCode
from farthing.core.clock import Clock, RandomSource, SystemClock
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import (
    CardExhausted,
    CardInFlight,
    ErrorCode,
    FarthingError,
    InvalidPayment,
    LocalProtocolError,
    PolicyRefused,
)
from farthing.core.schemes import hll, payword, szm_status
from farthing.core.sealing import open_sealed
from farthing.http.methods import METHOD_OF, SCHEME_OF
from farthing.http.methods.common import CURRENCY_PREFIX, wire_currency
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    JsonObject,
    Receipt,
    format_accept_payment,
    format_credential,
)
from farthing.wallet.auth import AUTHORIZATION, PreparedPayment
from farthing.wallet.cards import (
    CardInfo,
    HllCardFile,
    Pkcs11Location,
    card_bank,
    card_sites,
    describe,
    hll_card,
    hll_secret,
    parse_szm_code,
    payword_card,
    pkcs11_location,
    szm_card,
    szm_code,
    with_bank,
    with_sites,
)
from farthing.wallet.methods import (
    HllMethod,
    PaywordMethod,
    Quote,
    Reservation,
    Skipped,
    StaleAt,
    SzmChainMethod,
    SzmPrbgMethod,
    WalletMethod,
)
from farthing.wallet.pkcs11_card import Pkcs11CardKey
from farthing.wallet.policy import PriceOffer, SpendingPolicy, Usage
from farthing.wallet.secretbox import record_id
from farthing.wallet.store import (
    CardRow,
    HistoryEntry,
    NewCard,
    Outcome,
    PendingPayment,
    WalletStore,
)
from farthing.wallet.turns import CardTurns

__all__ = [
    "DEFAULT_PREFERENCE",
    "DEFAULT_UP_FRONT_MARGIN",
    "Wallet",
    "is_loopback",
    "scope_matches",
    "site_of",
]

DEFAULT_PREFERENCE: Final = ("szm:chain", "szm:prbg", "hll:mac", "payword")
DEFAULT_UP_FRONT_MARGIN: Final = 10
_POLICY_KEY: Final = "policy"
_SENT: Final = "sent"
_LOST: Final = "lost"
# Problem codes that say the card itself is no good at that vendor (not the challenge, the
# price or the server): unknown or forged card, exhausted, expired, blocked.
_CARD_REFUSALS: Final = frozenset(
    int(code)
    for code in (
        ErrorCode.PAYMENT_INVALID,
        ErrorCode.SIGNATURE_INVALID,
        ErrorCode.INSUFFICIENT_FUNDS,
        ErrorCode.CARD_EXPIRED,
        ErrorCode.CERTIFICATE_EXPIRED,
        ErrorCode.ACCESS_DENIED,
        ErrorCode.CARD_EXHAUSTED,
    )
)
_MAX_PENDING: Final = 1024

Sites = str | Sequence[str]
"""One site (a URL or origin) or several."""


def scope_matches(scope: str, path: str) -> bool:
    """Whether ``path`` lies in a route scope: ``*`` is one path segment, ``**`` any suffix."""
    parts = ("[^/]+".join(re.escape(p) for p in chunk.split("*")) for chunk in scope.split("**"))
    return re.fullmatch(".*".join(parts), path) is not None


_LOOPBACK_NAMES: Final = ("localhost",)


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    origin: str
    host: str
    path: str
    secure: bool

    @classmethod
    def parse(cls, url: str) -> _Target:
        parsed = httpx.URL(url)
        host = parsed.host.lower()
        return cls(
            url=url,
            origin=site_of(url),
            host=host,
            path=parsed.path or "/",
            secure=parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(host)),
        )


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: plain http there never leaves the machine."""
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def site_of(url: str) -> str:
    """The origin a card is bound to: ``scheme://host[:port]``, lowercase, default port off."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise LocalProtocolError(f"a site is an http(s) URL, not {url!r}", code=ErrorCode.BAD_FIELD)
    host = parsed.host.lower()
    if ":" in host:
        host = f"[{host}]"
    port = "" if parsed.port is None else f":{parsed.port}"
    return f"{parsed.scheme}://{host}{port}"


def _check_transport(target: _Target) -> None:
    if not target.secure:
        raise LocalProtocolError(
            f"refusing to pay over plain http to {target.host}: a payment is a bearer token "
            "and the answer must come from the vendor (use https; http only on loopback)",
            code=ErrorCode.INSECURE_TRANSPORT,
        )


@dataclass(frozen=True, slots=True)
class _Flight:
    """A payment this process sent and whose answer it awaits; it holds its card's turn."""

    history_id: int
    commitment_id: bytes | None
    card: int
    resend: bool = False


class _CardKeys:
    """The HLL card keys: software keys from the store, PKCS#11 tokens opened once each."""

    def __init__(self, store: WalletStore) -> None:
        self._store = store
        self._tokens: dict[Pkcs11Location, Pkcs11CardKey] = {}

    def __call__(self, card: CardRow) -> hll.CardKey:
        secret = hll_secret(self._store.box, card)
        token = pkcs11_location(card)
        if token is None:
            if secret.card_key is None:
                raise LocalProtocolError("the HLL card has no key", code=ErrorCode.INTERNAL)
            return hll.SoftwareCardKey(secret.card_key)
        opened = self._tokens.get(token)
        if opened is None or opened.closed:
            opened = Pkcs11CardKey.open(
                module_path=token.module_path,
                token_label=token.token_label,
                user_pin=secret.pin or "",
                key_label=token.key_label,
            )
            self._tokens[token] = opened
        return opened

    def close(self) -> None:
        for opened in self._tokens.values():
            opened.close()
        self._tokens.clear()


class Wallet:
    """A wallet file opened with its passphrase. Implements the ``Payer`` protocol.

    Open with :meth:`create` or :meth:`open`; close with :meth:`close` or a ``with`` block.
    One object may serve several threads (payments run one at a time); several processes
    may open the same file.
    """

    def __init__(
        self,
        store: WalletStore,
        *,
        policy: SpendingPolicy,
        clock: Clock,
        rng: RandomSource,
        preference: Sequence[str],
        up_front_margin: int,
    ) -> None:
        """Private: use :meth:`create` or :meth:`open`."""
        self._store = store
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._preference = {method: rank for rank, method in enumerate(preference)}
        self._margin = up_front_margin
        self._keys = _CardKeys(store)
        box = store.box
        self._methods: dict[str, WalletMethod] = {
            "szm:chain": SzmChainMethod(box),
            "szm:prbg": SzmPrbgMethod(box),
            "hll:mac": HllMethod(box, self._keys),
            "payword": PaywordMethod(box, rng=rng),
        }
        self._only_card: str | None = None
        self._lock = threading.RLock()
        self._remembered: dict[tuple[str, str], dict[str, Challenge]] = {}
        self._pending: OrderedDict[str, _Flight] = OrderedDict()
        self._turns = CardTurns(store.path)

    # -- opening and closing ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path | str,
        passphrase: str,
        *,
        policy: SpendingPolicy | None = None,
        clock: Clock | None = None,
        rng: RandomSource = os.urandom,
        preference: Sequence[str] = DEFAULT_PREFERENCE,
        up_front_margin: int = DEFAULT_UP_FRONT_MARGIN,
    ) -> Wallet:
        """A new wallet file (owner-only permissions). Raises Conflict if it exists."""
        store = WalletStore.create(Path(path), passphrase, rng=rng)
        chosen = policy if policy is not None else SpendingPolicy()
        _save_policy(store, chosen)
        return cls(
            store,
            policy=chosen,
            clock=clock or SystemClock(),
            rng=rng,
            preference=preference,
            up_front_margin=up_front_margin,
        )

    @classmethod
    def open(
        cls,
        path: Path | str,
        passphrase: str,
        *,
        policy: SpendingPolicy | None = None,
        clock: Clock | None = None,
        rng: RandomSource = os.urandom,
        preference: Sequence[str] = DEFAULT_PREFERENCE,
        up_front_margin: int = DEFAULT_UP_FRONT_MARGIN,
    ) -> Wallet:
        """Open a wallet file; ``policy`` None uses the policy saved in the file.

        Raises LocalProtocolError: NOT_FOUND (no file) or WRONG_PASSPHRASE; ResourceBusy
        (WALLET_BUSY) if another process is writing the file.
        """
        store = WalletStore.open(Path(path), passphrase, rng=rng)
        try:
            chosen = policy if policy is not None else _load_policy(store)
        except BaseException:
            store.close()
            raise
        return cls(
            store,
            policy=chosen,
            clock=clock or SystemClock(),
            rng=rng,
            preference=preference,
            up_front_margin=up_front_margin,
        )

    def close(self) -> None:
        """Log out of PKCS#11 tokens and release the file. Idempotent."""
        self._turns.close()
        self._keys.close()
        self._store.close()

    def __enter__(self) -> Wallet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._store.path

    # -- policy ----------------------------------------------------------------------------

    @property
    def policy(self) -> SpendingPolicy:
        return self._policy

    def use_policy(self, policy: SpendingPolicy, *, save: bool = False) -> None:
        """Apply ``policy`` to later payments; ``save`` also stores it (without its callback)."""
        if save:
            _save_policy(self._store, policy)
        self._policy = policy

    # -- cards -----------------------------------------------------------------------------

    def add_szm_code(self, text: str, *, site: Sites, label: str | None = None) -> CardInfo:
        """Add an SZM card from its printed code (``FTH1-...``) or compact (QR/file) form.

        ``site`` is the vendor that sold the card (its URL or origin, or several): the card
        pays only there. Its realm is a name anyone can copy; the site is what the reader
        trusts.
        """
        return self.add_szm_card(parse_szm_code(text), site=site, label=label)

    def add_szm_card(
        self, code: CardCode, *, site: Sites, label: str | None = None, spent: int = 0
    ) -> CardInfo:
        """Add an SZM card; ``spent``: the units its issuer says are spent (a short code's
        lookup tells), so the first payment starts past them instead of being a replay."""
        return self._add(szm_card(code, self._store.box, label=label, spent=spent), site)

    def add_hll_card(
        self,
        card: HllCardFile,
        *,
        site: Sites,
        token: Pkcs11Location | None = None,
        pin: str | None = None,
        label: str | None = None,
    ) -> CardInfo:
        """Add an HLL card: a software card (its key is in ``card``) or one whose key is in
        the PKCS#11 ``token``; ``pin`` is then kept sealed so payments need no prompt.

        ``site``: the merchants (URLs or origins) the card may pay. ``card.bank_key`` names
        its bank: the certificate must be that bank's (else SIGNATURE_INVALID), and the
        card pays no challenge naming another bank (MISUSE if the file names none)."""
        new = hll_card(card, self._store.box, token=token, pin=pin, label=label)
        return self._add(new, site)

    def add_payword(
        self,
        certificate: payword.Certificate,
        private_key: bytes,
        *,
        site: Sites,
        label: str | None = None,
    ) -> CardInfo:
        """Add a PayWord account: the user's Ed25519 key and the broker's certificate.
        It pays the vendors in ``site`` (URLs or origins), and only challenges naming the
        certificate's broker."""
        new = payword_card(certificate, private_key, self._store.box, label=label)
        return self._add(new, site)

    def _add(self, card: NewCard, site: Sites) -> CardInfo:
        card = replace(card, params=with_sites(card.params, _origins(site)))
        return describe(self._store.insert_card(card, now=self._clock.now()))

    def bind(self, label: str, site: Sites) -> CardInfo:
        """Add ``site`` (a URL or origin, or several) to the origins the card may pay.
        NOT_FOUND if there is no such card."""
        origins = _origins(site)
        return describe(
            self._store.update_params(
                label, lambda card: with_sites(card.params, {*card_sites(card), *origins})
            )
        )

    def name_bank(self, label: str, bank_key: bytes) -> CardInfo:
        """Name the bank of an HLL card added before cards named theirs (its certificate
        must be that bank's). Conflict if it names another bank already."""
        return describe(self._store.update_params(label, lambda card: with_bank(card, bank_key)))

    def unbind(self, label: str, site: Sites) -> CardInfo:
        """Remove ``site`` (or several) from the origins the card may pay; a card left with
        none pays nobody until bound again. NOT_FOUND if there is no such card."""
        origins = set(_origins(site))
        return describe(
            self._store.update_params(
                label,
                lambda card: with_sites(
                    card.params, (s for s in card_sites(card) if s not in origins)
                ),
            )
        )

    def cards(self) -> list[CardInfo]:
        return [describe(card) for card in self._store.cards()]

    def remove_card(self, label: str) -> CardInfo:
        """Forget the card ``label`` (its value left is gone with it). NOT_FOUND if there is
        no such card; Conflict while one of its payments is in flight."""
        return describe(self._store.remove_card(label))

    def rename_card(self, label: str, new_label: str) -> CardInfo:
        """Relabel a card; Conflict if the new label is taken. History keeps the old one."""
        if not new_label.strip():
            raise LocalProtocolError("a card label cannot be empty", code=ErrorCode.BAD_FIELD)
        return describe(self._store.rename_card(label, new_label.strip()))

    def pay_only_with(self, label: str | None) -> None:
        """Later payments use the card ``label`` only (None: any card). NOT_FOUND if the
        wallet holds no such card."""
        if label is not None and all(card.label != label for card in self._store.cards()):
            raise LocalProtocolError(f"no card labelled {label!r}", code=ErrorCode.NOT_FOUND)
        self._only_card = label

    def quote(self, url: str, challenges: list[Challenge]) -> PriceOffer:
        """What :meth:`pay` would pay for ``url`` now, within policy, spending nothing.
        Raises what :meth:`pay` raises before it spends."""
        target = _Target.parse(url)
        _check_transport(target)
        with self._lock:
            now = self._clock.now()
            quotes = self._quotes(challenges, target, now)
            if not quotes:
                raise self._why_no_card(challenges, target, now)
            return _offer(self._choose(quotes, target, now, ask=False), target)

    def balances(self) -> dict[str, int]:
        """Micros left per currency on prepaid and bank cards (PayWord credit is not money held)."""
        totals: dict[str, int] = {}
        for card in self.cards():
            if card.method != "payword" and self._clock.now() < card.expires_at:
                totals[card.currency] = totals.get(card.currency, 0) + card.value_left_micros
        return totals

    def szm_status_request(self, label: str) -> szm_status.StatusRequest:
        """A fresh proof that this wallet holds the SZM card ``label``: what the issuer's
        card status asks for (:meth:`farthing.http.issuer_client.IssuerClient.card_status`)."""
        row = next((card for card in self._store.cards() if card.label == label), None)
        if row is None or row.method not in ("szm:chain", "szm:prbg"):
            raise LocalProtocolError(f"no SZM card labelled {label!r}", code=ErrorCode.NOT_FOUND)
        code = szm_code(self._store.box, row)
        return szm_status.status_request(code.secret, code.card_id, now=self._clock.now())

    def history(self, *, limit: int = 50) -> list[HistoryEntry]:
        """The latest payments, newest first."""
        return self._store.history(limit=limit)

    # -- the Payer protocol ----------------------------------------------------------------

    def remember(self, url: str, challenges: list[Challenge]) -> None:
        origin = _Target.parse(url).origin
        now = self._clock.now()
        with self._lock:
            for challenge in challenges:
                scope = _details(challenge).get("resource")
                if isinstance(scope, str) and scope.startswith("/") and _expiry(challenge) > now:
                    self._remembered.setdefault((origin, scope), {})[challenge.method] = challenge
            self._forget_expired(now)

    def accept_payment(self, url: str) -> str | None:
        """``Accept-Payment`` for ``url``: the method ids of the unexpired cards that may pay
        its site (only the chosen card's, after :meth:`pay_only_with`), most preferred
        first; None when no card may pay there (the vendor then offers everything, and the
        402 says what it takes)."""
        target = _Target.parse(url)
        now = self._clock.now()
        with self._lock:
            schemes = {
                card.method
                for card in self._store.cards()
                if card.expires_at > now
                and _site_allows(card, target)
                and self._only_card in (None, card.label)
                and card.method in METHOD_OF
            }
        if not schemes:
            return None
        ranked = sorted(schemes, key=lambda s: (self._preference.get(s, len(self._preference)), s))
        return format_accept_payment([METHOD_OF[scheme] for scheme in ranked])

    def pay_up_front(self, url: str, *, keep_authorization: bool = False) -> PreparedPayment | None:
        """A lost payment for ``url`` to resend as it was, else a payment from a remembered
        challenge whose route scope covers ``url``; None if neither applies.
        ``keep_authorization``: the request's ``Authorization`` is the caller's, so only a
        payment in ``Payment-Authorization`` (a challenge with ``header``) is made.

        Paying up front is safe for the reader: a vendor that does not take the payment
        (say the path is missing) answers without a receipt, and the units go back on the
        card (:meth:`refused`). Only over https or loopback, like every payment.
        """
        target = _Target.parse(url)
        if not target.secure:
            return None  # the 402 round trip will say so with a clear error
        resend = self._resend(target, keep_authorization=keep_authorization)
        if resend is not None:
            return resend
        candidates = [
            challenge
            for challenge in self._usable_remembered(target, self._clock.now() + self._margin)
            if challenge.header is not None or not keep_authorization
        ]
        if not candidates:
            return None
        try:
            return self.pay(url, candidates)
        except PolicyRefused:
            raise
        except FarthingError:
            return None  # the vendor's 402 will tell what it wants now

    def pay(self, url: str, challenges: list[Challenge]) -> PreparedPayment:
        """Pay one of ``challenges`` for ``url`` within policy.

        Raises PolicyRefused (nothing spent), CardExhausted (cards of the right kind lack
        units), LocalProtocolError NO_CARD_FITS (no card for any offered method),
        INSECURE_TRANSPORT (plain http off loopback), WrongPin / CardLocked (a PKCS#11 token
        refused its PIN; nothing spent), CardInFlight (the chosen card's last payment is not
        answered yet, here or in another process: try again once it is; nothing spent).

        The payment holds its card's turn (:mod:`farthing.wallet.turns`) until its answer is
        given to :meth:`settle`, :meth:`refused` or :meth:`lost`.
        """
        target = _Target.parse(url)
        _check_transport(target)
        with self._lock:
            now = self._clock.now()
            self._store.expire_lost(now=now)
            quotes = self._quotes(challenges, target, now)
            if not quotes:
                raise self._why_no_card(challenges, target, now)
            quote = self._choose(quotes, target, now, ask=False)
            if not self._turns.take(quote.card.id):
                raise CardInFlight(
                    f"card {quote.card.label} waits for the answer to its last payment",
                    card=quote.card.label,
                    next_look=self._turns.waiter(quote.card.id),
                )
            try:
                self._policy.ask(_offer(quote, target))  # once, when the card's turn came
                payment = self._execute(quote, target, now)
            except BaseException:
                self._turns.give_back(quote.card.id)
                raise
            self._forget_used(quote.challenge)
            return payment

    def settle(
        self, payment: PreparedPayment, receipt: Receipt | None, body: bytes, *, status: int = 200
    ) -> bytes:
        """A 2xx answer: open it (SZM) and record the purchase.

        Raises InvalidPayment(SEAL_BROKEN) when an SZM answer is not sealed for this payment
        (recorded as ``seal-broken``; the units are spent: the token left the wallet).
        A 2xx of another method with no valid receipt was not charged (a free page): the
        payment is released.
        """
        with self._answered(payment) as flight:
            if payment.sealing_key is None and not _valid_receipt(receipt, payment):
                self._release(flight, status=status, code=None)
                return body
            try:
                plaintext = _open_body(payment, receipt, body, status=status)
            except FarthingError:
                self._resolve(flight, Outcome.SEAL_BROKEN, status=status)
                raise
            self._resolve(flight, Outcome.PAID)
            if flight is not None and flight.commitment_id is not None:
                self._store.acknowledge(flight.commitment_id)
            return plaintext

    def refused(
        self,
        payment: PreparedPayment,
        status: int,
        *,
        receipt: Receipt | None = None,
        code: int | None = None,
        position: int | None = None,
        last_value: bytes | None = None,
    ) -> None:
        """A non-2xx answer to a payment; ``code`` is the problem's farthing code, if any.

        No valid receipt: the vendor did not take the payment, so the card's position is
        given back and the next payment reuses it; a card refused as invalid (``code``
        unknown card, exhausted, expired, blocked) is not offered to that realm again; a
        PayWord commitment the vendor does not know is retired instead (the next payment
        opens a new one). PAYMENT_STALE with the vendor's ``position`` (PayWord: and its
        ``last_value``) is no refusal of the card: a copy of it paid since, so after the
        index is given back the card (commitment) moves forward to that position, recorded
        ``spent-elsewhere``, and the next payment pays from there. With a receipt the
        payment was taken: after a 5xx it is kept as lost and resent for the same URL;
        after a 4xx it is recorded ``refused``. A resent payment refused again is recorded
        as lost (the vendor may have taken it the first time, so its position is never
        reused).
        """
        stale = None if position is None else StaleAt(position=position, last_value=last_value)
        with self._answered(payment) as flight:
            if flight is None:
                return
            if _valid_receipt(receipt, payment) and status >= 500:
                self._store.mark(flight.history_id, _LOST)  # taken, not served: resend
            elif _valid_receipt(receipt, payment):
                # Taken, and the app's final answer (a 404 of a route without ``offers``):
                # sending it again would get the same answer.
                self._resolve(flight, Outcome.REFUSED, status=status)
            elif flight.resend:
                self._resolve(flight, Outcome.LOST, status=status)
            elif code == ErrorCode.PAYMENT_STALE and stale is not None:
                self._catch_up(flight, payment, status=status, stale=stale)
            else:
                self._release(flight, status=status, code=code)

    def lost(self, payment: PreparedPayment) -> None:
        """The answer never came (reset, timeout): keep the payment to resend it as it is."""
        with self._answered(payment) as flight:
            if flight is not None:
                self._store.mark(flight.history_id, _LOST)

    def retry_after_refusal(self) -> bool:
        return self._policy.retry_after_refusal

    # -- choosing ---------------------------------------------------------------------------

    def _quotes(self, challenges: Iterable[Challenge], target: _Target, now: int) -> list[Quote]:
        cards = self._store.cards()
        blocked = self._store.blocked_cards()
        refusals = self._store.refusals()
        quotes = []
        for challenge in challenges:
            method = self._methods.get(SCHEME_OF.get(challenge.method, ""))
            # A challenge's ``header`` selects Payment-Authorization (the parser drops any
            # other value), where the payment is then sent.
            if method is None or _expiry(challenge) <= now:
                continue
            for card in cards:
                if card.id in blocked or (card.id, challenge.realm) in refusals:
                    continue
                if self._only_card is not None and card.label != self._only_card:
                    continue
                if not _site_allows(card, target) or not _issuer_allows(card, challenge):
                    continue
                if (quote := method.quote(card, challenge, now)) is not None:
                    quotes.append(quote)
        return sorted(quotes, key=self._rank)

    def _why_no_card(
        self, challenges: Sequence[Challenge], target: _Target, now: int
    ) -> LocalProtocolError:
        cards = self._store.cards()
        blocked, refusals = self._store.blocked_cards(), self._store.refusals()
        fits = [card for card in cards if any(_same_kind(card, c) for c in challenges)]
        if fits and all(card.id in blocked for card in fits):
            return LocalProtocolError(
                "the answer to an earlier payment was lost; it is resent with the next request "
                "for that URL, and the card pays nothing new until then (or until its "
                "challenge expired)",
                code=ErrorCode.CONFLICT,
            )
        realms = {c.realm for c in challenges}
        if fits and all(any((card.id, r) in refusals for r in realms) for card in fits):
            labels = ", ".join(card.label for card in fits)
            return LocalProtocolError(
                f"this vendor refused {labels} (unknown, used up or blocked there); "
                "the wallet does not offer it there again",
                code=ErrorCode.NOT_FOUND,
            )
        return _no_card_error(challenges, cards, target, now)

    def _rank(self, quote: Quote) -> tuple[int, int, int, int]:
        preference = self._preference.get(quote.method, len(self._preference))
        return (preference, quote.charged_micros, quote.card.expires_at, quote.card.id)

    def _choose(self, quotes: list[Quote], target: _Target, now: int, *, ask: bool = True) -> Quote:
        usage = self._store.usage(host=target.host, since=now - self._policy.window)
        refusal: PolicyRefused | None = None
        for quote in quotes:
            offer = _offer(quote, target)
            try:
                self._policy.check(offer, _usage_in(usage, quote.currency))
            except PolicyRefused as error:
                refusal = refusal or error
                continue
            if ask:
                self._policy.ask(offer)
            return quote
        assert refusal is not None
        raise refusal

    # -- paying ------------------------------------------------------------------------------

    def _execute(self, quote: Quote, target: _Target, now: int) -> PreparedPayment:
        offer = _offer(quote, target)
        with self._store.writing() as tx:
            since = now - self._policy.window
            self._policy.check(
                offer, _usage_in(tx.usage(host=target.host, since=since), quote.currency)
            )
            before = tx.card(quote.card.id)
            reservation = self._methods[quote.method].reserve(tx, quote, target.path, now)
            after = tx.card(quote.card.id)
            history_id = tx.add_history(_entry(offer, reservation, now))
            tx.add_pending(_pending(history_id, quote, target, before, after, reservation))
        # Committed: the new index or counter is on disk. Only now may the payment leave.
        flight = _Flight(
            history_id=history_id, commitment_id=reservation.commitment_id, card=quote.card.id
        )
        try:
            payload = reservation.release()
        except BaseException:
            self._resolve(flight, Outcome.FAILED)
            raise
        authorization = format_credential(Credential.answering(quote.challenge, payload))
        payment = PreparedPayment(
            authorization=authorization,
            method=quote.method,
            price_micros=quote.charged_micros,
            currency=quote.currency,
            url=target.url,
            card_label=quote.card.label,
            sealing_key=reservation.sealing_key,
            card_id=reservation.sealing_card_id or quote.card.card_key,
            index=reservation.position,
            header=quote.challenge.header or AUTHORIZATION,
        )
        self._store.keep_payment(history_id, self._seal_payment(history_id, payment))
        self._keep_pending(authorization, flight)
        return payment

    def _resend(self, target: _Target, *, keep_authorization: bool) -> PreparedPayment | None:
        """The oldest lost payment for this URL, sent again byte for byte (no new money),
        in its own field (not one in ``Authorization`` while the caller keeps that)."""
        with self._lock:
            now = self._clock.now()
            self._store.expire_lost(now=now)
            for row in self._store.lost_for(target.url, now=now + 1):
                if row.payment is None:
                    continue
                payment = self._open_payment(row.history_id, row.payment)
                if keep_authorization and payment.header == AUTHORIZATION:
                    continue
                if not self._turns.take(row.card):
                    continue  # another process is resending it: its answer decides
                try:
                    self._store.mark(row.history_id, _SENT)
                except BaseException:
                    self._turns.give_back(row.card)
                    raise
                flight = _Flight(
                    history_id=row.history_id,
                    commitment_id=row.commitment,
                    card=row.card,
                    resend=True,
                )
                self._keep_pending(payment.authorization, flight)
                return payment
        return None

    def _seal_payment(self, history_id: int, payment: PreparedPayment) -> bytes:
        document = {
            "authorization": payment.authorization,
            "method": payment.method,
            "price": payment.price_micros,
            "currency": payment.currency,
            "url": payment.url,
            "card": payment.card_label,
            "key": b64url_encode(payment.sealing_key) if payment.sealing_key else None,
            "cardId": b64url_encode(payment.card_id) if payment.card_id else None,
            "index": payment.index,
            "header": payment.header,
        }
        plain = json.dumps(document, sort_keys=True).encode()
        return self._store.box.seal(_payment_record(history_id), plain)

    def _open_payment(self, history_id: int, sealed: bytes) -> PreparedPayment:
        document = json.loads(self._store.box.open(_payment_record(history_id), sealed))
        key, card_id = document["key"], document["cardId"]
        return PreparedPayment(
            authorization=str(document["authorization"]),
            method=str(document["method"]),
            price_micros=int(document["price"]),
            currency=str(document["currency"]),
            url=str(document["url"]),
            card_label=str(document["card"]),
            sealing_key=None if key is None else b64url_decode(key),
            card_id=None if card_id is None else b64url_decode(card_id),
            index=document["index"],
            # Kept before payments named their field: those all went in Authorization.
            header=str(document.get("header", AUTHORIZATION)),
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _keep_pending(self, authorization: str, flight: _Flight) -> None:
        with self._lock:
            self._pending[authorization] = flight
            while len(self._pending) > _MAX_PENDING:
                _, forgotten = self._pending.popitem(last=False)
                self._turns.give_back(forgotten.card)

    @contextmanager
    def _answered(self, payment: PreparedPayment) -> Iterator[_Flight | None]:
        """The flight of ``payment``, whose answer came; its card's turn is given back only
        after the answer is recorded, so the card's next payment sees the position it left
        (a refused payment's index given back is the one the next payment reuses)."""
        with self._lock:
            flight = self._pending.pop(payment.authorization, None)
        try:
            yield flight
        finally:
            if flight is not None:
                self._turns.give_back(flight.card)

    def _resolve(self, flight: _Flight | None, outcome: str, *, status: int | None = None) -> None:
        if flight is not None:
            self._store.resolve(flight.history_id, outcome, status=status)

    def _release(self, flight: _Flight | None, *, status: int, code: int | None) -> None:
        if flight is None:
            return
        refused_code = code if code in _CARD_REFUSALS else None
        if flight.commitment_id is not None and code == ErrorCode.PAYMENT_INVALID:
            # The vendor does not know (or lost) this commitment, not the account.
            self._store.retire(flight.commitment_id)
            refused_code = None
        self._store.release(
            flight.history_id, status=status, refused_code=refused_code, now=self._clock.now()
        )

    def _catch_up(
        self, flight: _Flight, payment: PreparedPayment, *, status: int, stale: StaleAt
    ) -> None:
        """PAYMENT_STALE, in one write transaction (the card's turn is held): give the index
        back, then move the card (commitment) to where the vendor says it is, recorded
        ``spent-elsewhere``. A position the card cannot take (behind it, past its end, a
        PayWord value that is not the commitment's own) is a refusal as PAYMENT_INVALID:
        the commitment is retired, or the card not offered at that realm again."""
        now = self._clock.now()
        with self._store.writing() as tx:
            released = tx.release(flight.history_id, status=status, refused_code=None, now=now)
            if released is None:
                return
            card = tx.card(flight.card)
            skipped = self._methods[card.method].catch_up(tx, card, stale, flight.commitment_id)
            if skipped is not None:
                tx.add_history(_elsewhere(skipped, card, payment, now))
            elif flight.commitment_id is not None:
                tx.retire(flight.commitment_id)
            else:
                realm = released.pending.realm
                tx.refuse(card.id, realm, code=int(ErrorCode.PAYMENT_INVALID), now=now)

    def _usable_remembered(self, target: _Target, not_before: int) -> list[Challenge]:
        with self._lock:
            return [
                challenge
                for (origin, scope), by_method in self._remembered.items()
                if origin == target.origin and scope_matches(scope, target.path)
                for challenge in by_method.values()
                if _expiry(challenge) > not_before
            ]

    def _forget_used(self, used: Challenge) -> None:
        """A challenge id pays once (the vendor refuses it after): never up front again.
        The vendor hands a fresh one with each paid answer (docs/http.md)."""
        for key, by_method in list(self._remembered.items()):
            remembered = by_method.get(used.method)
            if remembered is not None and remembered.id == used.id:
                del by_method[used.method]
                if not by_method:
                    del self._remembered[key]

    def _forget_expired(self, now: int) -> None:
        for key, by_method in list(self._remembered.items()):
            live = {m: c for m, c in by_method.items() if _expiry(c) > now}
            if live:
                self._remembered[key] = live
            else:
                del self._remembered[key]


# --- helpers -------------------------------------------------------------------------------


def _origins(site: Sites) -> tuple[str, ...]:
    """The origins of one URL or several."""
    return (site_of(site),) if isinstance(site, str) else tuple(site_of(s) for s in site)


def _site_allows(card: CardRow, target: _Target) -> bool:
    """A card pays only the origins in its set (none: nobody)."""
    return target.origin in card_sites(card)


def _issuer_allows(card: CardRow, challenge: Challenge) -> bool:
    """The challenge names the card's issuer: for HLL the bank (``bank``, when the
    challenge names one), for PayWord the broker of the user certificate (``broker``)."""
    if card.method == "hll:mac":
        bank = _details(challenge).get("bank")
        return bank is None or bank == card_bank(card)
    if card.method == "payword":
        return _details(challenge).get("broker") == card.realm
    return True


def _details(challenge: Challenge) -> JsonObject:
    """The challenge request's ``methodDetails`` (empty if it has none)."""
    details = challenge.request.get("methodDetails")
    return details if isinstance(details, dict) else {}


def _expiry(challenge: Challenge) -> int:
    """When a challenge expires; one without ``expires`` (never ours) counts as expired."""
    return challenge.expires if challenge.expires is not None else 0


def _valid_receipt(receipt: Receipt | None, payment: PreparedPayment) -> bool:
    """A receipt says the vendor took a payment of this method (anything else: it did not)."""
    return (
        receipt is not None
        and receipt.status == "success"
        and SCHEME_OF.get(receipt.method) == payment.method
    )


def _payment_record(history_id: int) -> bytes:
    return record_id("pending", history_id.to_bytes(8, "big"), "payment")


def _pending(
    history_id: int,
    quote: Quote,
    target: _Target,
    before: CardRow,
    after: CardRow,
    reservation: Reservation,
) -> PendingPayment:
    commitment_to = reservation.position if reservation.commitment_id is not None else None
    return PendingPayment(
        history_id=history_id,
        card=before.id,
        url=target.url,
        realm=quote.challenge.realm,
        expires_at=_expiry(quote.challenge),
        from_spent=before.spent,
        from_balance=before.balance,
        from_state=before.state,
        to_spent=after.spent,
        commitment=reservation.commitment_id,
        commitment_from=None if commitment_to is None else commitment_to - quote.units,
        commitment_to=commitment_to,
    )


def _offer(quote: Quote, target: _Target) -> PriceOffer:
    return PriceOffer(
        url=target.url,
        host=target.host,
        method=quote.method,
        card_label=quote.card.label,
        units=quote.units,
        charged_micros=quote.charged_micros,
        price_micros=quote.price_micros,
        currency=quote.currency,
    )


def _entry(offer: PriceOffer, reservation: Reservation, now: int) -> HistoryEntry:
    return HistoryEntry(
        at=now,
        url=offer.url,
        host=offer.host,
        method=offer.method,
        card_label=offer.card_label,
        units=offer.units,
        position=reservation.position,
        price_micros=offer.price_micros,
        charged_micros=offer.charged_micros,
        currency=offer.currency,
    )


def _elsewhere(skipped: Skipped, card: CardRow, payment: PreparedPayment, now: int) -> HistoryEntry:
    """The history's note of units a copy of the card paid elsewhere. The spending policy
    counts them (a copy's payments count twice, once in each wallet): only the vendor says
    where the card is, and the policy must bound what a vendor can take."""
    micros = skipped.units * skipped.unit_micros
    return HistoryEntry(
        at=now,
        url=payment.url,
        host=_Target.parse(payment.url).host,
        method=card.method,
        card_label=card.label,
        units=skipped.units,
        position=skipped.position,
        price_micros=micros,
        charged_micros=micros,
        currency=card.currency,
        outcome=Outcome.SPENT_ELSEWHERE,
    )


def _usage_in(usage: dict[str, tuple[int, int]], currency: str) -> Usage:
    day, host = usage.get(currency, (0, 0))
    return Usage(day=day, host=host)


def _open_body(
    payment: PreparedPayment, receipt: Receipt | None, body: bytes, *, status: int
) -> bytes:
    """The plaintext: SZM bodies must come sealed and open with the payment's key.

    For an SZM method a 2xx that is not sealed (no receipt, no ``sealed`` member, a body that
    does not open) is not what was paid for: anyone who copied a vendor's realm can answer a
    payment, but only the card's issuer can seal for it.
    """
    if payment.sealing_key is None:
        return body
    sealed = receipt.extra.get("sealed") if receipt is not None else None
    content_type = sealed.get("contentType") if isinstance(sealed, dict) else None
    if not isinstance(content_type, str):
        raise InvalidPayment(
            "the answer is not sealed for this payment", code=ErrorCode.SEAL_BROKEN
        )
    if payment.card_id is None or payment.index is None:
        raise LocalProtocolError("a sealed payment lacks its card", code=ErrorCode.INTERNAL)
    return open_sealed(
        payment.sealing_key,
        body,
        method=payment.method,
        card_id=payment.card_id,
        index=payment.index,
        resource=_Target.parse(payment.url).path,
        status=status,
        content_type=content_type,
    )


def _no_card_error(
    challenges: Sequence[Challenge], cards: Sequence[CardRow], target: _Target, now: int
) -> LocalProtocolError:
    """Why no card could pay: bound to another site, used up, refused, or none at all."""
    kind_fits = [card for card in cards if any(_same_kind(card, c) for c in challenges)]
    elsewhere = [card for card in kind_fits if not _site_allows(card, target)]
    if elsewhere and len(elsewhere) == len(kind_fits):
        return _wrong_site(elsewhere, target)
    here = [card for card in kind_fits if card not in elsewhere]
    foreign = [c for c in here if not any(_issuer_allows(c, ch) for ch in challenges)]
    if foreign and len(foreign) == len(here):
        return _wrong_issuer(foreign, challenges)
    if not kind_fits and (mismatch := _other_issuer_or_currency(challenges, cards)) is not None:
        return mismatch
    if kind_fits:
        labels = ", ".join(card.label for card in kind_fits)
        expired = all(card.expires_at <= now for card in kind_fits)
        why = "expired" if expired else "too few units left"
        return CardExhausted(f"no card can pay this: {labels}: {why}")
    offered = ", ".join(sorted({c.method for c in challenges})) or "nothing"
    return LocalProtocolError(
        f"this wallet holds no card this vendor takes (it offers {offered})",
        code=ErrorCode.NO_CARD_FITS,
    )


def _other_issuer_or_currency(
    challenges: Sequence[Challenge], cards: Sequence[CardRow]
) -> LocalProtocolError | None:
    """Cards of an offered method that differ only in currency, or (SZM) in issuer."""
    for challenge in challenges:
        scheme = SCHEME_OF.get(challenge.method, challenge.method)
        same_method = [card for card in cards if card.method == scheme]
        asked = str(challenge.request.get("currency"))
        if same_method and all(wire_currency(card.currency) != asked for card in same_method):
            held = ", ".join(sorted({card.currency for card in same_method}))
            return LocalProtocolError(
                f"this vendor asks for {_currency_name(asked)}; your {scheme} cards hold {held}",
                code=ErrorCode.NO_CARD_FITS,
            )
        if scheme.startswith("szm:") and same_method:
            realms = ", ".join(sorted({repr(card.realm) for card in same_method}))
            return LocalProtocolError(
                f"your {scheme} cards are from the issuer {realms}; this vendor "
                f"takes cards of {challenge.realm!r}",
                code=ErrorCode.WRONG_ISSUER,
            )
    return None


def _currency_name(wire: str) -> str:
    """``micro-usd`` -> ``USD`` (what a person calls it); anything else as sent."""
    return wire.removeprefix(CURRENCY_PREFIX).upper() if wire.startswith(CURRENCY_PREFIX) else wire


def _wrong_site(cards: Sequence[CardRow], target: _Target) -> LocalProtocolError:
    unbound = [card.label for card in cards if not card_sites(card)]
    if unbound:
        labels = ", ".join(unbound)
        return LocalProtocolError(
            f"{labels} pays no site yet (added before cards had sites): bind it with "
            f"`farthing wallet bind LABEL --site {target.origin}` if you trust that site",
            code=ErrorCode.WRONG_SITE,
        )
    sites = ", ".join(sorted({site for card in cards for site in card_sites(card)}))
    return LocalProtocolError(
        f"the cards this vendor takes pay only {sites}, not {target.origin}",
        code=ErrorCode.WRONG_SITE,
    )


def _wrong_issuer(cards: Sequence[CardRow], challenges: Sequence[Challenge]) -> LocalProtocolError:
    if all(card.method == "payword" for card in cards):
        theirs = ", ".join(sorted({str(_details(c).get("broker")) for c in challenges}))
        ours = ", ".join(sorted({str(card.realm) for card in cards}))
        what = f"this vendor's PayWord broker is {theirs}; your accounts are with {ours}"
    elif all(card_bank(card) is None for card in cards):
        labels = ", ".join(card.label for card in cards)
        what = (
            f"{labels} was added before cards named their bank: name it with `farthing "
            "wallet bind LABEL --bank-key HEX` (the key `farthing issuer hll-key` prints)"
        )
    else:
        what = "this vendor's HLL bank is not the bank of your cards for this site"
    return LocalProtocolError(what, code=ErrorCode.WRONG_ISSUER)


def _same_kind(card: CardRow, challenge: Challenge) -> bool:
    """Same method and currency; for SZM the same issuer (realm), for HLL the same unit."""
    if card.method != SCHEME_OF.get(challenge.method):
        return False
    if challenge.request.get("currency") != wire_currency(card.currency):
        return False
    if card.method.startswith("szm:"):
        return card.realm == challenge.realm
    if card.method == "hll:mac":
        return _details(challenge).get("unitMicros") == card.unit_micros
    return True


def _save_policy(store: WalletStore, policy: SpendingPolicy) -> None:
    store.set_meta(_POLICY_KEY, json.dumps(policy.to_json(), sort_keys=True).encode())


def _load_policy(store: WalletStore) -> SpendingPolicy:
    raw = store.get_meta(_POLICY_KEY)
    return SpendingPolicy() if raw is None else SpendingPolicy.from_json(json.loads(raw))
