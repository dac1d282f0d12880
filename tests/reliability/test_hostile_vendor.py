"""Hostile ``Authorization`` headers against the vendor, in process (httpx.ASGITransport).

The vendor runs every method (szm:chain, szm:prbg, hll:mac online against the in-process
issuer, payword) on a real SQLite store. Headers are random bytes and text, oversized,
truncated, non-canonical base64url, JSON of the wrong shape and types, duplicate members,
unicode, two ``Authorization`` headers at once, and credentials built from real challenge
ids and real payments with one to three edits. What must hold: never a 200 (nothing valid
was sent), never a 500, never a hang; every answer is a problem with the right status for
its code, 401 and 402 carry fresh challenges; no article text leaks; no card, commitment
or HLL card was charged; the metrics' labels stay within the fixed set.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from farthing.core.encoding import b64url_encode
from farthing.http.methods import METHOD_OF
from farthing.http.payment_auth import Challenge, parse_challenges
from farthing.paywall.middleware import Paywall
from tests.reliability.problems import assert_problem
from tests.reliability.samples import RAW_JSON, json_values, mutated_bytes, mutated_text
from tests.reliability.world import (
    ARTICLES,
    ChainHolder,
    HllHolder,
    PaywordHolder,
    PrbgHolder,
    World,
    authorization,
    build_world,
    challenge_ids,
    hll_offer,
)

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
METHODS = ["szm:chain", "szm:prbg", "hll:mac", "payword"]
PATHS = [
    "/articles/a.txt",
    "/articles/missing.txt",
    "/articles/%C3%A9",
    "/articles/%01",
    "/articles/" + "x" * 3000,
]
MISSING = {PATHS[1], PATHS[4]}  # the others are files (made by the fixture)
NOT_CANONICAL = {PATHS[3]}  # a control character: not a path (farthing.http.paths), a 404
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass
class Target:
    world: World
    app: Paywall
    cids: dict[str, Challenge]
    payments: dict[str, bytes]
    commitment: bytes
    valid_headers: tuple[str, ...]
    chain: ChainHolder
    prbg: PrbgHolder
    payword: PaywordHolder
    hll: HllHolder


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("hostile-vendor")
    world = build_world(folder, str(folder / "farthing.sqlite"))
    for name in ("\u00e9", "\x01"):
        (folder / "goods" / "articles" / name).write_text("for sale")
    app = world.vendor_app()
    unpaid = asyncio.run(get(app, PATHS[0], []))
    found = challenge_ids(unpaid.headers.get_list("www-authenticate"))
    cids = {method: cid for method, (cid, _) in found.items()}
    now = world.clock.now()
    chain, prbg = world.chain_cards(1)[0], world.prbg_cards(1)[0]
    payword, hll = world.commitments(1)[0], world.hll_cards(1)[0]
    offer = hll_offer(cids["hll:mac"], found["hll:mac"][1], good=PATHS[0])
    payments = {
        "szm:chain": chain.at(2, now)[0],
        "szm:prbg": prbg.at(2, now)[0],
        "payword": payword.at(2, now),
        "hll:mac": hll.pay(offer, 1),
    }
    valid = tuple(
        authorization(
            cids[m], m, payments[m], **({"commitment": payword.encoded} if m == "payword" else {})
        )
        for m in METHODS
    )
    yield Target(world, app, cids, payments, payword.encoded, valid, chain, prbg, payword, hll)
    world.close()


async def get(app: Paywall, path: str, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as client:
        return await asyncio.wait_for(client.get(path, headers=headers), timeout=20)


def b64(data: bytes) -> str:
    return b64url_encode(data)


def flipped(data: bytes, tail: int | None = None) -> st.SearchStrategy[bytes]:
    """``data`` with one bit flipped (in its last ``tail`` bytes): the structure survives,
    the cryptography must not."""
    first = 0 if tail is None else 8 * (len(data) - tail)
    return st.integers(first, 8 * len(data) - 1).map(
        lambda bit: bytes(b ^ (1 << (bit % 8)) if i == bit // 8 else b for i, b in enumerate(data))
    )


HOSTILE = json_values | st.sampled_from(["", "A" * 5000, "é", "szm:chain ", "SZM:CHAIN"])


@st.composite
def credential_json(draw: st.DrawFn, target: Target) -> bytes:
    """A credential whose skeleton is right (the method's challenge id, method, payment)
    with a damaged payment, or one damaged member of the skeleton."""
    method = draw(st.sampled_from(METHODS))
    payment = draw(
        st.one_of(
            flipped(target.payments[method]),
            flipped(target.payments[method], tail=56),
            mutated_bytes((target.payments[method],)),
            mutated_bytes(tuple(target.payments.values())),
            st.binary(max_size=200),
        )
    )
    payload: dict[str, object] = {"payment": b64(payment)}
    if method == "payword":
        payload["commitment"] = b64(
            draw(st.just(target.commitment) | mutated_bytes((target.commitment,)))
        )
    echo = target.cids[method].echo().to_json()
    obj: dict[str, object] = {"challenge": echo, "payload": payload}
    damage = draw(st.sampled_from(["none", "none", "none", "member", "extra", "repeat", "id"]))
    if damage == "member":
        where = draw(st.sampled_from([obj, payload, echo]))
        where[draw(st.sampled_from(sorted(where)))] = draw(HOSTILE)
    elif damage == "extra":
        payload[draw(st.text(max_size=8))] = draw(HOSTILE)
    elif damage == "id":
        other = draw(st.sampled_from(sorted(target.cids)))
        obj["challenge"] = target.cids[other].echo().to_json()
    text = json.dumps(obj)
    if damage == "repeat":
        text = text[:-1] + ', "challenge": {}}'
    return b"Payment " + b64url_encode(text.encode()).encode()


def garbage_for(target: Target) -> st.SearchStrategy[bytes]:
    """Headers broken at the HTTP and JSON level, before any payment is looked at."""
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.text(alphabet=B64URL + "=+/", max_size=400).map(lambda t: b"Payment " + t.encode()),
        RAW_JSON.map(lambda t: b"Payment " + b64(t.encode("utf-8", "surrogatepass")).encode()),
        json_values.map(lambda v: b"Payment " + b64(json.dumps(v).encode()).encode()),
        mutated_text(target.valid_headers, header=True).map(
            lambda t: t.encode("utf-8", "surrogatepass")
        ),
        st.sampled_from(target.valid_headers).map(lambda h: (h + "A" * 9000).encode()),
        st.sampled_from(target.valid_headers).map(lambda h: h.encode()[: len(h) // 2]),
    )


def charged(target: Target) -> list[str]:
    store, services = target.world.store, target.world.services
    found = []
    for holder in (target.chain, target.prbg):
        row = store.szm_card(holder.card.card_id)
        if row is None or row.spent:
            found.append(holder.key)
    row = store.payword_commitment(target.payword.commitment_id)
    if row is not None and row.spent:
        found.append(target.payword.key)
    if services.hll.card(target.hll.card_id).spent_units:
        found.append(target.hll.key)
    return found


def check(target: Target, header: bytes, data: st.DataObject) -> None:
    headers = [(b"authorization", header)]
    if data.draw(st.integers(0, 9), label="twice") == 0:  # the valid one second
        headers.append(
            (b"authorization", data.draw(st.sampled_from(target.valid_headers)).encode())
        )
    path = data.draw(st.sampled_from(PATHS), label="path")

    response = asyncio.run(get(target.app, path, headers))

    if path in MISSING | NOT_CANONICAL:  # nothing to sell: a 404, payment untouched
        assert response.status_code == 404
        assert "www-authenticate" not in response.headers
        assert charged(target) == []
        return
    code = assert_problem(response, families={400, 401, 402})
    event(f"{response.status_code} {code} {response.json()['detail']}")
    if response.status_code in (401, 402):
        assert parse_challenges(response.headers.get_list("www-authenticate"))
    assert not any(text.encode() in response.content for text in ARTICLES.values())
    assert charged(target) == []


@EXAMPLES
@given(data=st.data())
def test_garbage_headers_are_refused_cleanly(target: Target, data: st.DataObject) -> None:
    check(target, data.draw(garbage_for(target), label="authorization"), data)


# Python's str.strip() also strips these (Unicode whitespace and the C0 separators); HTTP's
# OWS is only space and tab, so a credential wrapped in one of them is not a credential.
# Found by Hypothesis as ``b"\x1fPayment <valid credential>"``, which was accepted and charged.
NOT_OWS = ["\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\x0b", "\x0c"]


@pytest.mark.parametrize("where", ["before", "after", "inside"])
@pytest.mark.parametrize("junk", NOT_OWS, ids=[f"{ord(c):02x}" for c in NOT_OWS])
def test_garbage_headers_are_refused_cleanly_unicode_space(
    target: Target, junk: str, where: str
) -> None:
    """The explicit example of test_garbage_headers_are_refused_cleanly, around each valid
    credential of every method: refused, nothing charged."""
    for valid in target.valid_headers:
        scheme, _, token = valid.partition(" ")
        header = {
            "before": junk + valid,
            "after": valid + junk,
            "inside": f"{scheme} {junk}{token}",
        }[where]
        response = asyncio.run(
            get(target.app, PATHS[0], [(b"authorization", header.encode("latin-1"))])
        )
        assert response.status_code in (400, 402), (header[:20], response.status_code)
        assert_problem(response, families={400, 402})
        assert not any(text.encode() in response.content for text in ARTICLES.values())
        assert charged(target) == []


@EXAMPLES
@given(data=st.data())
def test_damaged_credentials_are_refused_cleanly(target: Target, data: st.DataObject) -> None:
    check(target, data.draw(credential_json(target), label="authorization"), data)


def test_metrics_labels_stay_within_the_fixed_set(target: Target) -> None:
    assert target.app.metrics is not None  # the admin listener serves this text
    text = target.app.metrics.render().decode()
    methods = set(re.findall(r'method="([^"]*)"', text))
    assert methods <= {*METHOD_OF.values(), "unknown"}
    outcomes = set(re.findall(r'outcome="([^"]*)"', text))
    assert all(re.fullmatch(r"[a-z_]+", outcome) for outcome in outcomes)
    assert charged(target) == []
