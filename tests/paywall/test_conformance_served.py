"""Conformance of a real ``farthing vendor serve`` to the Payment drafts, from outside.

Written from the drafts in ``/work/shared/reference/mpp/`` only (draft-httpauth-payment-02,
"-02"; draft-payment-intent-charge-00, "charge"; draft-payment-errors-00, "errors"): the
challenge parser, the credential and the receipt reader here are this file's own, built
from the drafts' ABNF and tables, not farthing's and not pympp's. Each test is one MUST
that can be seen from outside, and names its section. The only farthing code used is what
a method's own specification would give a client: the SZM payment itself (the core) and
the method's ``payload`` members (the method's wire module).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from farthing.core.schemes import szm_chain
from farthing.http.methods.szm import CHAIN_METHOD, SzmPayload
from farthing.store import Store, open_store
from tests.paywall.helpers import KEYS, issue_chain_cards
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("uvicorn")
ARTICLE = "/articles/a.txt"
GOOD = b"secret article a"
PROBLEMS = "https://paymentauth.org/problems/"
_B64URL = re.compile(r"\A[A-Za-z0-9_-]+\Z")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:({_TOKEN})|"((?:[^"\\]|\\.)*)")\s*(?:,|\Z)')


# --- the drafts' wire, written here ----------------------------------------------------------


def b64url_json(text: str) -> Any:
    """-02 "Credentials" / "Required Parameters": base64url without padding, of JSON."""
    assert _B64URL.match(text), f"not base64url without padding: {text!r}"
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as error:
        raise AssertionError(f"not base64url: {text!r}") from error
    return json.loads(raw)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jcs(value: Any) -> bytes:
    """RFC 8785 for the values a request holds (strings, integers, booleans, objects)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


@dataclass(frozen=True)
class Offer:
    """One ``Payment`` challenge as sent: its auth-params, unescaped."""

    params: dict[str, str]

    @property
    def request(self) -> dict[str, Any]:
        value = b64url_json(self.params["request"])
        assert isinstance(value, dict)
        return value

    def echo(self, **changes: str) -> dict[str, str]:
        """-02 "Credentials": the challenge object echoes the challenge's parameters."""
        names = ("id", "realm", "method", "intent", "request", "description", "opaque")
        names += ("digest", "expires", "header")
        return {**{n: self.params[n] for n in names if n in self.params}, **changes}


def parse_offers(fields: list[str]) -> list[Offer]:
    """-02 "Challenge (WWW-Authenticate)": ``challenge = "Payment" [ 1*SP auth-params ]``,
    ``auth-param = token BWS "=" BWS ( token / quoted-string )``; one challenge per field
    value here (farthing sends one per field), other schemes skipped."""
    offers = []
    for value in fields:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() != "payment":
            continue
        params: dict[str, str] = {}
        position = 0
        while position < len(rest):
            match = _PARAM.match(rest, position)
            assert match, f"not auth-params: {rest[position:]!r}"
            name, token, quoted = match.groups()
            params[name.lower()] = token if token is not None else re.sub(r"\\(.)", r"\1", quoted)
            position = match.end()
        offers.append(Offer(params))
    return offers


def credential(echo: dict[str, str], payload: dict[str, Any]) -> str:
    """-02 "Credentials": ``"Payment" 1*SP base64url-nopad`` of {challenge, payload}."""
    body = json.dumps({"challenge": echo, "payload": payload}).encode()
    return "Payment " + b64url(body)


def chain_payload(payment: szm_chain.Payment) -> dict[str, Any]:
    """The method-specific ``payload`` of SZM protocol 1 (its wire module)."""
    return dict(SzmPayload(payment=szm_chain.encode_payment(payment)).to_json())


# --- one real vendor ---------------------------------------------------------------------------


@dataclass
class Vendor:
    base: str
    store: Store
    seeds: Iterator[int]

    def card(self) -> szm_chain.ChainCard:
        return issue_chain_cards(self.store, 1, seed=f"conformance-{next(self.seeds)}")[0]

    def spent(self, card: szm_chain.ChainCard) -> int:
        row = self.store.szm_card(card.card_id)
        assert row is not None
        return row.spent

    def get(self, path: str = ARTICLE, **headers: str) -> httpx.Response:
        return httpx.get(self.base + path, headers=headers, timeout=10)

    def offer(self, method: str = CHAIN_METHOD) -> Offer:
        offers = parse_offers(self.get().headers.get_list("www-authenticate"))
        (chosen,) = [o for o in offers if o.params.get("method") == method]
        return chosen


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vendor]:
    folder = tmp_path_factory.mktemp("conformance")
    goods = folder / "goods" / "articles"
    goods.mkdir(parents=True)
    (goods / "a.txt").write_bytes(GOOD)
    (goods / "b.txt").write_bytes(b"secret article b")
    target = str(folder / "vendor.sqlite")
    config = folder / "vendor.toml"
    config.write_text(
        'realm = "news"\n'
        f'database = "{target}"\n'
        'content_dir = "goods"\n'
        "[prices]\n"
        '"/articles/*" = "2000 EUR"\n'
        "[szm]\n"
        f'chain_master = "{KEYS.chain_master.hex()}"\n'
        f'prbg_master = "{KEYS.prbg_master.hex()}"\n'
    )
    store = open_store(target)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve",
        str(folder / "goods"), "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    with command_server(command, port, env={}, log_path=folder / "serve.log") as base:
        yield Vendor(base, store, iter(range(10**6)))
    store.close()


def expiry(offer: Offer) -> int:
    return int(datetime.fromisoformat(offer.params["expires"]).timestamp())


def pay(vendor: Vendor, card: szm_chain.ChainCard, offer: Offer) -> tuple[str, szm_chain.Payment]:
    # The price, 2000 micro-EUR, is 2 units of the test cards (1000 micro-EUR each).
    _, payment, _ = szm_chain.next_payment(card, 2, now=expiry(offer) - 60)
    return credential(offer.echo(), chain_payload(payment)), payment


def assert_fresh_challenge(response: httpx.Response, problem: str, used: Offer | None) -> None:
    """-02 "Status Codes": 402, a fresh challenge, and the problem in the body."""
    assert response.status_code == 402, response.text
    offers = parse_offers(response.headers.get_list("www-authenticate"))
    assert offers, "a 402 without a Payment challenge"
    if used is not None:
        assert used.params["id"] not in {o.params["id"] for o in offers}
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == PROBLEMS + problem
    assert "payment-receipt" not in response.headers  # -02 "Receipt Status Semantics"
    assert_errors00_body(response.json())


ERRORS00_CODES = {
    "insufficient_balance", "expired_challenge", "invalid_signature", "amount_mismatch",
    "unsupported_method", "network_error", "settlement_failed", "rate_limited",
}  # fmt: skip
CORE_TYPES = {
    "payment-required", "payment-insufficient", "payment-expired", "verification-failed",
    "method-unsupported", "malformed-credential", "invalid-challenge", "bad-request",
    "invalid-payload", "internal-payment-error", "payment-action-required",
}  # fmt: skip


def assert_errors00_body(problem: dict[str, Any]) -> None:
    """errors "Fields": ``code`` (a string: its taxonomy's, which it calls a superset of
    -02's problem types), ``reason`` (lowercase, hyphen-delimited), ``detail``; and
    ``retry_after`` a non-negative integer when present."""
    for name in ("type", "title", "status", "code", "reason", "detail"):
        assert name in problem, (name, problem)
    core = {t.replace("-", "_") for t in CORE_TYPES}
    assert problem["code"] in ERRORS00_CODES | core, problem
    assert re.fullmatch(r"[a-z][a-z0-9-]*", problem["reason"]), problem
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    if "retry_after" in problem:
        assert isinstance(problem["retry_after"], int)
        assert problem["retry_after"] >= 0


# --- challenges --------------------------------------------------------------------------------


def test_a_request_without_credential_gets_402_with_a_payment_challenge(vendor: Vendor) -> None:
    """-02 "Status Codes"; "When NOT to Return 402": never a 402 without a challenge."""
    response = vendor.get()
    assert response.status_code == 402
    assert parse_offers(response.headers.get_list("www-authenticate"))


def test_402_is_not_stored(vendor: Vendor) -> None:
    """-02 "Caching": Cache-Control: no-store with 402 responses."""
    directives = {d.strip() for d in vendor.get().headers["cache-control"].split(",")}
    assert "no-store" in directives


def test_402_body_is_a_payment_required_problem(vendor: Vendor) -> None:
    """errors "Response Body": Content-Type application/problem+json; -02 "Error Response
    Format": the type under https://paymentauth.org/problems/; errors "Fields"."""
    response = vendor.get()
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == PROBLEMS + "payment-required"
    assert problem["status"] == 402
    assert_errors00_body(problem)


def test_every_challenge_has_the_required_parameters(vendor: Vendor) -> None:
    """-02 "Required Parameters": id (non-empty), realm, method, intent, request."""
    for offer in parse_offers(vendor.get().headers.get_list("www-authenticate")):
        for name in ("id", "realm", "method", "intent", "request"):
            assert offer.params.get(name), (name, offer.params)


def test_method_ids_are_lowercase_letters(vendor: Vendor) -> None:
    """-02 "Method Identifier Format": payment-method-id = 1*LOWERALPHA."""
    methods = [
        o.params["method"] for o in parse_offers(vendor.get().headers.get_list("www-authenticate"))
    ]
    assert methods
    assert all(re.fullmatch(r"[a-z]+", m) for m in methods), methods


def test_intents_are_charge(vendor: Vendor) -> None:
    """-02 "Intent Identifiers" and the registry: farthing sells with ``charge``."""
    offers = parse_offers(vendor.get().headers.get_list("www-authenticate"))
    assert {o.params["intent"] for o in offers} == {"charge"}


def test_request_is_jcs_json_in_base64url_without_padding(vendor: Vendor) -> None:
    """-02 "Required Parameters", ``request``: JCS (RFC 8785), base64url, no padding."""
    for offer in parse_offers(vendor.get().headers.get_list("www-authenticate")):
        raw = offer.params["request"]
        assert "=" not in raw
        assert b64url(jcs(offer.request)) == raw


def test_expires_is_an_rfc3339_date_time(vendor: Vendor) -> None:
    """-02 "Optional Parameters", ``expires``: an RFC 3339 date-time string."""
    rfc3339 = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})"
    for offer in parse_offers(vendor.get().headers.get_list("www-authenticate")):
        assert re.fullmatch(rfc3339, offer.params["expires"]), offer.params["expires"]


def test_charge_request_has_a_string_amount_and_a_currency_and_no_expiry(vendor: Vendor) -> None:
    """charge "Required Fields": amount (string, base units), currency; "Optional Fields":
    methodDetails an object; "Request objects MUST NOT duplicate the expiry value"."""
    for offer in parse_offers(vendor.get().headers.get_list("www-authenticate")):
        request = offer.request
        assert isinstance(request["amount"], str), request
        assert request["amount"].isdigit(), request
        assert isinstance(request["currency"], str), request
        assert request["currency"], request
        assert "expires" not in request
        assert isinstance(request.get("methodDetails", {}), dict)


def test_the_currency_cannot_be_read_as_an_uppercase_iso_code(vendor: Vendor) -> None:
    """charge "Currency Formats": ISO 4217 codes are lowercase (``"eur"``); anything else
    is method-defined, and then must not read as an ISO code (a client that knows only
    ``charge`` would take ``EUR`` for euros and misread the sub-cent amount)."""
    for offer in parse_offers(vendor.get().headers.get_list("www-authenticate")):
        currency = offer.request["currency"]
        assert not re.fullmatch(r"[A-Z]{3}", currency), currency


# --- credentials ---------------------------------------------------------------------------------


def test_a_paid_request_gets_200_with_a_private_receipt(vendor: Vendor) -> None:
    """-02 "Status Codes" (200 + Payment-Receipt), "Payment-Receipt Header" (status
    "success", method, RFC 3339 timestamp, reference), "Caching" (Cache-Control: private)."""
    card = vendor.card()
    offer = vendor.offer()
    authorization, _ = pay(vendor, card, offer)
    response = vendor.get(authorization=authorization)
    assert response.status_code == 200, response.text
    receipt = b64url_json(response.headers["payment-receipt"])
    assert receipt["status"] == "success"
    assert receipt["method"] == offer.params["method"]
    assert datetime.fromisoformat(receipt["timestamp"].replace("Z", "+00:00")).tzinfo
    assert isinstance(receipt["reference"], str)
    assert receipt["reference"]
    directives = {d.strip() for d in response.headers["cache-control"].split(",")}
    assert "private" in directives
    assert vendor.spent(card) == 2


@pytest.mark.parametrize(
    "value",
    ["Payment !!!not-base64url!!!", "Payment " + b64url(b"{not json"), "Payment " + b64url(b"[]")],
    ids=["bad-base64url", "bad-json", "not-an-object"],
)
def test_a_malformed_credential_gets_402_malformed_credential(vendor: Vendor, value: str) -> None:
    """-02 "Status Codes": malformed credential (invalid base64url, bad JSON) -> 402, a
    fresh challenge, ``malformed-credential``."""
    assert_fresh_challenge(vendor.get(authorization=value), "malformed-credential", None)


def test_an_unknown_challenge_id_gets_402_invalid_challenge(vendor: Vendor) -> None:
    """-02 "Status Codes": unknown challenge id -> 402 + ``invalid-challenge``."""
    card = vendor.card()
    offer = vendor.offer()
    _, payment, _ = szm_chain.next_payment(card, 2, now=expiry(offer) - 60)
    forged_id = b64url(bytes(32))
    value = credential(offer.echo(id=forged_id), chain_payload(payment))
    assert_fresh_challenge(vendor.get(authorization=value), "invalid-challenge", None)
    assert vendor.spent(card) == 0


@pytest.mark.parametrize("member", ["request", "realm", "intent", "expires"])
def test_an_echo_that_breaks_the_binding_is_refused(vendor: Vendor, member: str) -> None:
    """-02 "Challenge Binding": the id binds realm, method, intent, request and expires;
    a credential whose echoed parameters do not match MUST be rejected."""
    card = vendor.card()
    offer = vendor.offer()
    _, payment, _ = szm_chain.next_payment(card, 2, now=expiry(offer) - 60)
    changed = {
        "request": b64url(jcs({**offer.request, "amount": "1"})),
        "realm": "elsewhere",
        "intent": "authorize",
        "expires": "2099-01-01T00:00:00Z",
    }[member]
    value = credential(offer.echo(**{member: changed}), chain_payload(payment))
    response = vendor.get(authorization=value)
    assert response.status_code == 402, response.text
    assert parse_offers(response.headers.get_list("www-authenticate"))
    assert "payment-receipt" not in response.headers
    assert vendor.spent(card) == 0


def test_a_failed_verification_gets_402_verification_failed(vendor: Vendor) -> None:
    """-02 "Status Codes": payment proof invalid -> 402 + ``verification-failed``."""
    card = vendor.card()
    offer = vendor.offer()
    _, payment, _ = szm_chain.next_payment(card, 2, now=expiry(offer) - 60)
    forged = szm_chain.Payment(card_id=payment.card_id, index=payment.index, value=bytes(32))
    value = credential(offer.echo(), chain_payload(forged))
    assert_fresh_challenge(vendor.get(authorization=value), "verification-failed", offer)
    assert vendor.spent(card) == 0


def test_a_used_credential_does_not_pay_for_another_request(vendor: Vendor) -> None:
    """-02 "Status Codes": an already-used challenge id -> 402 + ``invalid-challenge``;
    "Replay Protection": a proof is usable exactly once."""
    card = vendor.card()
    offer = vendor.offer()
    authorization, _ = pay(vendor, card, offer)
    assert vendor.get(authorization=authorization).status_code == 200
    again = vendor.get("/articles/b.txt", authorization=authorization)
    assert_fresh_challenge(again, "invalid-challenge", offer)
    assert b"secret" not in again.content
    assert vendor.spent(card) == 2


def test_a_used_challenge_id_does_not_take_a_new_payment(vendor: Vendor) -> None:
    """-02 "Status Codes": an already-used challenge id -> 402 + ``invalid-challenge``,
    even with a good new payment under it (farthing's wallet used to pay up front so)."""
    card = vendor.card()
    offer = vendor.offer()
    card, payment, _ = szm_chain.next_payment(card, 2, now=expiry(offer) - 60)
    first = credential(offer.echo(), chain_payload(payment))
    assert vendor.get(authorization=first).status_code == 200
    _, fresh, _ = szm_chain.next_payment(card, 2, now=expiry(offer) - 60)
    assert fresh.index == payment.index + 2
    reused = credential(offer.echo(), chain_payload(fresh))
    again = vendor.get("/articles/b.txt", authorization=reused)
    assert_fresh_challenge(again, "invalid-challenge", offer)
    assert b"secret" not in again.content
    assert vendor.spent(card) == 2


def test_a_lost_answer_is_resent_for_free_under_its_used_challenge(vendor: Vendor) -> None:
    """farthing's retry rule (docs/http.md): the identical request sent again is served
    again, nothing more taken, though its challenge id is now used."""
    card = vendor.card()
    authorization, _ = pay(vendor, card, vendor.offer())
    first = vendor.get(authorization=authorization)
    second = vendor.get(authorization=authorization)
    assert (first.status_code, second.status_code) == (200, 200)
    assert vendor.spent(card) == 2


def test_the_same_credential_sent_twice_settles_once(vendor: Vendor) -> None:
    """-02 "Replay Protection" and charge "Single-Use": never accepted twice (farthing
    answers the identical request again without a second charge, docs/http.md)."""
    card = vendor.card()
    authorization, _ = pay(vendor, card, vendor.offer())
    first = vendor.get(authorization=authorization)
    second = vendor.get(authorization=authorization)
    assert first.status_code == 200
    assert second.status_code in (200, 402)
    assert vendor.spent(card) == 2


def test_concurrent_requests_with_one_credential_settle_once(vendor: Vendor) -> None:
    """-02 "Concurrent Request Handling": concurrent requests with the same credential
    give at most one settlement."""
    card = vendor.card()
    authorization, _ = pay(vendor, card, vendor.offer())
    start = threading.Barrier(4)

    def send(path: str) -> int:
        with httpx.Client(base_url=vendor.base, timeout=10) as own:
            start.wait(timeout=10)
            return own.get(path, headers={"authorization": authorization}).status_code

    paths = [ARTICLE, "/articles/b.txt", ARTICLE, "/articles/b.txt"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(send, paths))
    assert all(s in (200, 402) for s in statuses), statuses
    assert vendor.spent(card) == 2


def test_a_credential_in_a_field_the_challenge_did_not_select_does_not_pay(
    vendor: Vendor,
) -> None:
    """-02 "Credentials": a challenge without ``header`` selects Authorization; a
    credential received in any other field MUST NOT satisfy the challenge."""
    card = vendor.card()
    offer = vendor.offer()
    assert "header" not in offer.params
    authorization, _ = pay(vendor, card, offer)
    response = httpx.get(
        vendor.base + ARTICLE, headers={"payment-authorization": authorization}, timeout=10
    )
    assert response.status_code == 402
    assert GOOD not in response.content
    assert vendor.spent(card) == 0
    # -02 "Caching": a credential in a field other than Authorization: private or no-store.
    directives = {d.strip() for d in response.headers["cache-control"].split(",")}
    assert directives & {"private", "no-store"}


def test_a_payment_that_pays_too_little_gets_402_payment_insufficient(vendor: Vendor) -> None:
    """-02 "Error Codes": ``payment-insufficient`` (402, amount too low); errors "HTTP
    Status Code Mapping": a 402 MUST include a fresh challenge."""
    card = vendor.card()
    offer = vendor.offer()
    _, payment, _ = szm_chain.next_payment(card, 1, now=expiry(offer) - 60)
    value = credential(offer.echo(), chain_payload(payment))
    assert_fresh_challenge(vendor.get(authorization=value), "payment-insufficient", offer)
    assert vendor.spent(card) == 0
