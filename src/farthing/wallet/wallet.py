"""The wallet: cards of every scheme, a spending policy, and payments for HTTP 402 challenges.

``Wallet`` implements :class:`farthing.wallet.auth.Payer`, so it plugs into httpx::

    with Wallet.open(path, passphrase) as wallet:
        client = httpx.Client(auth=PaymentAuth(wallet))
        client.get("https://news.example/articles/a")     # pays the 402, opens the body

Paying one request (:meth:`Wallet.pay`):

1. *Quote.* Every offered challenge the wallet understands is matched against every card
   (method, realm, currency, unit, expiry, units left). Quotes are ranked by the method
   preference (default: ``szm:chain``, ``szm:prbg``, ``hll:mac``, ``payword``: the sealed,
   private SZM cards first), then by the money charged, then the card that expires first.
2. *Policy.* The best quote the spending policy allows wins; the confirm callback, if any,
   is asked. A refusal raises :class:`~farthing.core.errors.PolicyRefused` before anything
   changed.
3. *Write-ahead.* In one ``BEGIN IMMEDIATE`` transaction: re-check the policy against
   today's spending, re-read the card, compute the payment with the pure core, write the
   card's new index or counter, and add a ``pending`` history entry. Only after the commit
   (``synchronous=FULL``) does the payment leave :meth:`pay`; a crash loses at most this
   unit and never reuses it, and two processes with one card queue on the lock.
4. *Settle.* On success :meth:`settle` opens a sealed (SZM) body with the payment's key and
   marks the entry ``paid``; a seal that does not open raises
   :class:`~farthing.core.errors.InvalidPayment` (the vendor is not the card's issuer, or
   the body was changed). :meth:`refused` marks it ``refused``; for PayWord it also retires
   the commitment (the vendor never advanced it), so the next payment opens a new one.

Paying up front. :meth:`remember` keeps the challenges of each (origin, route scope) in
memory; :meth:`pay_up_front` pays a later request with one of them if the URL path matches
the challenge's ``resource`` pattern (``*`` one path segment, ``**`` any suffix) and it
expires more than ``up_front_margin`` seconds from now. Anything but a policy refusal makes
it return None, and the ordinary 402 round trip decides.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import httpx

from farthing.core.cardcode import CardCode
from farthing.core.clock import Clock, RandomSource, SystemClock
from farthing.core.errors import (
    CardExhausted,
    ErrorCode,
    FarthingError,
    LocalProtocolError,
    PolicyRefused,
)
from farthing.core.schemes import hll, payword, szm_status
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import Challenge, Credential, Receipt, format_credential
from farthing.wallet.auth import PreparedPayment
from farthing.wallet.cards import (
    CardInfo,
    HllCardFile,
    Pkcs11Location,
    describe,
    hll_card,
    hll_secret,
    parse_szm_code,
    payword_card,
    pkcs11_location,
    szm_card,
    szm_code,
)
from farthing.wallet.methods import (
    HllMethod,
    PaywordMethod,
    Quote,
    Reservation,
    SzmChainMethod,
    SzmPrbgMethod,
    WalletMethod,
)
from farthing.wallet.pkcs11_card import Pkcs11CardKey
from farthing.wallet.policy import PriceOffer, SpendingPolicy, Usage
from farthing.wallet.store import CardRow, HistoryEntry, NewCard, Outcome, WalletStore

__all__ = [
    "DEFAULT_PREFERENCE",
    "DEFAULT_UP_FRONT_MARGIN",
    "Wallet",
    "scope_matches",
]

DEFAULT_PREFERENCE: Final = ("szm:chain", "szm:prbg", "hll:mac", "payword")
DEFAULT_UP_FRONT_MARGIN: Final = 10
_POLICY_KEY: Final = "policy"
_MAX_PENDING: Final = 1024


def scope_matches(scope: str, path: str) -> bool:
    """Whether ``path`` lies in a route scope: ``*`` is one path segment, ``**`` any suffix."""
    parts = ("[^/]+".join(re.escape(p) for p in chunk.split("*")) for chunk in scope.split("**"))
    return re.fullmatch(".*".join(parts), path) is not None


@dataclass(frozen=True, slots=True)
class _Target:
    url: str
    origin: str
    host: str
    path: str

    @classmethod
    def parse(cls, url: str) -> _Target:
        parsed = httpx.URL(url)
        origin = f"{parsed.scheme}://{parsed.netloc.decode('ascii')}".lower()
        return cls(url=url, origin=origin, host=parsed.host.lower(), path=parsed.path or "/")


@dataclass(frozen=True, slots=True)
class _Pending:
    history_id: int
    commitment_id: bytes | None


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
        self._lock = threading.RLock()
        self._remembered: dict[tuple[str, str], dict[str, Challenge]] = {}
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

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

        Raises LocalProtocolError: NOT_FOUND (no file) or WALLET_LOCKED ("wrong passphrase").
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

    def add_szm_code(self, text: str, *, label: str | None = None) -> CardInfo:
        """Add an SZM card from its printed code (``FTH1-...``) or compact (QR/file) form."""
        return self.add_szm_card(parse_szm_code(text), label=label)

    def add_szm_card(self, code: CardCode, *, label: str | None = None) -> CardInfo:
        return self._add(szm_card(code, self._store.box, label=label))

    def add_hll_card(
        self,
        card: HllCardFile,
        *,
        token: Pkcs11Location | None = None,
        pin: str | None = None,
        label: str | None = None,
    ) -> CardInfo:
        """Add an HLL card: a software card (its key is in ``card``) or one whose key is in
        the PKCS#11 ``token``; ``pin`` is then kept sealed so payments need no prompt."""
        return self._add(hll_card(card, self._store.box, token=token, pin=pin, label=label))

    def add_payword(
        self, certificate: payword.Certificate, private_key: bytes, *, label: str | None = None
    ) -> CardInfo:
        """Add a PayWord account: the user's Ed25519 key and the broker's certificate."""
        return self._add(payword_card(certificate, private_key, self._store.box, label=label))

    def _add(self, card: NewCard) -> CardInfo:
        return describe(self._store.insert_card(card, now=self._clock.now()))

    def cards(self) -> list[CardInfo]:
        return [describe(card) for card in self._store.cards()]

    def balances(self) -> dict[str, int]:
        """Micros left per currency on prepaid and bank cards (PayWord credit is not money held)."""
        totals: dict[str, int] = {}
        for card in self.cards():
            if card.method != "payword" and self._clock.now() < card.expires_at:
                totals[card.currency] = totals.get(card.currency, 0) + card.value_left_micros
        return totals

    def szm_status_request(self, label: str) -> szm_status.StatusRequest:
        """A fresh proof that this wallet holds the SZM card ``label``: what the issuer's
        card status asks for (:meth:`farthing.issuer.client.IssuerClient.card_status`)."""
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
                scope = challenge.request.get("resource")
                if isinstance(scope, str) and scope.startswith("/") and challenge.expires > now:
                    self._remembered.setdefault((origin, scope), {})[challenge.method] = challenge
            self._forget_expired(now)

    def pay_up_front(self, url: str) -> PreparedPayment | None:
        target = _Target.parse(url)
        candidates = self._usable_remembered(target, self._clock.now() + self._margin)
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
        units), LocalProtocolError NOT_FOUND (no card for any offered method), WrongPin /
        CardLocked (a PKCS#11 token refused its PIN; nothing spent).
        """
        target = _Target.parse(url)
        with self._lock:
            now = self._clock.now()
            quotes = self._quotes(challenges, now)
            if not quotes:
                raise _no_card_error(challenges, self._store.cards(), now)
            quote = self._choose(quotes, target, now)
            return self._execute(quote, target, now)

    def settle(self, payment: PreparedPayment, receipt: Receipt | None, body: bytes) -> bytes:
        pending = self._take_pending(payment)
        try:
            plaintext = _open_body(payment, receipt, body)
        except FarthingError:
            self._finish(pending, Outcome.SEAL_BROKEN)
            raise
        self._finish(pending, Outcome.PAID)
        if pending is not None and pending.commitment_id is not None and receipt is not None:
            self._store.acknowledge(pending.commitment_id)
        return plaintext

    def refused(self, payment: PreparedPayment, status: int) -> None:
        pending = self._take_pending(payment)
        self._finish(pending, Outcome.REFUSED, status=status)
        if pending is not None and pending.commitment_id is not None:
            # The vendor did not take this payword, so its view of the chain is behind ours
            # for good; a fresh commitment costs one signature and loses no money.
            self._store.retire(pending.commitment_id)

    def retry_after_refusal(self) -> bool:
        return self._policy.retry_after_refusal

    # -- choosing ---------------------------------------------------------------------------

    def _quotes(self, challenges: Iterable[Challenge], now: int) -> list[Quote]:
        cards = self._store.cards()
        quotes = []
        for challenge in challenges:
            method = self._methods.get(challenge.method)
            if method is None or challenge.expires <= now:
                continue
            quotes += [q for card in cards if (q := method.quote(card, challenge, now))]
        return sorted(quotes, key=self._rank)

    def _rank(self, quote: Quote) -> tuple[int, int, int, int]:
        preference = self._preference.get(quote.method, len(self._preference))
        return (preference, quote.charged_micros, quote.card.expires_at, quote.card.id)

    def _choose(self, quotes: list[Quote], target: _Target, now: int) -> Quote:
        usage = self._store.usage(host=target.host, since=now - self._policy.window)
        refusal: PolicyRefused | None = None
        for quote in quotes:
            offer = _offer(quote, target)
            try:
                self._policy.check(offer, _usage_in(usage, quote.currency))
            except PolicyRefused as error:
                refusal = refusal or error
                continue
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
            reservation = self._methods[quote.method].reserve(tx, quote, target.path, now)
            history_id = tx.add_history(_entry(offer, reservation, now))
        # Committed: the new index or counter is on disk. Only now may the payment leave.
        pending = _Pending(history_id=history_id, commitment_id=reservation.commitment_id)
        try:
            payload = reservation.release()
        except BaseException:
            self._finish(pending, Outcome.FAILED)
            raise
        authorization = format_credential(Credential(id=quote.challenge.id, payload=payload))
        self._keep_pending(authorization, pending)
        return PreparedPayment(
            authorization=authorization,
            method=quote.method,
            price_micros=quote.charged_micros,
            currency=quote.currency,
            url=target.url,
            card_label=quote.card.label,
            sealing_key=reservation.sealing_key,
            card_id=reservation.sealing_card_id or quote.card.card_key,
            index=reservation.position,
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _keep_pending(self, authorization: str, pending: _Pending) -> None:
        with self._lock:
            self._pending[authorization] = pending
            while len(self._pending) > _MAX_PENDING:
                self._pending.popitem(last=False)

    def _take_pending(self, payment: PreparedPayment) -> _Pending | None:
        with self._lock:
            return self._pending.pop(payment.authorization, None)

    def _finish(self, pending: _Pending | None, outcome: str, *, status: int | None = None) -> None:
        if pending is not None:
            self._store.finish(pending.history_id, outcome, status=status)

    def _usable_remembered(self, target: _Target, not_before: int) -> list[Challenge]:
        with self._lock:
            return [
                challenge
                for (origin, scope), by_method in self._remembered.items()
                if origin == target.origin and scope_matches(scope, target.path)
                for challenge in by_method.values()
                if challenge.expires > not_before
            ]

    def _forget_expired(self, now: int) -> None:
        for key, by_method in list(self._remembered.items()):
            live = {m: c for m, c in by_method.items() if c.expires > now}
            if live:
                self._remembered[key] = live
            else:
                del self._remembered[key]


# --- helpers -------------------------------------------------------------------------------


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


def _usage_in(usage: dict[str, tuple[int, int]], currency: str) -> Usage:
    day, host = usage.get(currency, (0, 0))
    return Usage(day=day, host=host)


def _open_body(payment: PreparedPayment, receipt: Receipt | None, body: bytes) -> bytes:
    """The plaintext: sealed SZM bodies opened with the payment's key, others as they are."""
    if payment.sealing_key is None or receipt is None or "sealed" not in receipt.extra:
        return body
    if payment.card_id is None or payment.index is None:
        raise LocalProtocolError("a sealed payment lacks its card", code=ErrorCode.INTERNAL)
    return open_sealed(
        payment.sealing_key,
        body,
        method=payment.method,
        card_id=payment.card_id,
        index=payment.index,
        resource=_Target.parse(payment.url).path,
    )


def _no_card_error(
    challenges: Sequence[Challenge], cards: Sequence[CardRow], now: int
) -> LocalProtocolError:
    """Why no card could pay: the right kind of card is used up, or there is none."""
    kind_fits = [card for card in cards if any(_same_kind(card, c) for c in challenges)]
    if kind_fits:
        labels = ", ".join(card.label for card in kind_fits)
        expired = all(card.expires_at <= now for card in kind_fits)
        why = "expired" if expired else "too few units left"
        return CardExhausted(f"no card can pay this: {labels}: {why}")
    offered = ", ".join(sorted({c.method for c in challenges})) or "nothing"
    return LocalProtocolError(
        f"this wallet holds no card this vendor takes (it offers {offered})",
        code=ErrorCode.NOT_FOUND,
    )


def _same_kind(card: CardRow, challenge: Challenge) -> bool:
    """Same method and currency; for SZM the same issuer (realm), for HLL the same unit."""
    if card.method != challenge.method or card.currency != challenge.request.get("currency"):
        return False
    if card.method.startswith("szm:"):
        return card.realm == challenge.realm
    if card.method == "hll:mac":
        return challenge.request.get("unitMicros") == card.unit_micros
    return challenge.request.get("broker") == card.realm


def _save_policy(store: WalletStore, policy: SpendingPolicy) -> None:
    store.set_meta(_POLICY_KEY, json.dumps(policy.to_json(), sort_keys=True).encode())


def _load_policy(store: WalletStore) -> SpendingPolicy:
    raw = store.get_meta(_POLICY_KEY)
    return SpendingPolicy() if raw is None else SpendingPolicy.from_json(json.loads(raw))
