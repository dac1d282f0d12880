"""Secrets never leave through logs, errors, metrics or problem details.

One in-process world (issuer and vendor apps on one SQLite store, a wallet holding a card
of every scheme) runs good and bad flows with every logger at DEBUG: purchases with every
method through the wallet, forged and replayed payments, malformed headers, a vendor
fault, merchant calls with a wrong key, operator calls with no or a revoked token, a
deposit refused for a wrong key, a wallet opened with the wrong passphrase, config files
with bad keys. Everything observable is collected (log records with tracebacks,
stdout/stderr, every error response's body and headers, every response's headers,
/metrics, the text and repr of every exception raised) and searched for every secret in
the forms it could take (hex either case, base64url, base64, Python's bytes repr).

A second test scans ``src/`` (AST) for ``==`` / ``!=`` on values named like secrets,
with a reviewed allow-list: secrets are compared with ``constant_time_eq`` only.
"""

from __future__ import annotations

import ast
import base64
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from farthing.core.cardcode import to_compact, to_text
from farthing.core.encoding import b64url_encode
from farthing.core.errors import FarthingError
from farthing.core.schemes import hll, szm_chain, szm_prbg
from farthing.http.issuer_client import IssuerClient
from farthing.http.issuer_wire import verify_request_tag
from farthing.paywall.config import load_vendor_config
from farthing.paywall.deposits import Depositor
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.cards import HllCardFile
from farthing.wallet.wallet import Wallet
from tests.reliability.world import (
    ACTOR,
    EUR,
    MERCHANT_ID,
    REALM,
    World,
    authorization,
    challenge_ids,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "farthing"
PASSPHRASE = "correct horse battery staple 7731"
PATHS = ["/articles/a.txt", "/articles/b.txt", "/articles/c.txt", "/articles/d.txt"]


def forms(secret: bytes) -> set[str]:
    """Every way a secret could be printed."""
    out = {
        secret.hex(),
        secret.hex().upper(),
        b64url_encode(secret),
        base64.b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
    }
    return {form for form in out if len(form) >= 16}


@dataclass
class Evidence:
    """Everything an operator, a log shipper or a client could see."""

    texts: list[str] = field(default_factory=list)
    secrets: dict[str, bytes] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)

    def keep(self, response: httpx.Response) -> None:
        self.texts.append("\n".join(f"{k}: {v}" for k, v in response.headers.items()))
        if response.status_code >= 300 or "json" in response.headers.get("content-type", ""):
            self.texts.append(response.text)

    def error(self, error: BaseException) -> None:
        self.texts += [str(error), repr(error), repr(error.__cause__), repr(error.__context__)]

    def leaks(self) -> list[str]:
        haystack = "\n".join(self.texts)
        found = [name for name, s in self.secrets.items() if any(f in haystack for f in forms(s))]
        found += [name for name, s in self.strings.items() if s in haystack]
        return found


@pytest.fixture
def evidence(sqlite_world: World) -> Evidence:
    keys = sqlite_world.keys
    found = Evidence()
    found.secrets |= {
        "hll master": keys.hll_master,
        "szm chain master": keys.szm_chain_master,
        "szm prbg master": keys.szm_prbg_master,
        "merchant key wrap": keys.merchant_key_wrap,
        "broker key": keys.payword_broker_key,
        "bbs p": keys.bbs.p.to_bytes((keys.bbs.p.bit_length() + 7) // 8, "big"),
        "bbs q": keys.bbs.q.to_bytes((keys.bbs.q.bit_length() + 7) // 8, "big"),
        "merchant key": sqlite_world.merchant_key,
        "payword user key": sqlite_world.user_private,
        "challenge secret": load_vendor_config(sqlite_world.config_path).settings.challenge_secret,
    }
    found.strings |= {
        "passphrase": PASSPHRASE,
        "operator token": sqlite_world.operator_token,
        "bbs p (decimal)": str(keys.bbs.p),
    }
    return found


def test_the_search_finds_what_it_looks_for() -> None:
    found = Evidence(secrets={"k": bytes(range(32))}, strings={"p": "pass phrase"})
    found.texts = [f"oops {bytes(range(32))!r} and the pass phrase"]
    assert found.leaks() == ["k", "p"]
    found.texts = [base64.b64encode(bytes(range(32))).decode()]
    assert found.leaks() == ["k"]


# --- the flows -------------------------------------------------------------------------------


def wallet_with_every_card(world: World, path: Path, found: Evidence) -> Wallet:
    wallet = Wallet.create(path, PASSPHRASE)
    chain, prbg = world.chain_cards(1)[0], world.prbg_cards(1)[0]
    hll_card = world.hll_cards(1)[0]
    chain_code = szm_chain.to_card_code(chain.card, realm=REALM)
    prbg_code = szm_prbg.to_card_code(prbg.card, realm=REALM)
    wallet.add_szm_code(to_text(chain_code), site="https://vendor.test", label="chain")
    wallet.add_szm_code(to_compact(prbg_code), site="https://vendor.test", label="prbg")
    wallet.add_hll_card(
        HllCardFile(
            card_id=hll_card.card_id,
            balance=200,
            denomination=EUR,
            card_key=hll_card.card_key,
            bank_key=b"b" * 32,
        ),
        label="hll",
        site="https://vendor.test",
    )
    wallet.add_payword(
        world.certificate, world.user_private, label="payword", site="https://vendor.test"
    )
    found.secrets |= {
        "chain card secret": chain.card.secret,
        "prbg card secret": prbg.card.secret,
        "chain seed": szm_chain.chain_seed(chain.card.secret, chain.card.card_id),
        "hll card key": hll_card.card_key,
    }
    found.strings |= {
        "chain card code": to_text(chain_code),
        "chain card compact": to_compact(chain_code),
        "prbg card code": to_text(prbg_code),
    }
    return wallet


async def buy_with_every_method(world: World, wallet_path: Path, found: Evidence) -> None:
    async def log(response: httpx.Response) -> None:
        await response.aread()
        found.keep(response)

    transport = httpx.ASGITransport(app=world.vendor_app())
    for method, path in zip(("szm:chain", "szm:prbg", "hll:mac", "payword"), PATHS, strict=True):
        with Wallet.open(wallet_path, PASSPHRASE, preference=(method,)) as wallet:
            async with httpx.AsyncClient(
                transport=transport, base_url="https://vendor.test", auth=PaymentAuth(wallet),
                event_hooks={"response": [log]},
            ) as http:  # fmt: skip
                response = await http.get(path)
            assert response.status_code == 200, (method, response.text)
            found.texts += [repr(wallet), repr(wallet.cards()), repr(wallet.history())]
            assert [e.outcome for e in wallet.history(limit=10)] == ["paid"] * len(
                wallet.history(limit=10)
            )


async def attack_the_vendor(world: World, found: Evidence) -> None:
    app = world.vendor_app()
    chain = world.chain_cards(1)[0]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as http:
        unpaid = await http.get(PATHS[0])
        cid = challenge_ids(unpaid.headers.get_list("www-authenticate"))["szm:chain"][0]
        payment, key = chain.at(2, world.clock.now())
        found.secrets["payment key"] = key
        forged = payment[:-1] + bytes([payment[-1] ^ 1])
        headers = [
            authorization(cid, "szm:chain", forged),
            authorization(cid, "szm:chain", payment),
            authorization(cid, "szm:chain", payment),  # the replay
            authorization(cid, "payword", payment),
            "Payment " + b64url_encode(b'{"id": 1}'),
            "Payment !!!",
        ]
        for header in headers:
            response = await http.get(PATHS[0], headers={"authorization": header})
            found.keep(response)
        for response in (await http.get("/readyz"), await http.get("/healthz")):
            found.texts.append(response.text)
    assert app.metrics is not None  # the admin listener's /metrics serves this text
    found.texts.append(app.metrics.render().decode())


async def fault_in_the_vendor(
    world: World, found: Evidence, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception inside settlement: logged with its traceback, never echoed."""
    app = world.vendor_app()
    method = app.methods["szmchain"]

    async def explode(context: object) -> object:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(method, "settle", explode)
    chain = world.chain_cards(1)[0]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://vendor.test") as http:
        unpaid = await http.get(PATHS[0])
        cid = challenge_ids(unpaid.headers.get_list("www-authenticate"))["szm:chain"][0]
        header = authorization(cid, "szm:chain", chain.at(2, world.clock.now())[0])
        response = await http.get(PATHS[0], headers={"authorization": header})
    assert response.status_code == 500
    found.keep(response)


async def attack_the_issuer(world: World, found: Evidence) -> None:
    revoked = world.services.accounts.create_operator_token(ACTOR, "gone")
    world.services.accounts.revoke_operator_token(ACTOR, revoked.operator_id)
    found.strings["revoked token"] = revoked.token
    other_key = world.services.accounts.create_merchant(ACTOR, "other", "EUR").key
    found.secrets["other merchant key"] = other_key
    card = world.hll_cards(1)[0]
    offer = hll.Offer(
        merchant_id=MERCHANT_ID, good="/a", amount=2, denomination=EUR,
        challenge=world.rng(40), expires_at=world.clock.now() + 300,
    )  # fmt: skip
    payment, offer_bytes = card.pay(offer, 1), hll.encode_offer(offer)
    wrong_tag = verify_request_tag(other_key, MERCHANT_ID, offer_bytes, payment)
    requests = [
        ("POST", "/v1/hll/verify", None, {
            "merchant_id": MERCHANT_ID, "offer": b64url_encode(offer_bytes),
            "payment": b64url_encode(payment), "tag": b64url_encode(wrong_tag),
        }),
        ("POST", "/v1/customers", "Bearer " + revoked.token, {"customer_id": "x"}),
        ("GET", "/v1/ledger/check", None, None),
        ("GET", "/v1/ledger/check", "Bearer " + world.operator_token + "x", None),
        ("POST", "/v1/customers", "Bearer " + world.operator_token, {"customer_id": 7}),
        ("POST", "/v1/merchants", "Bearer " + world.operator_token, {"merchant_id": "shop"}),
    ]  # fmt: skip
    transport = httpx.ASGITransport(app=world.issuer_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://issuer.test") as http:
        for verb, path, token, body in requests:
            headers = {} if token is None else {"authorization": token}
            response = await http.request(verb, path, json=body, headers=headers)
            assert response.status_code >= 400
            found.keep(response)


async def deposit_with_a_wrong_key(world: World, found: Evidence) -> None:
    wrong = found.secrets["other merchant key"]  # a vendor configured with a wrong key
    client = IssuerClient(
        "http://issuer.test",
        merchant_id=MERCHANT_ID,
        merchant_key=wrong,
        transport=httpx.ASGITransport(app=world.issuer_app()),
    )
    depositor = Depositor(
        world.store, client, clock=world.clock, rng=world.rng,
        merchant_id=MERCHANT_ID, merchant_key=wrong,
    )  # fmt: skip
    depositor.stage()
    report = await depositor.flush()
    assert report.failed >= 1
    with world.store.transaction(readonly=True) as tx:
        for item in tx.vendor.outbox_due(world.clock.now() + 10**6, 100):
            found.texts.append(repr(item.report))


def bad_config_files(world: World, found: Evidence) -> None:
    merchant_key = world.folder / "merchant.key"
    good = merchant_key.read_text()
    merchant_key.write_text(good.strip()[:-2] + "\n")  # 31 bytes: refused, with the key named
    try:
        load_vendor_config(world.config_path)
    except FarthingError as error:
        found.error(error)
    else:
        pytest.fail("a short merchant key was accepted")
    merchant_key.write_text("zz" + good.strip()[2:] + "\n")
    with pytest.raises(FarthingError) as bad_hex:
        load_vendor_config(world.config_path)
    found.error(bad_hex.value)
    merchant_key.write_text(good)


def wrong_passphrase(path: Path, found: Evidence) -> None:
    for attempt in (PASSPHRASE + "!", PASSPHRASE.upper(), ""):
        with pytest.raises(FarthingError) as locked:
            Wallet.open(path, attempt)
        found.error(locked.value)
    found.strings["a wrong passphrase"] = PASSPHRASE + "!"


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    names = ("farthing", "farthing.paywall", "farthing.issuer", "httpx", "httpcore")
    levels = {name: logging.getLogger(name).level for name in names}
    with caplog.at_level(logging.DEBUG):
        for name in names:
            logging.getLogger(name).setLevel(logging.DEBUG)
        yield caplog
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.anyio
async def test_no_secret_in_logs_errors_metrics_or_problems(
    sqlite_world: World,
    evidence: Evidence,
    all_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    world = sqlite_world
    wallet_path = tmp_path / "wallet.sqlite"
    wallet_with_every_card(world, wallet_path, evidence).close()
    await buy_with_every_method(world, wallet_path, evidence)
    await attack_the_vendor(world, evidence)
    await fault_in_the_vendor(world, evidence, monkeypatch)
    await attack_the_issuer(world, evidence)
    await deposit_with_a_wrong_key(world, evidence)
    bad_config_files(world, evidence)
    wrong_passphrase(wallet_path, evidence)

    records = all_logs.records
    assert any("correlation id" in r.getMessage() for r in records), "the fault was not logged"
    evidence.texts += [all_logs.text, *(r.exc_text or "" for r in records)]
    out, err = capsys.readouterr()
    evidence.texts += [out, err]
    assert len(evidence.secrets) + len(evidence.strings) >= 20
    assert evidence.leaks() == []


def test_objects_holding_secrets_do_not_print_them(sqlite_world: World) -> None:
    """The repr of what carries a secret: it ends up in logs, tracebacks and debuggers."""
    from farthing.issuer.auth import Merchant
    from farthing.paywall.app import HllSettings, SzmKeys, VendorSettings
    from farthing.paywall.methods.base import Sealing

    world = sqlite_world
    config = load_vendor_config(world.config_path)
    secret = bytes(range(100, 132))
    chain, prbg = world.chain_cards(1)[0], world.prbg_cards(1)[0]
    objects = {
        "issuer keys": world.keys,
        "vendor settings": config.settings,
        "szm keys": SzmKeys(chain_master=secret, prbg_master=secret),
        "hll settings": HllSettings(merchant_id="m", merchant_key=secret, unit_micros=1),
        "vendor settings inline": VendorSettings(realm="r", challenge_secret=secret),
        "sealing": Sealing(key=secret, card_id=bytes(16), index=1),
        "merchant": Merchant(merchant_id="m", account_id=1, currency="EUR", key=secret),
        "issuer client": world.bank(),
        "hll card file": HllCardFile(
            card_id=bytes(16), balance=1, denomination=EUR, card_key=secret
        ),
        "software card key": hll.SoftwareCardKey(secret),
        "operator token": world.services.accounts.create_operator_token(ACTOR, "x"),
        "personalised card": world.services.hll.personalise(
            ACTOR, "alice", units=1, unit_micros=1000
        ),
        "szm card code": szm_chain.to_card_code(chain.card, realm=REALM),
        "szm chain card": chain.card,
        "szm prbg card": prbg.card,
    }
    secrets = [
        secret, world.keys.hll_master, world.merchant_key, world.keys.szm_chain_master,
        objects["personalised card"].card_key,  # type: ignore[attr-defined]
        chain.card.secret, prbg.card.secret,
    ]  # fmt: skip
    shown = {name: repr(value) for name, value in objects.items()}
    leaking = [n for n, text in shown.items() if any(f in text for s in secrets for f in forms(s))]
    assert leaking == []


# --- constant-time comparisons -------------------------------------------------------------

SECRET_WORDS = frozenset(
    {
        "mac", "tag", "tags", "token", "sigma", "secret", "key", "keys", "digest", "hash",
        "anchor", "checksum", "signature", "seal", "sealed", "nonce", "pin", "seed",
        "expected", "computed", "sha256", "hmac", "hkdf", "password", "passphrase",
    }
)  # fmt: skip
# (file, expression) pairs read and found to compare no secret, each with why.
REVIEWED = {
    ("core/encoding.py", "data[:len(expected)] != expected"): "the public domain header",
    ("core/schemes/hll.py", "sigma_len == _SIGMA_LEN_FIELD"): "a length prefix",
    ("core/schemes/_advance.py", "key == state_key"): (
        "a card id or commitment id, public (the payment carries it, the state was found by"
        " it); on a mismatch units_paid gets constant_time_eq's answer"
    ),
    ("paywall/middleware.py", "key == name"): "an HTTP header name",
    ("store/_vendor.py", "c.key_digest == key_digest"): (
        "a SQL WHERE on the hash of a client's Idempotency-Key (no secret; the database compares)"
    ),
    (
        "http/payment_auth.py",
        "(echo.realm, echo.intent, echo.request, echo.digest, echo.header) != expected",
    ): "a challenge's public parameters, after its id (the HMAC) was compared in constant time",
    ("wallet/cards.py", "code.card_id != card.card_key"): "card ids (card_key is the row key)",
    ("wallet/store.py", "_meta.c.key == key"): "SQL: a metadata row name",
    ("store/_admin.py", "operator_tokens.c.token_hash == token_hash"): (
        "SQL lookup by SHA-256 of the token; auth.py compares again in constant time"
    ),
}


def secret_comparisons() -> list[tuple[str, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(_is_length(operand) for operand in operands):
                continue  # comparing lengths reveals nothing a length prefix does not
            if any(_is_secretish(operand) for operand in operands):
                found.append((str(path.relative_to(SRC)), ast.unparse(node)))
    return found


def _is_length(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "len"


def _is_secretish(node: ast.expr) -> bool:
    name = _terminal_name(node)
    if name is None or isinstance(node, ast.Constant):
        return False
    return not SECRET_WORDS.isdisjoint(re.split(r"[_\W]+", name.lower()))


def _terminal_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _terminal_name(node.value)
    if isinstance(node, ast.Call):
        return _terminal_name(node.func)
    return None


def test_secrets_are_compared_in_constant_time_only() -> None:
    found = set(secret_comparisons())
    unreviewed = sorted(found - set(REVIEWED))
    assert unreviewed == [], "compare secrets with constant_time_eq (or review and allow-list)"
    assert sorted(set(REVIEWED) - found) == [], "stale allow-list entries: remove them"


def test_the_scan_flags_a_plain_comparison_of_a_mac() -> None:
    tree = ast.parse("if expected_mac != sigma: raise InvalidPayment()")
    compare = next(n for n in ast.walk(tree) if isinstance(n, ast.Compare))
    assert any(_is_secretish(x) for x in [compare.left, *compare.comparators])
    tree = ast.parse("if staged == sent_total: pass")
    compare = next(n for n in ast.walk(tree) if isinstance(n, ast.Compare))
    assert not any(_is_secretish(x) for x in [compare.left, *compare.comparators])


def test_only_the_primitives_module_calls_compare_digest() -> None:
    users = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "compare_digest" in path.read_text()
    ]
    assert users == ["core/primitives.py"]
