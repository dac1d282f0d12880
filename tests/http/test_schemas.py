"""docs/http.md's JSON as JSON Schemas (src/farthing/schemas/), held against real traffic
and against the wire modules (farthing.http.methods) that both sides build and read it with.

An issuer and a vendor run on loopback (the demo's set-up). Wallets pay with every method
through ``PaymentAuth`` while httpx event hooks record what crossed the wire: each challenge's
decoded ``request``, each credential, each ``Payment-Receipt`` and each problem body. Every
document must match its schema, and every schema must refuse documents wrong in one way.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from farthing.core.errors import MalformedMessage
from farthing.demo import DemoWorld, demo_world
from farthing.http.methods import SCHEME_OF
from farthing.http.methods.common import PricedRequest, SealedBody, unit_price
from farthing.http.methods.hll import HllMode, HllPayload, HllReceipt, HllRequest
from farthing.http.methods.payword import PaywordPayload, PaywordReceipt, PaywordRequest
from farthing.http.methods.szm import SzmPayload, SzmReceipt, SzmRequest
from farthing.http.payment_auth import (
    Receipt,
    decode_json_b64,
    encode_json_b64,
    parse_challenges,
)
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.wallet import Wallet

pytestmark = pytest.mark.xdist_group("demo")

METHODS = ("szmchain", "szmprbg", "hll", "payword")  # the method ids on the wire
DOCS = Path(__file__).resolve().parents[2] / "docs" / "http.md"
Json = dict[str, Any]


def _load_schemas() -> dict[str, Json]:
    folder = resources.files("farthing") / "schemas"
    return {
        entry.name: json.loads(entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


SCHEMAS = _load_schemas()
REGISTRY: Registry[Any] = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema)) for schema in SCHEMAS.values()
)


def camel(name: str) -> str:
    """A dataclass field's JSON member name: unit_micros -> unitMicros."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def schema_file(method: str, kind: str) -> str:
    return f"{method}.{kind}.json"


def errors(schema: str, document: object) -> list[str]:
    validator = Draft202012Validator(
        SCHEMAS[schema], registry=REGISTRY, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


# --- capturing real traffic ----------------------------------------------------------------


@dataclass
class Traffic:
    requests: dict[str, list[Json]] = field(default_factory=dict)  # challenge requests by method
    credentials: list[Json] = field(default_factory=list)  # decoded Authorization: Payment
    receipts: list[Json] = field(default_factory=list)  # decoded Payment-Receipt
    problems: list[Json] = field(default_factory=list)  # application/problem+json bodies

    def on_request(self, request: httpx.Request) -> None:
        header = request.headers.get("authorization")
        if header is not None and header.startswith("Payment "):
            self.credentials.append(decode_json_b64(header.removeprefix("Payment ")))

    def on_response(self, response: httpx.Response) -> None:
        response.read()
        offered = [
            value
            for value in response.headers.get_list("www-authenticate")
            if value.startswith("Payment ")  # the issuer's 401 asks for a Bearer token
        ]
        challenges = parse_challenges(offered)
        assert len(challenges) == len(offered)  # one challenge a header, none skipped as malformed
        for challenge in challenges:
            self.requests.setdefault(challenge.method, []).append(challenge.request)
        if "payment-receipt" in response.headers:
            self.receipts.append(decode_json_b64(response.headers["payment-receipt"]))
        if response.headers.get("content-type", "").startswith("application/problem+json"):
            self.problems.append(response.json())

    def client(self, auth: httpx.Auth | None = None, *, credentials: bool = True) -> httpx.Client:
        """A client whose traffic is recorded (its credentials too, unless told not to)."""
        hooks: dict[str, list[Callable[..., None]]] = {
            "request": [self.on_request] if credentials else [],
            "response": [self.on_response],
        }
        return httpx.Client(auth=auth, event_hooks=hooks, timeout=30)


def _buy(
    traffic: Traffic, wallet_path: Path, world: DemoWorld, method: str, paths: list[str]
) -> None:
    with (
        Wallet.open(wallet_path, world.passphrase, preference=(SCHEME_OF[method],)) as wallet,
        traffic.client(PaymentAuth(wallet)) as client,
    ):
        for path in paths:
            response = client.get(world.vendor_url + path)
            assert response.status_code == 200, (method, path, response.text)
            assert wallet.history(limit=1)[0].method == SCHEME_OF[method]


def _provoke_problems(traffic: Traffic, world: DemoWorld) -> None:
    """A replay, a credential that is not base64url JSON, a challenge for an unknown method
    (each a 402), and the issuer's own problems: no token (401), a body not matching its
    API (400)."""
    article = world.vendor_url + "/articles/reef.txt"
    replayed = traffic.credentials[0]
    unknown = {"challenge": {**replayed["challenge"], "method": "cash"}, "payload": {}}
    with traffic.client(credentials=False) as client:
        for header in (
            "Payment " + encode_json_b64(replayed),
            "Payment %%%not-base64url%%%",
            "Payment " + encode_json_b64(unknown),
        ):
            client.get(article, headers={"Authorization": header})
        client.get(world.issuer_url + "/v1/customers/alice")
    invalid = world.setup.operator.post("/v1/customers", json={"customer_id": 7, "extra": True})
    traffic.on_response(invalid)


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    recorded = Traffic()
    softhsm_conf = os.environ.get("SOFTHSM2_CONF")  # the demo points it at its own tokens
    try:
        with demo_world(tmp_path_factory.mktemp("schemas")) as world:
            main, bbs = world.wallet_path, world.bbs_wallet_path
            _buy(recorded, main, world, "szmchain", ["/articles/ocean.txt", "/articles/reef.txt"])
            _buy(recorded, main, world, "szmprbg", ["/articles/desert.txt"])
            _buy(recorded, bbs, world, "szmprbg", ["/articles/river.txt"])
            _buy(recorded, main, world, "hll", ["/articles/glacier.txt"])
            _buy(recorded, main, world, "payword", ["/articles/tundra.txt", "/data/prices.csv"])
            _provoke_problems(recorded, world)
    finally:
        if softhsm_conf is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = softhsm_conf
    return recorded


# --- the schemas themselves -----------------------------------------------------------------

EXPECTED = {"common.json", "credential.json", "problem.json"} | {
    schema_file(method, kind) for method in METHODS for kind in ("request", "payload", "receipt")
}


def test_there_is_one_schema_per_method_and_kind_and_docs_list_them_all() -> None:
    assert set(SCHEMAS) == EXPECTED
    docs = DOCS.read_text(encoding="utf-8")
    assert [name for name in sorted(EXPECTED) if f"schemas/{name}" not in docs] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_schema_is_draft_2020_12_and_named_by_its_file(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://farthing.dev/schemas/{name}"


# --- real traffic matches -------------------------------------------------------------------


PURCHASES = {"szmchain": 2, "szmprbg": 2, "hll": 1, "payword": 2}  # as bought in ``traffic``


@pytest.mark.parametrize("method", METHODS)
def test_every_challenge_request_matches_its_methods_schema(traffic: Traffic, method: str) -> None:
    requests = traffic.requests.get(method, [])
    # Six purchases met a 402, and the three refusals; each offers all, but the BBS
    # wallet's: it holds a PRBG card only and says so in Accept-Payment. Each paid answer
    # carries one fresh challenge of its method (a challenge id pays once).
    assert len(requests) == 9 + PURCHASES[method] - (method != "szmprbg")
    for request in requests:
        assert errors(schema_file(method, "request"), request) == [], request


def test_every_credential_matches_the_envelope_and_its_methods_payload(traffic: Traffic) -> None:
    paid = traffic.credentials
    assert len(paid) == 7  # one per purchase
    assert sorted({c["challenge"]["method"] for c in paid}) == sorted(METHODS)
    for credential in paid:
        assert errors("credential.json", credential) == [], credential
        payload = credential["payload"]
        method = credential["challenge"]["method"]
        assert errors(schema_file(method, "payload"), payload) == [], payload
    paywords = [c["payload"] for c in paid if c["challenge"]["method"] == "payword"]
    assert ["commitment" in p for p in paywords] == [True, False]  # only until acknowledged


def test_every_receipt_matches_its_methods_schema(traffic: Traffic) -> None:
    assert len(traffic.receipts) == 7
    assert sorted({r["method"] for r in traffic.receipts}) == sorted(METHODS)
    for receipt in traffic.receipts:
        assert errors(schema_file(receipt["method"], "receipt"), receipt) == [], receipt
        holder = receipt.get("card", receipt.get("commitment"))
        assert receipt["reference"] == f"{holder}:{receipt.get('index', receipt.get('counter'))}"


def test_every_problem_body_matches_the_problem_schema(traffic: Traffic) -> None:
    for problem in traffic.problems:
        assert errors("problem.json", problem) == [], problem
    kinds = {(p["status"], p["type"].rsplit("/", 1)[-1]) for p in traffic.problems}
    assert kinds == {
        (402, "payment-required"),
        (402, "malformed-credential"),
        (402, "invalid-challenge"),  # the replay (its id is used), and a method never offered
        (401, "unauthenticated"),  # the issuer, without an operator token
        (400, "malformed-credential"),  # the issuer, a body not matching its API
    }
    replay = next(p for p in traffic.problems if p["detail"] == "challenge already used")
    assert replay["method"] == "szmchain"
    assert all("challengeId" in p for p in traffic.problems if p["status"] == 402)
    assert any("errors" in p for p in traffic.problems)  # the issuer's schema mismatch


# --- each schema refuses documents wrong in one way -----------------------------------------

DROP = object()  # a change that removes the member
CARD = "yMyeCknWn6M_lJjgGFrNow"  # a well-formed 16-byte id


@dataclass(frozen=True)
class Wrong:
    schema: str
    why: str
    change: dict[str, object]  # dotted member path -> new value, DROP, or old -> new


WRONG = [
    Wrong("credential.json", "an unknown member", {"extra": 1}),
    Wrong("credential.json", "the old shape's top-level id", {"id": CARD}),
    Wrong("credential.json", "no challenge", {"challenge": DROP}),
    Wrong("credential.json", "no challenge id", {"challenge.id": DROP}),
    Wrong("credential.json", "an id that is not 32 bytes", {"challenge.id": CARD}),
    Wrong("credential.json", "a method with a colon", {"challenge.method": "szm:chain"}),
    Wrong("credential.json", "another intent", {"challenge.intent": "session"}),
    Wrong("credential.json", "no expires", {"challenge.expires": DROP}),
    Wrong("credential.json", "a request that is JSON", {"challenge.request": {"amount": "1"}}),
    Wrong("credential.json", "a payload that is not an object", {"payload": "szmchain"}),
    Wrong("credential.json", "a source that is a number", {"source": 42}),
    Wrong("problem.json", "an unknown member", {"stack": "Traceback ..."}),
    Wrong("problem.json", "a status that is no error", {"status": 200}),
    Wrong("problem.json", "a farthing code that is a string", {"farthingCode": "3006"}),
    Wrong("problem.json", "the old integer code", {"code": 3006}),
    Wrong("problem.json", "a reason that is not lowercase hyphenated", {"reason": "Bad_Thing"}),
    Wrong("problem.json", "no reason", {"reason": DROP}),
    Wrong("problem.json", "a foreign problem type", {"type": "https://evil.example/problems/x"}),
    Wrong("problem.json", "no detail", {"detail": DROP}),
    Wrong("problem.json", "a correlation id not in hex", {"correlationId": "ABC"}),
    Wrong("szmchain.request.json", "an amount that is a number", {"amount": 2000}),
    Wrong("szmchain.request.json", "an amount of zero", {"amount": "0"}),
    Wrong("szmchain.request.json", "an amount with a fraction", {"amount": "2000.5"}),
    Wrong("szmchain.request.json", "an ISO currency (read as cents)", {"currency": "eur"}),
    Wrong("szmchain.request.json", "the old upper-case currency", {"currency": "EUR"}),
    Wrong("szmchain.request.json", "a micro currency in upper case", {"currency": "micro-EUR"}),
    Wrong("szmchain.request.json", "no methodDetails", {"methodDetails": DROP}),
    Wrong("szmchain.request.json", "sealed false", {"methodDetails.sealed": False}),
    Wrong("szmchain.request.json", "no sealed", {"methodDetails.sealed": DROP}),
    Wrong(
        "szmchain.request.json",
        "a resource that is not a path",
        {"methodDetails.resource": "articles/*"},
    ),
    Wrong("szmchain.request.json", "the resource at the top", {"resource": "/articles/*"}),
    Wrong("szmchain.request.json", "another method's member", {"methodDetails.units": 2}),
    Wrong("szmchain.request.json", "an expiry in the request", {"expires": "2027-01-01"}),
    Wrong("szmprbg.request.json", "no amount", {"amount": DROP}),
    Wrong("hll.request.json", "an unknown mode", {"methodDetails.mode": "later"}),
    Wrong("hll.request.json", "zero units", {"methodDetails.units": 0}),
    Wrong("hll.request.json", "a unit that is a string", {"methodDetails.unitMicros": "1000"}),
    Wrong("hll.request.json", "an empty recipient", {"recipient": ""}),
    Wrong("hll.request.json", "no recipient", {"recipient": DROP}),
    Wrong("hll.request.json", "an SZM member", {"methodDetails.sealed": True}),
    Wrong("hll.request.json", "a bank that is not a key", {"methodDetails.bank": "not a key"}),
    Wrong("payword.request.json", "no broker", {"methodDetails.broker": DROP}),
    Wrong("payword.request.json", "an empty recipient", {"recipient": ""}),
    Wrong("payword.request.json", "negative units", {"methodDetails.units": -2}),
    Wrong("payword.request.json", "a fractional unit", {"methodDetails.unitMicros": 1.5}),
    Wrong("szmchain.payload.json", "padded base64url", {"payment": lambda old: old + "="}),
    Wrong("szmchain.payload.json", "the standard base64 alphabet", {"payment": "ab+/"}),
    Wrong("szmchain.payload.json", "spare bits set", {"payment": "AB"}),
    Wrong("szmchain.payload.json", "an impossible length", {"payment": "AAAAA"}),
    Wrong("szmchain.payload.json", "longer than the vendor reads", {"payment": "A" * 516}),
    Wrong("szmchain.payload.json", "the old method member", {"method": "szm:chain"}),
    Wrong("szmchain.payload.json", "a PayWord member", {"commitment": "AAAA"}),
    Wrong("szmprbg.payload.json", "no payment", {"payment": DROP}),
    Wrong("hll.payload.json", "a payment that is a number", {"payment": 1}),
    Wrong("hll.payload.json", "an unknown member", {"counter": 1}),
    Wrong("payword.payload.json", "a commitment not in base64url", {"commitment": "not b64!"}),
    Wrong("payword.payload.json", "no payment", {"payment": DROP}),
    Wrong("szmchain.receipt.json", "no sealed", {"sealed": DROP}),
    Wrong("szmchain.receipt.json", "another seal", {"sealed.alg": "chacha20-poly1305"}),
    Wrong("szmchain.receipt.json", "a key beside the seal", {"sealed.key": "AAAA"}),
    Wrong("szmchain.receipt.json", "index zero", {"index": 0}),
    Wrong("szmchain.receipt.json", "a card id of 3 bytes", {"card": "AAAA"}),
    Wrong(
        "szmchain.receipt.json",
        "a time with an offset",
        {"timestamp": "2026-11-21T06:51:50+00:00"},
    ),
    Wrong("szmchain.receipt.json", "a status other than success", {"status": "failed"}),
    Wrong("szmchain.receipt.json", "a reference without position", {"reference": CARD}),
    Wrong("szmchain.receipt.json", "no units", {"units": DROP}),
    Wrong("szmprbg.receipt.json", "an HLL member", {"counter": 2}),
    Wrong("szmprbg.receipt.json", "another method", {"method": "szmchain"}),
    Wrong("szmprbg.receipt.json", "the old method id", {"method": "szm:prbg"}),
    Wrong("hll.receipt.json", "no counter", {"counter": DROP}),
    Wrong("hll.receipt.json", "a mode in the wrong case", {"mode": "Online"}),
    Wrong("hll.receipt.json", "an SZM member", {"index": 1}),
    Wrong("payword.receipt.json", "a card id as commitment", {"commitment": CARD}),
    Wrong("payword.receipt.json", "a reference to a card", {"reference": CARD + ":2"}),
    Wrong("payword.receipt.json", "an index that is a string", {"index": "2"}),
]


def sample(traffic: Traffic, schema: str) -> Json:
    """A real document of the kind ``schema`` describes, as captured."""
    if schema == "credential.json":
        return traffic.credentials[0]
    if schema == "problem.json":
        return traffic.problems[0]
    method, kind, _ = schema.split(".")
    if kind == "request":
        return traffic.requests[method][0]
    if kind == "payload":
        return next(c["payload"] for c in traffic.credentials if c["challenge"]["method"] == method)
    return next(r for r in traffic.receipts if r["method"] == method)


def changed(document: Json, change: dict[str, object]) -> Json:
    result = copy.deepcopy(document)
    for path, value in change.items():
        *parents, last = path.split(".")
        target = result
        for key in parents:
            target = target[key]
        if value is DROP:
            del target[last]
        else:
            target[last] = value(target[last]) if callable(value) else value
    return result


@pytest.mark.parametrize("wrong", WRONG, ids=lambda w: f"{w.schema} {w.why}")
def test_each_schema_refuses_a_document_wrong_in_one_way(traffic: Traffic, wrong: Wrong) -> None:
    real = sample(traffic, wrong.schema)
    assert errors(wrong.schema, real) == []
    assert errors(wrong.schema, changed(real, wrong.change)) != []


# --- the wire modules (farthing.http.methods) against the schemas ----------------------------

TIME = 1_800_000_000
ENVELOPE = {camel(f.name) for f in fields(Receipt)} - {"extra"}  # payment_auth.Receipt's own
SEALED = SCHEMAS["common.json"]["$defs"]["sealed"]
WIRE: dict[tuple[str, str], Any] = {
    **{(m, "request"): SzmRequest for m in ("szmchain", "szmprbg")},
    **{(m, "payload"): SzmPayload for m in ("szmchain", "szmprbg")},
    **{(m, "receipt"): SzmReceipt for m in ("szmchain", "szmprbg")},
    ("hll", "request"): HllRequest,
    ("hll", "payload"): HllPayload,
    ("hll", "receipt"): HllReceipt,
    ("payword", "request"): PaywordRequest,
    ("payword", "payload"): PaywordPayload,
    ("payword", "receipt"): PaywordReceipt,
}


TOP = {"amount", "currency"}  # the charge intent's shared members
RECIPIENT = {"merchant", "vendor"}  # sent as the charge intent's ``recipient``


def members_of(cls: Any, *, details: bool = False) -> tuple[set[str], set[str]]:
    """The JSON members a wire dataclass stands for, and those it always sends (a field
    that may be None is sent only when set). A request's members are its top level (the
    charge intent's, ``recipient`` and ``methodDetails``), or with ``details`` those under
    ``methodDetails``."""
    named = {camel(f.name): str(f.type) for f in fields(cls)}
    if issubclass(cls, PricedRequest):
        top = {"recipient" if n in RECIPIENT else n for n in named if n in TOP | RECIPIENT}
        if details:
            named = {n: k for n, k in named.items() if n not in TOP | RECIPIENT}
        else:
            named = {n: "str" for n in top | {"methodDetails"}}
    return set(named), {name for name, kind in named.items() if "None" not in kind}


PRICE = {"amount": 2500, "currency": "EUR", "resource": "/articles/*"}


def wire_samples(method: str, kind: str) -> list[Json]:
    """Documents the wire module emits: with and without each optional member."""
    blob, card, commitment = bytes(range(90)), b"\x07" * 16, b"\x09" * 32
    price: Any = PRICE
    if kind == "request":
        request: Any = {
            "szmchain": SzmRequest(**price),
            "szmprbg": SzmRequest(**price),
            "hll": HllRequest(
                **unit_price(**price, unit_micros=1000), merchant="shop", mode=HllMode.DEFERRED
            ),
            "payword": PaywordRequest(
                **unit_price(**price, unit_micros=1000), vendor="news", broker="bank"
            ),
        }[method]
        if method == "hll":  # with the bank's key too
            return [request.to_json(), replace(request, bank=b"\x05" * 32).to_json()]
        return [request.to_json()]
    if kind == "payload":
        if method.startswith("szm"):
            return [SzmPayload(payment=blob).to_json()]
        if method == "hll":
            return [
                HllPayload(payment=blob).to_json(),
                HllPayload(payment=blob, certificate=blob).to_json(),
            ]
        return [
            PaywordPayload(payment=blob).to_json(),
            PaywordPayload(payment=blob, commitment=bytes(2000)).to_json(),
        ]
    receipt: SzmReceipt | HllReceipt | PaywordReceipt
    extra: Json = {}
    if method.startswith("szm"):
        receipt = SzmReceipt(units=3, card=card, index=12)
        extra["sealed"] = SealedBody(content_type="text/plain; charset=utf-8").to_json()
    elif method == "hll":
        receipt = HllReceipt(units=3, card=card, counter=4, mode=HllMode.ONLINE)
    else:
        receipt = PaywordReceipt(units=3, commitment=commitment, index=7)
    header = Receipt(
        method=method,
        timestamp=TIME,
        reference=receipt.reference,
        extra={**receipt.to_json(), **extra},
    ).to_header()
    return [decode_json_b64(header)]


def read(method: str, kind: str, document: Json) -> Any:
    """What the receiving side parses of ``document``: the method's members (a receipt's
    envelope is payment_auth.Receipt's), and the seal of an SZM receipt."""
    cls = WIRE[method, kind]
    parsed = cls.from_json(document)
    if kind == "receipt" and method.startswith("szm"):
        SealedBody.from_json(document.get("sealed"))
    return parsed


KINDS = [(method, kind) for method in METHODS for kind in ("request", "payload", "receipt")]


@pytest.mark.parametrize(("method", "kind"), KINDS)
def test_each_wire_dataclass_has_exactly_its_schemas_members(method: str, kind: str) -> None:
    schema = SCHEMAS[schema_file(method, kind)]
    members, sent_always = members_of(WIRE[method, kind])
    if kind == "receipt":
        members, sent_always = members | ENVELOPE, sent_always | ENVELOPE
        if method.startswith("szm"):
            members, sent_always = members | {"sealed"}, sent_always | {"sealed"}
    assert set(schema["properties"]) == members
    assert set(schema["required"]) == sent_always
    if kind == "request":
        details = schema["properties"]["methodDetails"]
        members, sent_always = members_of(WIRE[method, kind], details=True)
        assert set(details["properties"]) == members
        assert set(details["required"]) == sent_always


def test_the_sealed_member_has_exactly_its_schemas_members() -> None:
    members, sent_always = members_of(SealedBody)
    assert set(SEALED["properties"]) == members
    assert set(SEALED["required"]) == sent_always


@pytest.mark.parametrize(("method", "kind"), KINDS)
def test_what_each_wire_module_emits_matches_its_schema_and_reads_back(
    method: str, kind: str
) -> None:
    for document in wire_samples(method, kind):
        assert errors(schema_file(method, kind), document) == [], document
        parsed = read(method, kind, document)
        if kind != "receipt":
            assert parsed.to_json() == document
        else:
            assert {**parsed.to_json(), "reference": parsed.reference} == {
                k: v for k, v in document.items() if k not in ENVELOPE - {"reference"} | {"sealed"}
            }


def test_prices_are_counted_in_whole_units_rounded_up() -> None:
    """2.5 units' worth costs 3 units, 3 units' worth 3: never less than the price."""
    for amount, units in ((2500, 3), (3000, 3), (1, 1)):
        price = unit_price(amount=amount, currency="EUR", resource="/a/*", unit_micros=1000)
        hll = HllRequest(**price, merchant="m", mode=HllMode.ONLINE)
        payword = PaywordRequest(**price, vendor="v", broker="b")
        assert (hll.units, payword.units) == (units, units)
        assert HllRequest.from_json(hll.to_json()).units == units


def parse_refusals() -> list[tuple[str, str, Wrong]]:
    """The WRONG documents that change a member the wire module reads (not an added
    member: readers ignore members they do not know, as before)."""
    out = []
    for wrong in WRONG:
        if wrong.schema in ("credential.json", "problem.json"):
            continue
        method, kind, _ = wrong.schema.split(".")
        sample = wire_samples(method, kind)[-1]
        read_members = members_of(WIRE[method, kind])[0] | {"sealed"}
        first = {path.split(".")[0] for path in wrong.change}
        if first <= read_members and all(_exists(sample, path) for path in wrong.change):
            out.append((method, kind, wrong))
    return out


def _exists(document: Json, path: str) -> bool:
    target: object = document
    for key in path.split("."):
        if not isinstance(target, dict) or key not in target:
            return False
        target = target[key]
    return True


@pytest.mark.parametrize(
    ("method", "kind", "wrong"), parse_refusals(), ids=lambda x: getattr(x, "why", str(x))
)
def test_the_wire_module_refuses_what_the_schema_refuses(
    method: str, kind: str, wrong: Wrong
) -> None:
    document = changed(wire_samples(method, kind)[-1], wrong.change)
    assert errors(wrong.schema, document) != []
    with pytest.raises(MalformedMessage):
        read(method, kind, document)


def test_the_refusal_cases_cover_every_kind() -> None:
    assert {(m, k) for m, k, _ in parse_refusals()} >= {
        ("szmchain", "request"), ("szmchain", "payload"), ("szmchain", "receipt"),
        ("hll", "request"), ("hll", "payload"), ("hll", "receipt"),
        ("payword", "request"), ("payword", "payload"), ("payword", "receipt"),
    }  # fmt: skip
