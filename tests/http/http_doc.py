"""The complete exchanges of docs/http.md, made against a live vendor and written or checked.

``python -m tests.http.http_doc --write`` rewrites every block between
``<!-- exchange METHOD -->`` and ``<!-- /exchange METHOD -->`` in docs/http.md with what
the vendor sent now; ``python -m tests.http.http_doc`` prints the difference and exits 1 if
the doc is behind. tests/http/test_http_doc.py checks the same, on every run of the suite.

The vendor is what ``farthing vendor serve`` runs in each worker
(:func:`farthing.paywall.serve.vendor_from_config` over a config file written here, with
fixed keys and cards), built in this process with :mod:`farthing.testing`'s clock and
randomness, and served by uvicorn on 127.0.0.1 with the server's own protocol
(:func:`tests.servers.app_server`). The client is farthing's wallet, with the same clock:
it names the one method in ``Accept-Payment``, makes the credential from the 402's
challenge and opens the answer. Requests go out and answers come back over a raw socket,
so every byte shown is a byte on the wire; the one header that cannot be fixed is
uvicorn's ``date`` (the machine's clock), shown as the app's clock.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import email.utils
import json
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Final

from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.money import Denomination
from farthing.core.primitives import ed25519_public_key
from farthing.core.schemes import hll, payword, szm_chain, szm_prbg
from farthing.http.payment_auth import Receipt, parse_challenges
from farthing.paywall.config import load_vendor_config
from farthing.paywall.serve import vendor_from_config
from farthing.store import open_store
from farthing.testing import DeterministicRandom, FixedClock
from farthing.wallet.cards import HllCardFile
from farthing.wallet.testing import cheap_wallet_kdf
from farthing.wallet.wallet import Wallet
from tests.paywall.helpers import EUR, EXPIRES, KEYS, NOW, issue_chain_cards, issue_prbg_cards
from tests.servers import app_server

DOC: Final = Path(__file__).resolve().parents[2] / "docs" / "http.md"
METHODS: Final = ("szmchain", "szmprbg", "hll", "payword")
SITE: Final = "https://news.example"
HOST: Final = "news.example"
ARTICLE: Final = "/articles/a.txt"
OTHER: Final = "/articles/b.txt"
GOODS: Final = {ARTICLE: b"The first article.\n", OTHER: b"The second article.\n"}
BANK_SEED: Final = b"B" * 32  # the HLL bank's card-certification key (Ed25519 seed)
BROKER_SEED: Final = b"K" * 32  # the PayWord broker's key
USER_SEED: Final = b"U" * 32  # the PayWord user's key
CARD_KEY: Final = b"k" * 32  # the HLL card's K_C
HLL_CARD_ID: Final = b"h" * 16
LABEL: Final = {
    "szmchain": "szm:chain",
    "szmprbg": "szm:prbg",
    "hll": "hll:mac",
    "payword": "payword",
}
_DATE = re.compile(rb"^date: [^\r\n]*", re.MULTILINE | re.IGNORECASE)
_BLOCK = re.compile(
    r"(<!-- exchange (?P<method>[a-z]+) -->\n)(?P<body>.*?)(<!-- /exchange (?P=method) -->)", re.S
)


def http_date(now: int) -> str:
    return email.utils.formatdate(now, usegmt=True)


# --- the vendor and the wallet -------------------------------------------------------------


def write_vendor(folder: Path, sections: str) -> Path:
    """A vendor folder as ``farthing vendor init`` leaves one, with fixed keys; its config."""
    folder.mkdir(parents=True, exist_ok=True)
    goods = folder / "goods"
    for path, body in GOODS.items():
        target = goods / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    (folder / "challenge.key").write_text(("c" * 64) + "\n")
    (folder / "merchant.key").write_text(("m" * 2).encode().hex() * 16 + "\n")
    config = folder / "vendor.toml"
    config.write_text(
        'realm = "news"\n'
        'database = "vendor.sqlite"\n'
        'content_dir = "goods"\n'
        "deposit_interval = 86400\n"
        "[prices]\n"
        '"/articles/*" = "2000 EUR"\n' + sections
    )
    return config


SZM_HLL: Final = (
    "[szm]\n"
    f'chain_master = "{KEYS.chain_master.hex()}"\n'
    f'prbg_master = "{KEYS.prbg_master.hex()}"\n'
    "[hll]\n"
    # Deferred: the vendor takes a certified card's payment without asking the bank (online
    # differs in "mode" and in a round trip to the bank). Deposits go to a port nothing
    # listens on: they are not part of an exchange.
    'issuer_url = "http://127.0.0.1:9"\n'
    'merchant_id = "news-shop"\n'
    'merchant_key_file = "merchant.key"\n'
    "unit_micros = 1000\n"
    f'bank_public_key = "{b64url_encode(ed25519_public_key(BANK_SEED))}"\n'
    'mode = "deferred"\n'
    "risk_limit = 50\n"
    "merchant_cap = 5000\n"
)
# PayWord alone: a vendor that redeems at a broker has it admit each new commitment (one
# round trip to the issuer), which this vendor, without an issuer_url, skips.
PAYWORD: Final = (
    "[payword]\n"
    'vendor_id = "news-shop"\n'
    'broker_id = "broker"\n'
    f'broker_public_key = "{b64url_encode(ed25519_public_key(BROKER_SEED))}"\n'
    "unit_micros = 1000\n"
)


def fill_wallet(wallet: Wallet, folder: Path) -> None:
    """One card of each kind, all for :data:`SITE`; the SZM cards are in the vendor's store."""
    store = open_store(str(folder / "szm" / "vendor.sqlite"))
    try:
        (chain,) = issue_chain_cards(store, 1, seed="http-doc-chain")
        (prbg,) = issue_prbg_cards(store, 1, seed="http-doc-prbg")
    finally:
        store.close()
    wallet.add_szm_card(szm_chain.to_card_code(chain, realm="news"), site=SITE, label="szmchain")
    wallet.add_szm_card(szm_prbg.to_card_code(prbg, realm="news"), site=SITE, label="szmprbg")
    certificate = hll.issue_card_certificate(
        BANK_SEED, card_id=HLL_CARD_ID, denomination=EUR, expires_at=EXPIRES
    )
    card = HllCardFile(
        card_id=HLL_CARD_ID,
        balance=50,
        denomination=EUR,
        card_key=CARD_KEY,
        expires_at=EXPIRES,
        certificate=hll.encode_card_certificate(certificate),
        bank_key=ed25519_public_key(BANK_SEED),
    )
    wallet.add_hll_card(card, site=SITE, label="hll")
    user = payword.issue_certificate(
        BROKER_SEED,
        broker_id="broker",
        user_id="reader",
        user_public_key=ed25519_public_key(USER_SEED),
        credit_limit=1000,
        denomination=Denomination(currency="EUR", unit_micros=1000),
        expires_at=EXPIRES,
    )
    wallet.add_payword(user, USER_SEED, site=SITE, label="payword")


# --- the wire --------------------------------------------------------------------------------


def send(base: str, request: bytes) -> bytes:
    """``request`` as is to the server at ``base``; its whole answer (the request closes)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def request_bytes(path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


@dataclass
class Answer:
    head: str  # status line and headers, the date normalised
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def parse(cls, raw: bytes, now: int) -> Answer:
        head, _, body = raw.partition(b"\r\n\r\n")
        dates = _DATE.findall(head)
        assert len(dates) == 1, head
        assert email.utils.parsedate_to_datetime(dates[0].split(b":", 1)[1].strip().decode())
        head = _DATE.sub(f"date: {http_date(now)}".encode(), head)
        text = head.decode("latin-1").replace("\r\n", "\n")
        headers = []
        for line in text.split("\n")[1:]:
            name, _, value = line.partition(":")
            headers.append((name.lower(), value.strip()))
        return cls(text, headers, body)

    def header(self, name: str) -> str:
        (value,) = [v for k, v in self.headers if k == name]
        return value

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def shown_body(self) -> str:
        content_type = dict(self.headers).get("content-type", "")
        if content_type.startswith(("text/", "application/problem+json", "application/json")):
            return self.body.decode("utf-8")
        encoded = base64.b64encode(self.body).decode("ascii")
        return f"[{len(self.body)} bytes, shown here in base64:]\n{encoded}\n"


# --- one method's exchange ------------------------------------------------------------------


@dataclass
class Exchange:
    """What the doc shows of one method, and the JSON documents for the schema check."""

    method: str
    steps: list[tuple[str, bytes, Answer]] = field(default_factory=list)
    shown: list[list[tuple[str, Any]]] = field(default_factory=list)  # decoded, per step
    documents: list[tuple[str, Any]] = field(default_factory=list)  # (schema, document)
    opened: bytes = b""


def run_method(base: str, wallet: Wallet, clock: FixedClock, method: str) -> Exchange:
    done = Exchange(method)
    url = SITE + ARTICLE
    wallet.pay_only_with(method)
    accept = wallet.accept_payment(url)
    assert accept == f"{method}/charge"
    asked = request_bytes(ARTICLE, [("Accept-Payment", accept)])
    refused = Answer.parse(send(base, asked), clock.now())
    done.steps.append(("The request without a credential, and the 402:", asked, refused))
    challenges = parse_challenges(refused.all("www-authenticate"))
    done.documents += [("problem.json", json.loads(refused.body))]
    done.documents += [(f"{method}.request.json", c.request) for c in challenges]
    done.shown.append(
        [(f"the challenge's `request` ({method}.request.json)", challenges[0].request)]
    )
    payment = wallet.pay(url, challenges)
    paid_request = request_bytes(ARTICLE, [("Authorization", payment.authorization)])
    paid = Answer.parse(send(base, paid_request), clock.now())
    done.steps.append(("The credential, and the 200 with its receipt:", paid_request, paid))
    credential = json.loads(b64url_decode(payment.authorization.removeprefix("Payment ")))
    receipt_header = paid.header("payment-receipt")
    receipt = json.loads(b64url_decode(receipt_header))
    done.documents += [("credential.json", credential)]
    done.documents += [(f"{method}.payload.json", credential["payload"])]
    done.documents += [(f"{method}.receipt.json", receipt)]
    done.shown.append(
        [
            (f"the credential (credential.json, its `payload`: {method}.payload.json)", credential),
            (f"the receipt ({method}.receipt.json)", receipt),
        ]
    )
    fresh = parse_challenges(paid.all("www-authenticate"))
    done.documents += [(f"{method}.request.json", c.request) for c in fresh]
    done.opened = wallet.settle(payment, Receipt.from_header(receipt_header), paid.body, status=200)
    replay = request_bytes(
        OTHER, [("Accept-Payment", accept), ("Authorization", payment.authorization)]
    )
    failed = Answer.parse(send(base, replay), clock.now())
    done.steps.append(
        ("The same credential again, for another article: a 402 problem.", replay, failed)
    )
    done.documents += [("problem.json", json.loads(failed.body))]
    done.shown.append([])
    done.documents += [
        (f"{method}.request.json", c.request)
        for c in parse_challenges(failed.all("www-authenticate"))
    ]
    return done


@contextmanager
def live_vendors(folder: Path) -> Iterator[tuple[dict[str, str], Wallet, FixedClock]]:
    """The vendors served on loopback (one for SZM and HLL, one for PayWord), by method,
    and a wallet holding one card of each method."""
    clock = FixedClock(NOW)
    szm_hll = load_vendor_config(write_vendor(folder / "szm", SZM_HLL))
    pw = load_vendor_config(write_vendor(folder / "payword", PAYWORD))
    with (
        cheap_wallet_kdf(),
        Wallet.create(
            folder / "wallet.sqlite", "http doc", clock=clock, rng=DeterministicRandom("wallet")
        ) as wallet,
    ):
        fill_wallet(wallet, folder)
        first = vendor_from_config(szm_hll, clock=clock, rng=DeterministicRandom("vendor"))
        second = vendor_from_config(pw, clock=clock, rng=DeterministicRandom("payword"))
        with app_server(first.app) as base, app_server(second.app) as payword_base:
            bases = {"szmchain": base, "szmprbg": base, "hll": base, "payword": payword_base}
            yield bases, wallet, clock


def exchanges(folder: Path) -> dict[str, Exchange]:
    with live_vendors(folder) as (bases, wallet, clock):
        return {method: run_method(bases[method], wallet, clock, method) for method in METHODS}


# --- the doc ---------------------------------------------------------------------------------


def render(exchange: Exchange) -> str:
    parts = []
    for (title, request, answer), decoded in zip(exchange.steps, exchange.shown, strict=True):
        shown = request.decode("latin-1").replace("\r\n", "\n").rstrip("\n")
        body = answer.shown_body()
        block = f"{title}\n\n```http\n{shown}\n\n{answer.head}\n\n{body}"
        parts.append(block + ("" if block.endswith("\n") else "\n") + "```\n")
        for what, document in decoded:
            text = json.dumps(document, indent=2, ensure_ascii=False)
            parts.append(f"Decoded, {what}:\n\n```json\n{text}\n```\n")
        if answer.body and answer.shown_body().startswith("["):
            opened = exchange.opened.decode("utf-8")
            parts.append(f"The wallet opens the sealed body to `{opened.strip()}`.\n")
    return "\n".join(parts)


def rendered(folder: Path) -> dict[str, str]:
    return {method: render(done) for method, done in exchanges(folder).items()}


def doc_blocks(text: str) -> dict[str, str]:
    return {m["method"]: m["body"] for m in _BLOCK.finditer(text)}


def with_blocks(text: str, blocks: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        return match[1] + blocks[match["method"]] + match[4]

    return _BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true", help="rewrite docs/http.md's blocks")
    args = parser.parse_args(argv)
    with TemporaryDirectory() as folder:
        blocks = rendered(Path(folder))
    text = DOC.read_text(encoding="utf-8")
    new = with_blocks(text, blocks)
    if args.write:
        DOC.write_text(new, encoding="utf-8")
        return 0
    diff = list(
        difflib.unified_diff(text.splitlines(), new.splitlines(), "doc", "wire", lineterm="")
    )
    print("\n".join(diff) or "docs/http.md shows what the vendor sends")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
