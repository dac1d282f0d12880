"""Hostile requests to every route of the issuer API, in process (httpx.ASGITransport).

Routes are read from the app's OpenAPI document, request bodies are built from their
schemas: plausible members (so some requests get past validation into the services) mixed
with wrong types, out-of-range numbers, huge and unicode strings, missing and unknown
members; and raw bodies that are not JSON, not UTF-8, or repeat a member. Path parameters
are hostile too, and every request goes once with the operator's token and once without.

What must hold: never a 500 and never a hang (each request has a timeout); every error is
an RFC 9457 problem whose status matches its farthing ``code``; input is never echoed; a
request without a token changes nothing in the books.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from farthing.core.encoding import b64url_encode
from tests.reliability.problems import assert_problem
from tests.reliability.samples import RAW_JSON, json_values
from tests.reliability.world import World

EXAMPLES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MARKER = "zz-echo-<b>me</b>"
PUBLIC = {
    ("POST", "/v1/hll/verify"),
    ("POST", "/v1/hll/verify-batch"),
    ("POST", "/v1/hll/deposits"),
    ("POST", "/v1/hll/deposits/lookup"),
    ("POST", "/v1/payword/commitments"),
    ("POST", "/v1/payword/commitments/batch"),
    ("POST", "/v1/payword/redemptions"),
    ("GET", "/v1/payword/broker"),
    ("POST", "/v1/szm/cards/{card_id}/status"),
    ("POST", "/v1/szm/cards/lookup"),
}
# Plausible values stay small where the service does work per unit (hashing a card chain).
SMALL = {"count": 3, "units": 60, "credit_limit_units": 10_000}
KNOWN = {"currency": "EUR", "customer_id": "alice", "merchant_id": "shop", "unit_micros": 1000}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from tests.reliability.world import build_world

    folder = tmp_path_factory.mktemp("hostile-issuer")
    world = build_world(folder, str(folder / "farthing.sqlite"))
    yield world
    world.close()


@pytest.fixture(scope="module")
def app(world: World) -> FastAPI:
    return world.issuer_app()


def routes(app: FastAPI) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, operations in app.openapi()["paths"].items():
        for verb, operation in operations.items():
            found.append((verb.upper(), path, operation))
    return found


def schema_of(app: FastAPI, operation: dict[str, Any]) -> dict[str, Any] | None:
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is None:
        return None
    name = body["schema"]["$ref"].rsplit("/", 1)[1]
    schema: dict[str, Any] = app.openapi()["components"]["schemas"][name]
    return schema


hostile_values = st.one_of(
    json_values,
    st.sampled_from(
        [MARKER, "", "A" * 5000, "é" * 70, "\x00", "../../etc", -1, 0, 2**63, 2**64, 1.5, True]
    ),
)


def plausible(name: str, prop: dict[str, Any]) -> st.SearchStrategy[Any]:
    options = prop.get("anyOf", [prop])
    kinds: list[st.SearchStrategy[Any]] = [st.just(KNOWN[name])] * 3 if name in KNOWN else []
    for option in options:
        if "enum" in option:
            kinds.append(st.sampled_from(option["enum"]))
        elif option.get("type") == "integer":
            low = int(option.get("minimum", -(2**63)))
            high = min(int(option.get("maximum", 2**63)), SMALL.get(name, 2**63))
            kinds.append(st.integers(low, max(low, high)))
        elif option.get("type") == "string":
            kinds.append(_string(option))
        elif option.get("type") == "null":
            kinds.append(st.none())
    return st.one_of(kinds) if kinds else hostile_values


def _string(option: dict[str, Any]) -> st.SearchStrategy[str]:
    pattern = option.get("pattern", "")
    if pattern == r"^[A-Za-z0-9_-]*$":
        return st.binary(max_size=80).map(b64url_encode)
    if pattern:  # \Z: Python's $ also matches before a final newline, pydantic's does not
        exact = "\\A" + pattern.removeprefix("^").removesuffix("$") + "\\Z"
        return st.from_regex(exact).filter(lambda s: len(s) < 70)
    return st.text(max_size=30)


@st.composite
def bodies(draw: st.DrawFn, schema: dict[str, Any] | None) -> dict[str, Any]:
    """How the request's body is sent: ``json`` (a value) or ``content`` (raw bytes)."""
    kind = draw(st.sampled_from(["shaped"] * 6 + ["json", "raw"]))
    if kind == "raw":
        raw = draw(
            st.binary(max_size=200)
            | RAW_JSON.map(lambda t: t.encode("utf-8", "surrogatepass"))
            | st.just(b'{"a": 1, "a": 2}')
        )
        content_type = draw(st.sampled_from(["application/json", "text/plain", None]))
        headers = {"content-type": content_type} if content_type else {}
        return {"content": raw, "headers": headers}
    if kind == "json" or schema is None:
        return {"json": draw(json_values)}
    properties: dict[str, Any] = schema.get("properties", {})
    body = {}
    for name, prop in properties.items():
        if draw(st.integers(0, 19)) == 0:
            continue  # leave a member out
        sane = draw(st.integers(0, 9)) > 0
        body[name] = draw(plausible(name, prop) if sane else hostile_values)
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=10))] = MARKER
    return {"json": body}


path_segments = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9]{1,20}\Z"),
    st.binary(min_size=16, max_size=16).map(b64url_encode),
    st.text(min_size=1, max_size=40),
    st.sampled_from([MARKER, "..", ".", "%00", "A" * 3000, "é", "alice", "shop"]),
)


def fill(path: str, segment: str) -> str:
    return re.sub(r"\{[^}]+\}", quote(segment, safe=""), path)


def books(world: World) -> tuple[int, int]:
    check = world.store.check_ledger()
    with world.store.transaction(readonly=True) as tx:
        audited = len(tx.admin.audit_entries(limit=1_000_000))
    assert check.balanced, check.problems
    return check.txn_count, audited


async def send(app: FastAPI, verb: str, path: str, token: str | None, **kw: Any) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://issuer.test") as client:
        request = client.request(verb, path, headers=headers, **kw)
        return await asyncio.wait_for(request, timeout=20)


def test_this_test_knows_every_route(app: FastAPI) -> None:
    """A route added later must be classified here (public or operator) to be fuzzed."""
    every = {(verb, path) for verb, path, _ in routes(app)}
    assert len(every - PUBLIC) == 16
    assert every >= PUBLIC


@EXAMPLES
@given(data=st.data())
def test_no_request_makes_a_500(app: FastAPI, world: World, data: st.DataObject) -> None:
    verb, path, operation = data.draw(st.sampled_from(routes(app)), label="route")
    url = fill(path, data.draw(path_segments, label="segment"))
    if verb == "GET" and data.draw(st.booleans()):
        url += "?" + data.draw(st.sampled_from(["offset=-1", "limit=99999999999999999999", "x=é"]))
    body = data.draw(bodies(schema_of(app, operation)), label="body") if verb == "POST" else {}
    with_token = data.draw(st.sampled_from([True, True, True, False]), label="with token")
    before = None if with_token else books(world)

    response = asyncio.run(
        send(app, verb, url, world.operator_token if with_token else None, **body)
    )

    event(f"{verb} {path} {'operator' if with_token else 'anonymous'} -> {response.status_code}")
    if response.status_code >= 400:
        assert_problem(response)
        assert MARKER not in response.text
    if before is not None:
        assert books(world) == before, "a request without a token changed the books"
        if (verb, path) not in PUBLIC and response.status_code < 400:
            pytest.fail(f"{verb} {path} answered {response.status_code} without a token")


@pytest.mark.parametrize("body", [b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 20_000 + b"1"])
def test_deeply_nested_json_is_a_clean_400(app: FastAPI, world: World, body: bytes) -> None:
    for path in ("/v1/customers", "/v1/hll/verify"):
        response = asyncio.run(
            send(app, "POST", path, world.operator_token, content=body,
                 headers={"content-type": "application/json"})
        )  # fmt: skip
        assert_problem(response, families={400, 413})


def test_problem_bodies_are_json_objects_with_codes(app: FastAPI, world: World) -> None:
    response = asyncio.run(send(app, "POST", "/v1/customers", None, json={"x": MARKER}))
    assert assert_problem(response, families={401}) == 4001
    assert json.loads(response.content)["detail"] == "authentication required"
