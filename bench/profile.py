"""Where the time of one paid request goes: the vendor app in-process (no sockets, no HTTP
parser), fed pre-generated ``szm:chain`` payments, profiled with pyinstrument, and its parts
timed one by one in the same run. Writes the "Profile" section of docs/benchmarks.md (and
``bench/out/profile.html``, pyinstrument's full tree).

Run: ``python -m bench.profile [--quick]`` (``make bench`` runs every section).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio.to_thread

from bench import paidcpu
from bench.e2e import (
    BODY,
    CHAIN_MASTER,
    EUR,
    FREE_PATH,
    OUT,
    PAID_PATH,
    REALM,
    card_row,
    challenge_id,
    header,
    insert_batch,
)
from bench.inproc import CONCURRENT, App, concurrent_pass, drive, per_call, sqlite_rig
from bench.report import DOC, machine_line, write_section
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.schemes import szm_chain
from farthing.core.sealing import seal
from farthing.http.methods.common import SEAL_ALG
from farthing.http.methods.szm import MAX_PAYMENT_LEN
from farthing.http.payment_auth import (
    ChallengeBinder,
    Receipt,
    encode_json_b64,
    format_rfc3339,
    parse_credential,
)
from farthing.paywall.app import VendorApps
from farthing.paywall.config import load_vendor_config
from farthing.paywall.serve import vendor_from_config
from farthing.store import Store, SzmProtocol
from farthing.store._fastlane import FastStatement

if TYPE_CHECKING:  # the bench extra; the floor's test imports this module without it
    from pyinstrument import Profiler
    from pyinstrument.frame import Frame

RUNS: Final = 3
CARDS: Final = 1000

# --- the measurements ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    where: str
    micros: float


@dataclass(frozen=True, slots=True)
class Measured:
    paid_us: float
    free_us: float
    parts: list[Part]
    options: list[Part]
    top: list[tuple[str, float]]
    groups: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]
    iterations: int
    floor: Floor


def _median_us(fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(RUNS)) * 1e6


def measure(quick: bool) -> Measured:
    n = 800 if quick else 4000
    OUT.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="profile-", dir=OUT) as tmp,
        sqlite_rig(Path(tmp)) as rig,
    ):
        vendor = vendor_from_config(load_vendor_config(rig.folder.config))  # a worker's
        pool = rig.chain_pool((3 * RUNS + 2) * n, CARDS)
        secret, database = rig.folder.challenge_secret, Path(rig.folder.database)
        return _measure(vendor, rig.store, secret, pool, n, database)


def _measure(
    vendor: VendorApps, store: Store, secret: bytes, pool: list[str], n: int, database: Path
) -> Measured:
    lines = iter(pool)
    app: App = vendor.app

    def take() -> list[str | None]:
        return [next(lines) for _ in range(n)]

    async def main() -> tuple[float, float, list[Part], list[Part], Profiler, Floor]:
        await drive(app, PAID_PATH, take())  # warm: every card's state is now cached
        floor = await _floor_rounds(vendor, store, secret, database, take)
        paid = statistics.median([await drive(app, PAID_PATH, take()) for _ in range(RUNS)])
        free = statistics.median([await drive(app, FREE_PATH, [None] * n) for _ in range(RUNS)])
        bare = statistics.median([await drive(app, "/healthz", [None] * n) for _ in range(RUNS)])
        hop = statistics.median([await _thread_hop(n) for _ in range(RUNS)])
        own = statistics.median([await _own_thread_hop(n) for _ in range(RUNS)])
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002, async_mode="enabled")
        batch = take()
        profiler.start()
        await drive(app, PAID_PATH, batch)
        profiler.stop()
        parts = _parts(store, secret, n, hop)
        options = [
            Part("free request to `/healthz` (a plain response, no file)", "", bare * 1e6),
            Part("hop to one dedicated thread (`loop.run_in_executor`)", "", own * 1e6),
            *_update_options(store, secret, database, n),
        ]
        return paid * 1e6, free * 1e6, parts, options, profiler, floor

    paid, free, parts, options, profiler, floor = asyncio.run(main())
    profiler.write_html(str(OUT / "profile.html"))
    root = profiler.last_session.root_frame() if profiler.last_session else None
    top, groups, inclusive = _top_costs(root)
    return Measured(paid, free, parts, options, top, groups, inclusive, n, floor)


async def _own_thread_hop(n: int) -> float:
    """The same round trip to one dedicated thread through asyncio's own executor hook."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=1) as executor:
        started = time.perf_counter()
        for _ in range(n):
            await loop.run_in_executor(executor, _noop)
        return (time.perf_counter() - started) / n


GROUP: Final = 16
_ADVANCE_SQL: Final = (
    "UPDATE szm_cards SET spent = ?, anchor = ? "
    "WHERE card_id = ? AND spent = ? AND units >= ? AND status = 'active'"
)


def _update_options(store: Store, secret: bytes, database: Path, n: int) -> list[Part]:
    """The same compare-and-set UPDATE on the same file, committed in other ways."""
    fresh = iter(fresh_payments(store, secret, 2 * n * RUNS))
    conn = sqlite3.connect(database, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")

        def one_normal() -> float:
            started = time.perf_counter()
            for _ in range(n):
                _advance(conn, next(fresh))
            return (time.perf_counter() - started) / n

        normal = statistics.median(one_normal() for _ in range(RUNS))
        conn.execute("PRAGMA synchronous=FULL")

        def grouped() -> float:
            started = time.perf_counter()
            for _ in range(n // GROUP):
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(GROUP):
                    _advance(conn, next(fresh))
                conn.execute("COMMIT")
            return (time.perf_counter() - started) / (n // GROUP * GROUP)

        group = statistics.median(grouped() for _ in range(RUNS))
    finally:
        conn.close()
    return [
        Part("the UPDATE with `synchronous=NORMAL` (WAL: no fsync per commit)", "", normal * 1e6),
        Part(f"the UPDATE in groups of {GROUP} per commit (`synchronous=FULL`)", "", group * 1e6),
    ]


def _advance(conn: sqlite3.Connection, item: Fresh) -> None:
    cursor = conn.execute(_ADVANCE_SQL, (1, item.payment.value, item.state.card_id, 0, 1))
    if cursor.rowcount != 1:
        raise RuntimeError("the compare-and-set did not apply")


async def _thread_hop(n: int) -> float:
    """One anyio.to_thread.run_sync round trip, as each store call on the paid path pays."""
    started = time.perf_counter()
    for _ in range(n):
        await anyio.to_thread.run_sync(_noop)
    return (time.perf_counter() - started) / n


def _noop() -> None:
    return None


def fresh_payments(store: Store, secret: bytes, count: int) -> list[Fresh]:
    """First payments of new cards, each under its own challenge, with the state each
    verifies against (spent = 0)."""
    expires = int(time.time()) + 86_400
    batch_id = insert_batch(store, SzmProtocol.CHAIN, count, 2, expires)
    now = int(time.time())
    out, rows = [], []
    for _ in range(count):
        state, card = szm_chain.issue_card(
            CHAIN_MASTER, os.urandom, length=2, denomination=EUR, expires_at=expires
        )
        _, payment, _ = szm_chain.next_payment(card, 1, now=now)
        raw = szm_chain.encode_payment(payment)
        # A challenge of its own, as a wallet's: the floor takes each id once.
        line = header(challenge_id(secret, "szm:chain"), {"payment": b64url_encode(raw)})
        parsed = szm_chain.parse_payment(raw)
        out.append(Fresh(state=state, payment=payment, parsed=parsed, line=line))
        rows.append(card_row(state.card_id, batch_id, SzmProtocol.CHAIN, 2, state.anchor, expires))
    with store.transaction() as tx:
        tx.szm.insert_cards(rows)
    return out


@dataclass(frozen=True, slots=True)
class Fresh:
    state: szm_chain.ChainCardState
    payment: szm_chain.Payment
    parsed: szm_chain.Parsed  # as the vendor keeps it
    line: str


def _parts(store: Store, secret: bytes, n: int, hop: float) -> list[Part]:
    """The paid path's steps, each alone, on fresh inputs of the same shape."""
    fresh = fresh_payments(store, secret, n * RUNS)
    lines = [f.line for f in fresh]
    echo = parse_credential(lines[0]).challenge
    signer = ChallengeBinder(secret)
    cursor = {"i": 0}

    def next_item() -> Fresh:
        i = cursor["i"] = (cursor["i"] + 1) % len(fresh)
        return fresh[i]

    secrets = {f.state.card_id: szm_chain.card_secret(CHAIN_MASTER, f.state.card_id) for f in fresh}

    def verify_one() -> object:
        item = next_item()
        # The vendor's calls (paywall/methods/szm.py): advance, then the payment's key
        # under the card's kept secret.
        state = item.state
        new_state = szm_chain.advance(state, item.parsed, 1, int(time.time()), None)
        return szm_chain.payment_key(
            secrets[state.card_id], card_id=state.card_id, index=new_state.spent,
            length=state.length,
        )  # fmt: skip

    advances = iter(fresh)

    def advance_one() -> object:
        item = next(advances)
        with store.hot_batch() as hot:  # a batch of one: the commit a lone payment pays
            return hot.szm.advance(item.state.card_id, 0, 1, item.payment.value)

    receipt = Receipt(
        method="szmchain",
        timestamp=int(time.time()),
        reference="r" * 30,
        extra={"units": 1, "card": "c" * 22, "index": 7},
    )
    body, key = b"x" * len(BODY), b"k" * 32
    timings: list[tuple[str, str, Callable[[], object]]] = [
        (
            "parse the Authorization header (base64url JSON)",
            "http/payment_auth.py parse_credential",
            lambda: parse_credential(next_item().line),
        ),
        (
            "check the challenge id (HMAC)",
            "http/payment_auth.py ChallengeBinder.verify",
            lambda: signer.verify(
                echo, now=int(time.time()), realm=REALM, request_b64=echo.request
            ),
        ),
        (
            "verify the payment, derive its key (core)",
            "core/schemes/szm_chain.py advance + payment_key",
            verify_one,
        ),
        (
            "record it: one durable UPDATE (SQLite, fsync)",
            "store/_szm.py HotSzmArea.advance (a hot batch of one)",
            advance_one,
        ),
        (
            "seal the body (AES-256-GCM)",
            "core/sealing.py seal",
            lambda: seal(
                key,
                body,
                nonce=b"n" * 12,
                method="szm:chain",
                card_id=b"c" * 16,
                index=1,
                resource=PAID_PATH,
                status=200,
                content_type="text/plain",
            ),
        ),
        (
            "receipt header (JSON + base64url)",
            "http/payment_auth.py Receipt.to_header",
            receipt.to_header,
        ),
    ]
    parts = [
        Part(name, where, _median_us(functools.partial(per_call, fn, n, time.perf_counter)))
        for name, where, fn in timings
    ]
    parts.insert(
        4,
        Part(
            "one hop to a worker thread and back (per store call)",
            "anyio.to_thread.run_sync in methods/offline.py",
            hop * 1e6,
        ),
    )
    return parts


# --- the floor: the least CPU a durable, sealed, receipted paid request costs --------------


@dataclass(frozen=True, slots=True)
class Floor:
    """Process CPU per request (us, medians of RUNS interleaved rounds): the vendor's paid
    and free requests, 16 clients at once (bench/paidcpu.py's measure), and the floor's
    straight line over the same number of payments; ``commit_us``: the group commit's share
    in it (BEGIN, COMMIT and the WAL's fsync, over GROUP payments)."""

    paid_us: float
    free_us: float
    direct_us: float  # the free request without Starlette's layers, as a paid good goes
    floor_us: float
    commit_us: float
    steps_us: list[float]  # the floor's own work by step (FLOOR_STEPS), commit apart
    e2e_free_us: float | None  # this document's end-to-end free request, if it has one


async def _floor_rounds(
    vendor: VendorApps,
    store: Store,
    secret: bytes,
    database: Path,
    take: Callable[[], list[str | None]],
) -> Floor:
    app: App = vendor.app
    n = len(take())
    paid, free, direct, floor, commit = [], [], [], [], []
    for _ in range(RUNS):  # interleaved: the machine's slow moments fall on each alike
        paid.append(await concurrent_pass(app, PAID_PATH, take()))
        free.append(await concurrent_pass(app, FREE_PATH, [None] * n))
        with _without_router(vendor):
            direct.append(await concurrent_pass(app, FREE_PATH, [None] * n))
        steps, share = _floor(store, secret, database, n)
        floor.append(steps)
        commit.append(share)
    ticks = _Ticks()
    _floor(store, secret, database, n, ticks)
    own = statistics.median(floor) - statistics.median(commit)
    split = [own * spent / sum(ticks.spent) for spent in ticks.spent]
    return Floor(
        paid_us=statistics.median(paid) * 1e6,
        free_us=statistics.median(free) * 1e6,
        direct_us=statistics.median(direct) * 1e6,
        floor_us=statistics.median(floor) * 1e6,
        commit_us=statistics.median(commit) * 1e6,
        steps_us=[x * 1e6 for x in split],
        e2e_free_us=_e2e_free(),
    )


@contextmanager
def _without_router(vendor: VendorApps) -> Iterator[None]:
    """The paywall hands unpriced requests straight to the content app (the router's last
    route, its mount), not through Starlette's router and exception layers: the way a
    paid good from memory now goes (``Paywall.quick``)."""
    paywall = vendor.paywall
    router = paywall.app
    mount = getattr(router, "routes", [])[-1]
    paywall.app = mount.app
    try:
        yield
    finally:
        paywall.app = router


def _floor(
    store: Store, secret: bytes, database: Path, n: int, ticks: _Ticks | None = None
) -> tuple[float, float]:
    """Process CPU seconds per payment of :func:`_floor_one` over ``n`` first payments of
    new cards, GROUP to a commit as the loop's group commit takes them (BEGIN IMMEDIATE,
    the statements, COMMIT with ``synchronous=NORMAL``, an fsync of the WAL file); and the
    commit's share alone. ``ticks``: an instrumented pass, split by step."""
    items = fresh_payments(store, secret, n)
    # Each card's secret derived before, as the vendor keeps them (methods/szm.py).
    secrets = {i.state.card_id: szm_chain.card_secret(CHAIN_MASTER, i.state.card_id) for i in items}
    binder = ChallengeBinder(secret)
    request_b64 = parse_credential(items[0].line).challenge.request
    prepared = store._prepared  # the store's own statements, as the hot batch runs them
    use, advance = prepared.challenge_use, prepared.szm_advance
    conn = sqlite3.connect(database, isolation_level=None, timeout=10)
    wal = os.open(f"{database}-wal", os.O_RDWR)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        committing = 0.0
        started = time.process_time()
        for first in range(0, n, GROUP):
            began = time.process_time()
            conn.execute("BEGIN IMMEDIATE")
            committing += time.process_time() - began
            for item in items[first : first + GROUP]:
                if ticks is None:
                    _floor_one(item, binder, request_b64, conn, use, advance, secrets)
                else:
                    ticks.start()
                    _floor_one(item, binder, request_b64, conn, use, advance, secrets, ticks)
            began = time.process_time()
            conn.execute("COMMIT")
            os.fsync(wal)
            committing += time.process_time() - began
        spent = time.process_time() - started
    finally:
        os.close(wal)
        conn.close()
    return spent / n, committing / n


FLOOR_STEPS: Final = (
    "parse the credential (base64url, JSON, the echoed challenge)",
    "check the challenge's HMAC",
    "the core: parse the payment, verify it (a hash), derive its key (HKDF)",
    "the two statements (take the challenge id, move the card)",
    "seal the body (AES-256-GCM, the binding)",
    "the receipt (JSON, base64url)",
    "a fresh challenge (HMAC) and the answer's headers",
)


def _no_tick(step: int) -> None:
    return None


class _Ticks:
    """Process CPU per step of :func:`_floor_one`, summed (an instrumented pass: each
    tick is a clock read, which the floor's own pass does not pay)."""

    def __init__(self) -> None:
        self.spent = [0.0] * len(FLOOR_STEPS)
        self._last = time.process_time()

    def start(self) -> None:
        self._last = time.process_time()

    def __call__(self, step: int) -> None:
        now = time.process_time()
        self.spent[step] += now - self._last
        self._last = now


_SEALED: Final = b"application/vnd.farthing.sealed"
_TEXT: Final = "text/plain; charset=utf-8"


def _floor_one(
    item: Fresh,
    binder: ChallengeBinder,
    request_b64: str,
    conn: sqlite3.Connection,
    use: FastStatement,
    advance: FastStatement,
    secrets: dict[bytes, bytes],
    tick: Callable[[int], None] = _no_tick,
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """What a paid szm:chain request cannot do without, in a straight line: the
    credential parsed, its challenge's HMAC checked, the payment parsed, verified and its
    key derived (the core; the card's secret kept, as the vendor keeps it), the challenge
    id taken and the card moved (the two statements; their commit is the caller's), the
    body sealed, the receipt and the answer's headers, a fresh challenge. No paywall
    object, no ASGI layer, no metrics, sales line or retry tag; the request's own HTTP
    path is the free request's. The answer's headers and sealed body."""
    now = int(time.time())
    credential = parse_credential(item.line)
    tick(0)
    challenge = binder.verify(credential.challenge, now=now, realm=REALM, request_b64=request_b64)
    tick(1)
    raw = b64url_decode(str(credential.payload["payment"]), max_len=MAX_PAYMENT_LEN)
    parsed = szm_chain.parse_payment(raw)
    state = item.state
    moved = szm_chain.advance(state, parsed, 1, now, None)
    key = szm_chain.payment_key(
        secrets[state.card_id], card_id=state.card_id, index=moved.spent, length=state.length
    )
    tick(2)
    taken = {"key_id": challenge.raw, "expires_at": challenge.expires, "used_at": now,
             "request": None}  # fmt: skip
    if conn.execute(use.sql, use.bind(taken)).rowcount != 1:
        raise RuntimeError("the challenge id was taken")
    card = {"key_card_id": state.card_id, "old_spent": state.spent, "new_spent": moved.spent,
            "new_anchor": parsed[2], "new_request": None, "new_units": None}  # fmt: skip
    if conn.execute(advance.sql, advance.bind(card)).rowcount != 1:
        raise RuntimeError("the compare-and-set did not apply")
    tick(3)
    sealed = seal(
        key, BODY, nonce=os.urandom(12), method="szm:chain", card_id=state.card_id,
        index=moved.spent, resource=PAID_PATH, status=200, content_type=_TEXT,
    )  # fmt: skip
    tick(4)
    card_text = b64url_encode(state.card_id)
    receipt = encode_json_b64(
        {"units": 1, "card": card_text, "index": moved.spent,
         "sealed": {"alg": SEAL_ALG, "contentType": _TEXT}, "status": "success",
         "method": "szmchain", "timestamp": format_rfc3339(now),
         "reference": f"{card_text}:{moved.spent}"}
    )  # fmt: skip
    tick(5)
    fresh = binder.challenge_header(
        realm=REALM, method="szmchain", request_b64=request_b64, expires=now + 300,
        nonce=os.urandom(16),
    )  # fmt: skip
    headers = [
        (b"content-type", _SEALED),
        (b"content-length", str(len(sealed)).encode()),
        (b"payment-receipt", receipt.encode()),
        (b"cache-control", b"private"),
        (b"www-authenticate", fresh.encode()),
    ]
    tick(6)
    return headers, sealed


_E2E_FREE: Final = re.compile(r"^\| SQLite \| 1 \| free \|[^|]*\| - \| ([0-9,]+) \|", re.M)


def _e2e_free() -> float | None:
    """The server CPU of a free request end to end (one worker, SQLite), from this
    document's end-to-end section (``make bench`` writes it before this one)."""
    try:
        found = _E2E_FREE.search(DOC.read_text())
    except OSError:
        return None
    return float(found.group(1).replace(",", "")) if found else None


# --- reading the profile ---------------------------------------------------------------------


def _label(frame: Frame) -> str:
    """``file:function``; pyinstrument's synthetic [self] time goes to the function that
    owns it, and [await] time is named after the call that awaited."""
    if frame.is_synthetic:
        owner = _label(frame.parent) if frame.parent is not None else "?"
        return owner if frame.function == "[self]" else f"{frame.function} in {owner}"
    return f"{_short(frame.file_path)}:{frame.function}"


def _walk(frame: Frame, out: dict[str, float]) -> None:
    for child in frame.children:
        _walk(child, out)
    self_time = frame.time - sum(c.time for c in frame.children)
    if self_time > 0:
        out[_label(frame)] += self_time


def _short(path: str | None) -> str:
    if not path:
        return "?"
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _group(label: str) -> str:
    if label.startswith("[await]"):
        return "awaiting: worker threads (store calls, file stat/read), the event loop"
    for prefix, name in (
        ("farthing/core", "farthing.core (scheme, sealing, encoding)"),
        ("farthing/http", "farthing.http (credential, challenge, receipt)"),
        ("farthing/paywall", "farthing.paywall (paywall, adapter, books, metrics)"),
        ("farthing/store", "farthing.store (fast lane)"),
        ("starlette", "starlette (routing, StaticFiles, FileResponse)"),
        ("anyio", "anyio (thread hops, file I/O)"),
        ("prometheus_client", "prometheus_client (metrics)"),
        ("asyncio", "asyncio (event loop)"),
        ("sqlite3", "sqlite3"),
        ("json", "json"),
    ):
        if label.startswith(prefix):
            return name
    return "other: " + label.split("/", 1)[0].split(":", 1)[0]


INCLUSIVE: Final = (
    ("settling the payment: all of the paywall's step", "Paywall._settle_or_answer", None),
    ("- the payment's write, awaited (its hot batch; the commit runs apart on the loop)",
     "StoreWriter.run_hot", "OfflineMethod.settle"),
    ("- verify + derive the payment key (core)", "SzmScheme.verify", None),
    ("- check the challenge id (HMAC)", "ChallengeBinder.verify", None),
    ("- parse the credential", "parse_credential", None),
    ("- metrics (Prometheus histogram)", "PaywallMetrics.observe", None),
    ("the group commit on the loop (BEGIN, the statements, COMMIT)",
     "StoreWriter._commit_on_loop", None),
    ("a fresh challenge for the paid answer", "Paywall._fresh", None),
    ("serving the good from memory, paid (`GoodsApp.quick`, no Starlette layer)",
     "GoodsApp.quick", None),
    ("Starlette's router and exception layers (what a paid good no longer goes through)",
     "Starlette.__call__", None),
    ("sealing the body and the receipt (_PaidSender)", "_PaidSender.__call__", None),
)  # fmt: skip


def _name(frame: Frame) -> str:
    return f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function


def _inclusive(frame: Frame, name: str, under: str | None, seen: bool) -> float:
    """Time in frames called ``name`` (outermost only), if below a frame called ``under``."""
    if _name(frame) == name and (under is None or seen):
        return frame.time
    seen = seen or (under is not None and _name(frame) == under)
    return sum(_inclusive(child, name, under, seen) for child in frame.children)


def _top_costs(
    root: Frame | None,
) -> tuple[list[tuple[str, float]], list[tuple[str, float]], list[tuple[str, float]]]:
    if root is None or root.time <= 0:
        return [], [], []
    selfs: dict[str, float] = defaultdict(float)
    _walk(root, selfs)
    total = sum(selfs.values())
    own = [(k, v / total) for k, v in selfs.items() if not k.startswith("[await]")]
    top = sorted(own, key=lambda kv: -kv[1])[:12]
    groups: dict[str, float] = defaultdict(float)
    for label, value in selfs.items():
        groups[_group(label)] += value / total
    small = sum(v for v in groups.values() if v < 0.01)
    grouped = sorted(((k, v) for k, v in groups.items() if v >= 0.01), key=lambda kv: -kv[1])
    grouped.append(("everything else (each < 1%)", small))
    inclusive = [
        (label, _inclusive(root, name, under, False) / root.time)
        for label, name, under in INCLUSIVE
    ]
    return top, grouped, inclusive


# --- rendering -------------------------------------------------------------------------------


def render(m: Measured) -> str:
    lines = [
        machine_line(),
        "",
        f"The vendor app as a uvicorn worker builds it (`app_from_config`, SQLite store), "
        f"called in-process (no sockets, no HTTP parsing) with pre-generated `szm:chain` "
        f"payments on {CARDS} cards whose states are cached; medians of {RUNS} passes of "
        f"{m.iterations:,} requests, one at a time. Single-threaded event loop, as in the "
        "server: on SQLite the loop commits a cached card's update itself (docs/storage.md, "
        "group commit) and a thread fsyncs the WAL file before the answer, so one request at "
        "a time still waits for a whole fsync (others are served meanwhile).",
        "",
        "| in-process request | us per request |",
        "|---|---:|",
        f"| paid (`{PAID_PATH}`, szm:chain) | {m.paid_us:,.0f} |",
        f"| free (`{FREE_PATH}`, same file, unpriced) | {m.free_us:,.0f} |",
        f"| paid - free: what the paywall adds | {m.paid_us - m.free_us:,.0f} |",
        "",
        *_floor_text(m.floor),
        "",
        "The paid path's steps, each timed alone in the same run (medians), against the paid "
        "request above:",
        "",
        "| step | where | us | share of the paid request |",
        "|---|---|---:|---:|",
    ]
    for part in m.parts:
        lines.append(
            f"| {part.name} | `{part.where}` | {part.micros:,.1f} | {part.micros / m.paid_us:.0%} |"
        )
    lines += [
        "",
        "Other ways to do the two costliest steps, measured in the same run:",
        "",
        "| alternative | us |",
        "|---|---:|",
        *(f"| {o.name} | {o.micros:,.1f} |" for o in m.options),
        "",
        *_suggestions(m),
        "",
        "pyinstrument (0.2 ms sampling, async mode) over one more pass of paid requests. "
        "First the time under the paywall's main steps (inclusive, as a share of the whole "
        "run, event loop included; the file is streamed by its own task, so the content "
        "rows are not under the settling rows):",
        "",
        "| step (inclusive time) | share of the run |",
        "|---|---:|",
        *(f"| {label} | {share:.0%} |" for label, share in m.inclusive),
        "",
        "Self time, grouped by where it is spent, and the functions with the most of it "
        "(`[await]`: waiting for a worker thread or the event loop; full tree in "
        "`bench/out/profile.html`, not committed):",
        "",
        "| spent in (self time) | share |",
        "|---|---:|",
        *(f"| {name} | {share:.0%} |" for name, share in m.groups),
        "",
        "| function (self time, excluding waits) | share |",
        "|---|---:|",
        *(f"| `{label}` | {share:.1%} |" for label, share in m.top),
    ]
    return "\n".join(lines)


GOAL: Final = 0.6


def _floor_text(f: Floor) -> list[str]:
    """The floor's table, and whether paid/free >= GOAL is reachable in this design."""
    # A paid good skips Starlette's layers, which a free request still goes through: the
    # floor of a paid request is the free request without them, plus the paid steps.
    router = max(f.free_us - f.direct_us, 0.0)
    floor_paid = f.free_us - router + f.floor_us
    inproc = f.free_us / floor_paid
    allowed = f.free_us / GOAL - (f.free_us - router)
    lines = [
        f"**The floor.** The least CPU a durable, sealed, receipted paid request costs in "
        f"CPython with our own primitives and statements: `_floor_one` in `bench/profile.py` "
        "does only what a paid `szm:chain` request cannot do without, in a straight line: "
        "parse the credential, check its challenge's HMAC, parse, verify and key the "
        "payment (the core), take the challenge id and move the card (the store's two "
        f"statements on SQLite, their SQL and parameter order, {GROUP} payments to a "
        "commit with `synchronous=NORMAL` and an fsync of the WAL file, as the loop's group "
        "commit does), seal the body, make the receipt and the answer's headers and a fresh "
        "challenge. No paywall object, no ASGI layer, no metrics, sales line or retry tag. "
        "A paid request also does what a free one does (the server's HTTP work, the access "
        "log layer, the paywall's path and price checks, the good from memory) except "
        "Starlette's router and exception layers, which a paid good from memory skips "
        "(`Paywall.quick`), so the floor of a paid request is the free request without "
        "those layers plus these steps. Process CPU "
        f"(user + system) per request, the vendor's passes with {CONCURRENT} clients at "
        f"once, medians of {RUNS} interleaved rounds (the floor's steps: its own work split in "
        "the proportions of one more, instrumented, pass):",
        "",
        "| | CPU per request (us) |",
        "|---|---:|",
        f"| paid, the vendor as served (`{PAID_PATH}`, szm:chain) | {f.paid_us:,.0f} |",
        f"| free, the vendor as served (`{FREE_PATH}`) | {f.free_us:,.0f} |",
        f"| free, without Starlette's router and exception layers (as a paid good goes) | "
        f"{f.direct_us:,.0f} |",
        f"| the paid steps alone, in a straight line (the floor's own work) | {f.floor_us:,.0f} |",
        *(f"| - {name} | {us:,.1f} |" for name, us in zip(FLOOR_STEPS, f.steps_us, strict=True)),
        f"| - the group commit's share (BEGIN, COMMIT, the WAL's fsync, over "
        f"{GROUP}) | {f.commit_us:,.1f} |",
        f"| the floor of a paid request: free without those layers + the paid steps | "
        f"{floor_paid:,.0f} |",
        f"| what the vendor spends above that floor | {f.paid_us - floor_paid:,.0f} |",
        "",
        f"paid/free >= {GOAL} means a paid request costs at most free/{GOAL} of CPU, so its "
        f"paid steps may cost at most free/{GOAL} less the free path a paid request takes. "
        f"In-process a free request costs {f.free_us:,.0f} us: the paid steps would have to "
        f"fit in {allowed:,.0f} us, and the floor's alone take {f.floor_us:,.0f} us "
        f"(paid/free at the floor: {inproc:.2f}).",
    ]
    e2e = f.e2e_free_us
    room, where = allowed, " in-process"
    if e2e is None:
        reachable = inproc >= GOAL
        lines[-1] += (
            " End to end both also pay the server's HTTP work; this document has no "
            "end-to-end free request to add it with."
        )
    else:
        at_floor = e2e / (e2e - router + f.floor_us)
        reachable = at_floor >= GOAL
        room, where = e2e / GOAL - (e2e - router), " end to end"
        lines[-1] += (
            f" End to end a free request costs the server {e2e:,.0f} us (the end-to-end "
            f"section above, HTTP included, which a paid request pays alike): the paid "
            f"steps would have to fit in {e2e / GOAL - (e2e - router):,.0f} us, and at the floor "
            f"paid/free would be {at_floor:,.2f}."
        )
    lines.append("")
    lines.append(
        f"**So paid/free >= {GOAL} is {'reachable' if reachable else 'not reachable'} in "
        "this design**"
        + (
            ": the floor leaves room, and what is above it is the vendor's own overhead."
            if reachable
            else (
                ", even with every layer, object and feature around the paid steps "
                "removed: the steps themselves (the parsing, two HMACs, the core's hash and "
                "HKDF, two statements, AES-GCM, the receipt's JSON, each a C call wrapped "
                f"in Python) cost {f.floor_us:,.0f} us, more than the {room:,.0f} us that "
                f"paid/free >= {GOAL} leaves them{where}. Reaching it needs a paid path in "
                "one compiled step (parse, verify, seal and answer outside the "
                "interpreter), or a free request that costs more."
            )
        )
    )
    return lines


def _find(parts: list[Part], prefix: str) -> float:
    return next(p.micros for p in parts if p.name.startswith(prefix))


def _suggestions(m: Measured) -> list[str]:
    """The top costs, named by file and function, with what could be done (measured)."""
    update, hop = _find(m.parts, "record it"), _find(m.parts, "one hop")
    normal, grouped = _find(m.options, "the UPDATE with"), _find(m.options, "the UPDATE in")
    own, bare = _find(m.options, "hop to one"), _find(m.options, "free request")
    own_work = sum(p.micros for p in m.parts if not p.name.startswith(("record", "one hop")))
    fl = m.floor
    above = fl.paid_us - (fl.direct_us + fl.floor_us)
    ranked = sorted(zip(FLOOR_STEPS, fl.steps_us, strict=True), key=lambda kv: -kv[1])
    free = fl.free_us if fl.e2e_free_us is None else fl.e2e_free_us
    router = max(fl.free_us - fl.direct_us, 0.0)
    best = free / (free - router + fl.floor_us)  # paid/free at the floor, end to end if known
    top_steps = ", ".join(f"{name} {us:,.0f} us" for name, us in ranked[:3])
    return [
        "**Top costs, what was done, and what is left:**",
        "",
        f"1. The durable commit. One UPDATE committed alone (a hot batch of one, SQLite WAL, "
        f"`synchronous=FULL`) costs {update:,.0f} us, {update / m.paid_us:.0%} of this "
        f"(one request at a time) paid request, nearly all of it the fsync; {grouped:,.0f} us "
        f"each when {GROUP} share a commit, {normal:,.0f} us with `synchronous=NORMAL`. Done: "
        "the vendor group-commits (`src/farthing/store/writer.py` `StoreWriter`): the "
        "updates that arrive together share one commit on a fast-lane connection "
        "(`Store.hot_batch`), and every payment is still durable before its response. On "
        "SQLite the loop's commit runs with `synchronous=NORMAL` and the WAL file is fsynced "
        "on a thread before the batch is answered (the same durability as FULL, "
        "docs/storage.md): the loop no longer waits for the disk, the payment still does.",
        f"2. Thread round trips: {hop:,.0f} us through anyio, {own:,.0f} us to a dedicated "
        "thread, and under load worse than that: the loop and the thread contend for the "
        "GIL at every system call. Done: on SQLite the event loop commits itself when the "
        "write lock is free, so a cached card's payment leaves the loop not at all (an "
        "uncached card once, and its reads run on the loop too); on PostgreSQL a batch of 4 "
        "or more payments is sent from the loop in pipeline mode (docs/storage.md), smaller "
        "ones and the reads still hop to a thread. Left: PostgreSQL's reads without the hop.",
        f"3. Serving the file. Done: small goods are answered from memory, looked at once "
        f"a second (`src/farthing/paywall/goods.py`): a free request costs "
        f"{m.free_us:,.0f} us, against {bare:,.0f} us for `/healthz`. Done this session: a "
        "paid plain GET of a good kept in memory is answered by `GoodsApp.quick` straight "
        "from the paywall (`Paywall.quick`, through the sales log's `SalesRecorder.quick`), "
        "not through Starlette's router, its two exception middlewares, the mount and a "
        "`Response` per request; ranges, conditional requests, HEAD, goods not in memory "
        "and paths an earlier route takes still go the long way "
        "(tests/paywall/test_quick_answer.py: the same messages either way). What it saves "
        "per paid request is measured in the next section (*the quick answer*).",
        f"4. What the paywall computes itself (parsing, the challenge HMAC, the core's "
        f"verification and key, sealing, the receipt) adds up to {own_work:,.0f} us "
        "timed alone, one call at a time; under load, where payments share commits, it is "
        "most of the CPU per paid request.",
        f"5. The floor (above): the paid steps alone, in a straight line, take "
        f"{fl.floor_us:,.0f} us of CPU per request, the largest "
        f"{top_steps}; the vendor as served spends {above:,.0f} us per paid request above "
        f"that floor: its objects and layers (the settlement, the payment context, "
        "the sender that seals, the writer's batching and futures), the retry tag, the "
        "in-flight set, the metrics and the sales line, each a few us (the next section "
        "switches the features off one by one). Removing all of that would leave "
        f"paid/free at {fl.free_us / (fl.direct_us + fl.floor_us):.2f} in-process"
        + (f" and {best:.2f} end to end" if fl.e2e_free_us is not None else "")
        + (
            f": {GOAL} is out of reach of this design in CPython."
            if best < GOAL
            else f": {GOAL} is within reach once the vendor's overhead above the floor goes."
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    text = render(measure(args.quick)) + "\n\n" + paidcpu.render(paidcpu.measure(args.quick))
    print(text)
    write_section("profile", "Profile: where the time of a paid request goes", text)


if __name__ == "__main__":
    main()
