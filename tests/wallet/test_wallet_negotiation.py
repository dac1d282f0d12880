"""The wallet speaks the draft's optional parts to a real vendor over loopback.

- ``Accept-Payment`` (draft-httpauth-payment-02, "Client Payment Preferences"): the wallet
  (library, httpx ``PaymentAuth``, ``farthing wallet get``) names the methods of the cards
  that may pay the site, in its preference order, and the vendor offers only those, in
  that order.
- ``Payment-Authorization`` (-02, "Credential Header Selection"): a request that keeps
  ``Authorization`` for the app gets challenges with ``header="Payment-Authorization"``; the
  wallet pays them in that field, and the app's ``Authorization`` goes through unchanged.

The vendor is farthing's own (:func:`build_vendor` over a SQLite store) served by uvicorn
on 127.0.0.1; a recording layer around it notes what crossed the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from typer.testing import CliRunner

from farthing.cli import app as cli_app
from farthing.core import cardcode
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.payment_auth import parse_challenges
from farthing.paywall.app import build_vendor
from farthing.store import Store, open_store
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.wallet import DEFAULT_PREFERENCE, Wallet
from tests.paywall.helpers import SETTINGS, content, issue_chain_cards, issue_prbg_cards, prices
from tests.servers import app_server

pytestmark = pytest.mark.xdist_group("uvicorn")
PASSPHRASE = "negotiating wallet"
PRBG_FIRST = ("szm:prbg", "szm:chain", "hll:mac", "payword")


@dataclass
class Exchange:
    """One request as the vendor received it and the answer it sent."""

    headers: dict[str, str]
    status: int = 0
    answer: list[tuple[str, str]] = field(default_factory=list)

    def offered(self) -> list[str]:
        """The methods of the answer's Payment challenges, in their order."""
        fields = [value for name, value in self.answer if name == "www-authenticate"]
        return [challenge.method for challenge in parse_challenges(fields)]


class Recorder:
    """ASGI layer around the vendor noting each request's headers and the answer's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange({k.decode(): v.decode() for k, v in scope["headers"]})
        self.exchanges.append(exchange)

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.answer = [(k.decode(), v.decode()) for k, v in message["headers"]]
            await send(message)

        await self.app(scope, receive, noting)

    def paid(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.status == 200]

    def refused(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.status == 402]


@dataclass
class Vendor:
    base: str
    store: Store
    recorder: Recorder

    def codes(self, seed: str) -> tuple[str, str]:
        """Printed codes of a fresh chain card and a fresh PRBG card of this vendor."""
        (chain,) = issue_chain_cards(self.store, 1, seed=f"{seed}-chain")
        (prbg,) = issue_prbg_cards(self.store, 1, seed=f"{seed}-prbg")
        return (
            cardcode.to_text(szm_chain.to_card_code(chain, realm=SETTINGS.realm)),
            cardcode.to_text(szm_prbg.to_card_code(prbg, realm=SETTINGS.realm)),
        )


@pytest.fixture
def vendor(tmp_path: Path) -> Iterator[Vendor]:
    store = open_store(str(tmp_path / "vendor.sqlite"))
    apps = build_vendor(SETTINGS, content=content(), prices=prices(), store=store)
    recorder = Recorder(apps.app)
    try:
        with app_server(recorder) as base:
            yield Vendor(base, store, recorder)
    finally:
        store.close()


def wallet_with(
    path: Path, vendor: Vendor, seed: str, kinds: tuple[str, ...], **options: object
) -> Wallet:
    chain, prbg = vendor.codes(seed)
    wallet = Wallet.create(path, PASSPHRASE, **options)  # type: ignore[arg-type]
    for kind in kinds:
        wallet.add_szm_code(chain if kind == "chain" else prbg, site=vendor.base, label=kind)
    return wallet


def test_the_wallet_names_the_methods_it_holds_and_is_offered_only_those(
    tmp_path: Path, vendor: Vendor
) -> None:
    """Before: no ``Accept-Payment``; the 402 offered ``[szmchain, szmprbg]`` to a wallet
    holding a PRBG card only."""
    with (
        wallet_with(tmp_path / "w.sqlite", vendor, "only-prbg", ("prbg",)) as wallet,
        httpx.Client(auth=PaymentAuth(wallet), timeout=10) as client,
    ):
        answer = client.get(vendor.base + "/articles/a")
    assert answer.status_code == 200
    assert answer.text == "secret article a"
    (asked,) = vendor.recorder.refused()
    assert asked.headers["accept-payment"] == "szmprbg/charge"
    assert asked.offered() == ["szmprbg"]


def test_the_wallets_preference_orders_the_vendors_challenges(
    tmp_path: Path, vendor: Vendor
) -> None:
    """The vendor's own order is szmchain, szmprbg; the wallet prefers PRBG and says so."""
    path = tmp_path / "w.sqlite"
    kinds = ("chain", "prbg")
    with (
        wallet_with(path, vendor, "both", kinds, preference=PRBG_FIRST) as wallet,
        httpx.Client(auth=PaymentAuth(wallet), timeout=10) as client,
    ):
        assert client.get(vendor.base + "/articles/a").status_code == 200
        assert wallet.history()[0].method == "szm:prbg"
    (asked,) = vendor.recorder.refused()
    assert asked.headers["accept-payment"] == "szmprbg/charge, szmchain/charge;q=0.9"
    assert asked.offered() == ["szmprbg", "szmchain"]


def test_farthing_wallet_get_sends_accept_payment(tmp_path: Path, vendor: Vendor) -> None:
    """The CLI: ``--method szm:prbg`` puts PRBG first; ``--card`` names that card only."""
    chain, prbg = vendor.codes("cli")
    runner = CliRunner(
        env={
            "FARTHING_WALLET": str(tmp_path / "cli.sqlite"),
            "FARTHING_WALLET_PASSPHRASE": PASSPHRASE,
        }
    )

    def run(*args: str) -> str:
        result = runner.invoke(cli_app, ["wallet", *args])
        assert result.exit_code == 0, (args, result.output)
        return result.output

    run("init")
    run("add-card", "szm", chain, "--site", vendor.base, "--label", "c")
    run("add-card", "szm", prbg, "--site", vendor.base, "--label", "p")
    run("get", vendor.base + "/articles/a", "--method", "szm:prbg", "-o", str(tmp_path / "a"))
    run("get", vendor.base + "/articles/b", "--card", "c", "-o", str(tmp_path / "b"))
    assert (tmp_path / "a").read_text() == "secret article a"
    assert (tmp_path / "b").read_text() == "secret article b"
    first, second = vendor.recorder.refused()
    assert first.headers["accept-payment"] == "szmprbg/charge, szmchain/charge;q=0.9"
    assert first.offered() == ["szmprbg", "szmchain"]
    assert second.headers["accept-payment"] == "szmchain/charge"
    assert second.offered() == ["szmchain"]


def test_a_challenge_selecting_payment_authorization_is_paid_there(
    tmp_path: Path, vendor: Vendor
) -> None:
    """Before: the wallet skipped such challenges and paid nothing (NO_CARD_FITS). Now it
    pays in ``Payment-Authorization``, the app's Bearer token goes through, and the next
    article is paid up front the same way (the paid answer's fresh challenge keeps
    ``header``)."""
    kinds = ("chain",)
    with (
        wallet_with(tmp_path / "w.sqlite", vendor, "header", kinds) as wallet,
        httpx.Client(
            auth=PaymentAuth(wallet), timeout=10, headers={"Authorization": "Bearer app-token"}
        ) as client,
    ):
        first = client.get(vendor.base + "/articles/a")
        second = client.get(vendor.base + "/articles/b")
    assert (first.status_code, first.text) == (200, "secret article a")
    assert (second.status_code, second.text) == (200, "secret article b")
    statuses = [e.status for e in vendor.recorder.exchanges]
    assert statuses == [402, 200, 200]
    asked = vendor.recorder.exchanges[0]
    assert 'header="Payment-Authorization"' in dict(asked.answer)["www-authenticate"]
    for paid in vendor.recorder.paid():
        assert paid.headers["authorization"] == "Bearer app-token"
        assert paid.headers["payment-authorization"].startswith("Payment ")


def test_the_default_preference_is_what_accept_payment_follows(
    tmp_path: Path, vendor: Vendor
) -> None:
    with wallet_with(tmp_path / "w.sqlite", vendor, "default", ("prbg", "chain")) as wallet:
        assert DEFAULT_PREFERENCE[:2] == ("szm:chain", "szm:prbg")
        accept = wallet.accept_payment(vendor.base + "/articles/a")
        assert accept == "szmchain/charge, szmprbg/charge;q=0.9"
        assert wallet.accept_payment("https://elsewhere.example/articles/a") is None


def test_a_refused_payment_gets_challenges_ordered_by_accept_payment(
    tmp_path: Path, vendor: Vendor
) -> None:
    """-02: the fresh challenges of a refusal follow ``Accept-Payment`` too. Before: the
    402 to a replayed credential with ``Accept-Payment: szmchain/charge`` offered
    ``[szmchain, szmprbg]``; now ``[szmchain]``."""
    with (
        wallet_with(tmp_path / "w.sqlite", vendor, "refused", ("chain",)) as wallet,
        httpx.Client(auth=PaymentAuth(wallet), timeout=10) as client,
    ):
        assert client.get(vendor.base + "/articles/a").status_code == 200
    paid = vendor.recorder.paid()[0]
    headers = {
        "Accept-Payment": "szmchain/charge",
        "Authorization": paid.headers["authorization"],
    }
    replayed = httpx.get(vendor.base + "/articles/b", headers=headers, timeout=10)
    assert replayed.status_code == 402
    refusal = vendor.recorder.exchanges[-1]
    assert refusal.offered() == ["szmchain"]
