"""Paying clients for the heavy tests: each thread owns its cards and pays in a loop.

A :class:`Payer` behaves like a wallet: it advances a card's index (or HLL counter) before
a payment leaves, never reuses one, and records what became of every payment: ``paid``
(200 with a receipt, body opened), ``refused`` (any 4xx) or ``unknown`` (no answer, a cut
connection, a 5xx: the vendor may or may not have recorded it). :func:`card_problems`
then checks one card's history against the store.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from farthing.core.encoding import b64url_decode
from farthing.core.errors import FarthingError
from farthing.core.sealing import open_sealed
from farthing.http.issuer_client import IssuerClient
from farthing.http.methods import SCHEME_OF
from farthing.http.payment_auth import Challenge, parse_challenges
from farthing.paywall.deposits import Depositor
from farthing.testing import FixedClock
from tests.reliability.procs import Server
from tests.reliability.world import (
    ARTICLES,
    MERCHANT_ID,
    PRICE_UNITS,
    ChainHolder,
    HllHolder,
    Holder,
    Paid,
    PaywordHolder,
    PrbgHolder,
    World,
    authorization,
    hll_offer,
    overlapping,
    paid_from_receipt,
    sealed_type,
)

PATHS = [f"/articles/{name}" for name in ARTICLES]
UP_FRONT_MARGIN = 10  # seconds, as the wallet's DEFAULT_UP_FRONT_MARGIN


@dataclass
class Sent:
    """One payment and what became of it."""

    method: str
    key: str
    index: int
    outcome: str
    status: int | None = None
    paid: Paid | None = None
    seconds: float = 0.0
    at: float = 0.0
    detail: str = ""
    path: str = ""
    header: str = ""
    """The request as sent (path, Authorization), to send it again."""


@dataclass
class Payer:
    """One client: a card (or commitment) per method, paying round robin."""

    world: World
    base: str
    methods: tuple[str, ...]
    seed: int
    holders: dict[str, Holder] = field(default_factory=dict)
    position: dict[str, int] = field(default_factory=dict)
    introduced: set[str] = field(default_factory=set)
    sent: list[Sent] = field(default_factory=list)
    # scheme -> an unused challenge (ids are single use: each is answered once)
    challenges: dict[str, tuple[Challenge, int]] = field(default_factory=dict)
    backoff: float = 0.2

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._turn = 0

    def equip(self, *, units: int) -> None:
        """One fresh card per method, ``units`` long."""
        world = self.world
        makers = {
            "szm:chain": lambda: world.chain_cards(1, units=units)[0],
            "szm:prbg": lambda: world.prbg_cards(1, units=units)[0],
            "payword": lambda: world.commitments(1, length=units)[0],
            "hll:mac": lambda: world.hll_cards(1, units=units)[0],
        }
        for method in self.methods:
            self.holders[method] = makers[method]()
            self.position[method] = 0

    def run(self, client: httpx.Client, stop: threading.Event, pace: float = 0.0) -> None:
        while not stop.is_set():
            started = time.monotonic()
            self.pay_once(client)
            if pace:
                time.sleep(max(0.0, pace - (time.monotonic() - started)))

    def pay_once(self, client: httpx.Client) -> Sent | None:
        method = self.methods[self._turn % len(self.methods)]
        self._turn += 1
        path = self._rng.choice(PATHS)
        if self._stale(method) and not self._refresh(client, path):
            return None
        holder = self.holders[method]
        index = self.position[method] + (1 if method == "hll:mac" else PRICE_UNITS)
        self.position[method] = index  # write-ahead: never sent twice, whatever happens
        header, key = self._credential(method, holder, index, path)
        record = Sent(
            method=method, key=holder.key, index=index, outcome="unknown", path=path, header=header
        )
        record.at = time.time()
        started = time.perf_counter()
        try:
            response = client.get(path, headers={"authorization": header})
        except httpx.HTTPError as error:
            record.detail = type(error).__name__
            time.sleep(self.backoff)
        else:
            self._judge(record, response, method, holder, key, path)
        record.seconds = time.perf_counter() - started
        self.sent.append(record)
        return record

    def _credential(
        self, method: str, holder: Holder, index: int, path: str
    ) -> tuple[str, bytes | None]:
        cid, expires = self.challenges.pop(method)
        now = self.world.clock.now()
        if isinstance(holder, ChainHolder | PrbgHolder):
            payment, key = holder.at(index, now)
            return authorization(cid, method, payment), key
        if isinstance(holder, PaywordHolder):
            extra = {} if holder.key in self.introduced else {"commitment": holder.encoded}
            return authorization(cid, method, holder.at(index, now), **extra), None
        assert isinstance(holder, HllHolder)
        payment = holder.pay(hll_offer(cid, expires, good=path), index)
        return authorization(cid, method, payment, certificate=holder.certificate), None

    def _judge(
        self,
        record: Sent,
        response: httpx.Response,
        method: str,
        holder: Holder,
        key: bytes | None,
        path: str,
    ) -> None:
        record.status = response.status_code
        if response.status_code >= 500:
            record.detail = response.text[:200]
            time.sleep(self.backoff)
            return
        self._remember(response)  # a 402 and a paid 200 both carry fresh challenges
        if response.status_code != 200:
            record.outcome, record.detail = "refused", response.text[:300]
            return
        record.paid = paid_from_receipt(response.headers["payment-receipt"])
        record.outcome = "paid"
        if isinstance(holder, PaywordHolder):
            self.introduced.add(holder.key)
        body = response.content
        if key is not None:
            try:
                body = open_sealed(
                    key, body, method=method, card_id=b64url_decode(holder.key),
                    index=record.index, resource=path, status=response.status_code,
                    content_type=sealed_type(response.headers["payment-receipt"]),
                )  # fmt: skip
            except FarthingError:
                record.outcome, record.detail = "corrupt", "the sealed body did not open"
                return
        if body.decode(errors="replace") != ARTICLES[path.rsplit("/", 1)[1]]:
            record.outcome, record.detail = "corrupt", "not the article"

    def _stale(self, method: str) -> bool:
        """No challenge for the method, or one about to expire (a wallet's up-front margin)."""
        known = self.challenges.get(method)
        return known is None or known[1] <= self.world.clock.now() + UP_FRONT_MARGIN

    def _refresh(self, client: httpx.Client, path: str) -> bool:
        try:
            response = client.get(path)
        except httpx.HTTPError:
            time.sleep(self.backoff)
            return False
        return self._remember(response)

    def _remember(self, response: httpx.Response) -> bool:
        found = parse_challenges(response.headers.get_list("www-authenticate"))
        fresh = {SCHEME_OF[c.method]: (c, c.expires or 0) for c in found if c.method in SCHEME_OF}
        self.challenges.update(fresh)
        return bool(fresh)


def card_problems(history: list[Sent], stored: int) -> list[str]:
    """What is wrong with one card (szm or payword) given everything sent with it and the
    ``spent`` the store holds. Empty if: no unit was accepted twice; every accepted index
    is recorded; every recorded unit is either covered by a receipt or lies between the
    last accepted payment and a payment whose answer was lost (and nothing else)."""
    paid = [s.paid for s in history if s.paid is not None]
    problems = [f"units accepted twice: {a} and {b}" for a, b in overlapping(paid)]
    problems += [
        f"accepted {p.index} but the store says {stored}" for p in paid if p.index > stored
    ]
    covered = {u for p in paid for u in range(p.index - p.units + 1, p.index + 1)}
    allowed: set[int] = set()
    for s in history:
        if s.outcome == "unknown":
            before = max((p.index for p in paid if p.index < s.index), default=0)
            allowed.update(range(before + 1, s.index + 1))
    lost = set(range(1, stored + 1)) - covered
    if not lost <= allowed:
        problems.append(
            f"units recorded with no receipt or lost answer: {sorted(lost - allowed)[:10]}"
        )
    return problems


def guarded(
    job: Callable[[threading.Event], None], stop: threading.Event, errors: list[str]
) -> None:
    """Run a load thread's job; an exception in it fails the test instead of vanishing."""
    try:
        job(stop)
    except BaseException as error:
        errors.append(f"{type(error).__name__}: {error}")
        stop.set()


def run_while_killing(
    server: Server,
    jobs: list[Callable[[threading.Event], None]],
    kills: int,
    *,
    join_timeout: float = 60.0,
) -> list[str]:
    """Run the load ``jobs`` on threads while ``server`` is SIGKILLed and started again
    ``kills`` times at random moments (seeded by ``kills``), then a little more load against
    the last start; the errors the jobs raised."""
    stop = threading.Event()
    errors: list[str] = []
    threads = [threading.Thread(target=guarded, args=(job, stop, errors)) for job in jobs]
    for thread in threads:
        thread.start()
    rng = random.Random(kills)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.2, 2.5))
            server.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            server.start()
        time.sleep(2.0)  # some load against the last start
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=join_timeout)
    return errors


def deposit_until_done(world: World, issuer_base: str, rounds: int = 30) -> None:
    """Stage and send the vendor's claims until its outbox is empty, ignoring the backoff
    earlier failures scheduled (a clock a year ahead makes every item due)."""

    async def flush() -> int:
        later = FixedClock(world.clock.now() + 365 * 86_400)
        async with IssuerClient(
            issuer_base, merchant_id=MERCHANT_ID, merchant_key=world.merchant_key
        ) as client:
            depositor = Depositor(
                world.store, client, clock=later, rng=os.urandom,
                merchant_id=MERCHANT_ID, merchant_key=world.merchant_key,
            )  # fmt: skip
            await asyncio.to_thread(depositor.stage)
            report = await depositor.flush(limit=1000)
            assert report.failed == 0, report
            with world.store.transaction(readonly=True) as tx:
                return len(tx.vendor.outbox_due(later.now(), 1000))

    for _ in range(rounds):
        if asyncio.run(flush()) == 0:
            return
        time.sleep(1)
    raise AssertionError(f"deposits still due after {rounds} rounds")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
