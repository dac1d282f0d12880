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
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio.to_thread
from pyinstrument import Profiler
from pyinstrument.frame import Frame

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
from bench.inproc import App, drive, per_call, sqlite_rig
from bench.report import machine_line, write_section
from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.core.sealing import seal
from farthing.http.payment_auth import ChallengeBinder, Receipt, parse_credential
from farthing.paywall.config import load_vendor_config
from farthing.paywall.serve import app_from_config
from farthing.store import Store, SzmProtocol

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


def _median_us(fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(RUNS)) * 1e6


def measure(quick: bool) -> Measured:
    n = 800 if quick else 4000
    OUT.mkdir(exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="profile-", dir=OUT) as tmp,
        sqlite_rig(Path(tmp)) as rig,
    ):
        app: App = app_from_config(load_vendor_config(rig.folder.config))  # a worker's
        pool = rig.chain_pool((2 * RUNS + 2) * n, CARDS)
        secret, database = rig.folder.challenge_secret, Path(rig.folder.database)
        return _measure(app, rig.store, secret, pool, n, database)


def _measure(
    app: App, store: Store, secret: bytes, pool: list[str], n: int, database: Path
) -> Measured:
    lines = iter(pool)

    def take() -> list[str | None]:
        return [next(lines) for _ in range(n)]

    async def main() -> tuple[float, float, list[Part], list[Part], Profiler]:
        await drive(app, PAID_PATH, take())  # warm: every card's state is now cached
        paid = statistics.median([await drive(app, PAID_PATH, take()) for _ in range(RUNS)])
        free = statistics.median([await drive(app, FREE_PATH, [None] * n) for _ in range(RUNS)])
        bare = statistics.median([await drive(app, "/healthz", [None] * n) for _ in range(RUNS)])
        hop = statistics.median([await _thread_hop(n) for _ in range(RUNS)])
        own = statistics.median([await _own_thread_hop(n) for _ in range(RUNS)])
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
        return paid * 1e6, free * 1e6, parts, options, profiler

    paid, free, parts, options, profiler = asyncio.run(main())
    profiler.write_html(str(OUT / "profile.html"))
    root = profiler.last_session.root_frame() if profiler.last_session else None
    top, groups, inclusive = _top_costs(root)
    return Measured(paid, free, parts, options, top, groups, inclusive, n)


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
    """First payments of new cards, with the state each verifies against (spent = 0)."""
    expires = int(time.time()) + 86_400
    batch_id = insert_batch(store, SzmProtocol.CHAIN, count, 2, expires)
    challenge, now = challenge_id(secret, "szm:chain"), int(time.time())
    out, rows = [], []
    for _ in range(count):
        state, card = szm_chain.issue_card(
            CHAIN_MASTER, os.urandom, length=2, denomination=EUR, expires_at=expires
        )
        _, payment, _ = szm_chain.next_payment(card, 1, now=now)
        raw = szm_chain.encode_payment(payment)
        line = header(challenge, {"payment": b64url_encode(raw)})
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

    def verify_one() -> object:
        item = next_item()
        # The vendor's calls (paywall/methods/szm.py): advance, then the payment's key.
        new_state = szm_chain.advance(item.state, item.parsed, 1, int(time.time()), None)
        return szm_chain.issuer_payment_key(CHAIN_MASTER, item.state, new_state.spent)

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
            "core/schemes/szm_chain.py advance + issuer_payment_key",
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
    ("- the store's UPDATE, awaited on a worker thread", "run_sync", "OfflineMethod.settle"),
    ("- verify + derive the payment key (core)", "SzmScheme.verify", None),
    ("- check the challenge id (HMAC)", "ChallengeBinder.verify", None),
    ("- parse the credential", "parse_credential", None),
    ("- metrics (Prometheus histogram)", "PaywallMetrics.observe", None),
    ("serving the file: StaticFiles (stat, headers; same as free)", "StaticFiles.__call__", None),
    ("serving the file: FileResponse (open, read, send; same as free)",
     "FileResponse.__call__", None),
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


def _find(parts: list[Part], prefix: str) -> float:
    return next(p.micros for p in parts if p.name.startswith(prefix))


def _suggestions(m: Measured) -> list[str]:
    """The top costs, named by file and function, with what could be done (measured)."""
    update, hop = _find(m.parts, "record it"), _find(m.parts, "one hop")
    normal, grouped = _find(m.options, "the UPDATE with"), _find(m.options, "the UPDATE in")
    own, bare = _find(m.options, "hop to one"), _find(m.options, "free request")
    own_work = sum(p.micros for p in m.parts if not p.name.startswith(("record", "one hop")))
    files = sum(share for label, share in m.inclusive if label.startswith("serving the file"))
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
        f"{m.free_us:,.0f} us, against {bare:,.0f} us for `/healthz` ({files:.0%} of the "
        "profiled run is file serving).",
        f"4. What the paywall computes itself (parsing, the challenge HMAC, the core's "
        f"verification and key, sealing, the receipt) adds up to {own_work:,.0f} us, "
        f"{own_work / m.paid_us:.0%} of this one-at-a-time request, alone; under load, "
        "where payments share commits, it is most of the CPU per paid request, and the "
        "features around it (fresh challenge, single-use id, sales log, metrics, access "
        "log) each cost a part: the next section measures them.",
        "5. No single part is large any more: under load (16 clients, the next section) a "
        "paid request's CPU is spread over some twenty steps of 2 to 30 us each, all of them "
        "Python around C calls (one durable commit shared by ~16 payments; per payment its "
        "two statements, the credential's base64url and JSON, two HMACs, the core's hash and "
        "HKDF, AES-GCM, the receipt's JSON, the fresh challenge, a sales line, metrics), "
        "besides a free request's own path, which a paid one also takes (the same goods "
        "from memory). Done: the credential's JSON read by one kept decoder, base64url's "
        "canonical check without re-encoding, the sealed answer's headers in one pass and "
        "its receipt without an intermediate object, the sales line by orjson.",
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
