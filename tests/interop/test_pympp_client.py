"""pympp's own httpx client transport pays a real ``farthing vendor serve`` from a farthing
wallet (issue 13, "Interoperability"), with each SZM protocol and with PayWord.

pympp does the HTTP (it reads the 402, picks the challenge, sends the credential in the
header the challenge selects); farthing's methods plug in as pympp ``ClientMethod`` s
(:class:`farthing.mpp.client.WalletMethods`). The vendor and the issuer (PayWord's broker)
are real servers on loopback, on one store.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_decode
from farthing.core.schemes import szm_chain, szm_prbg
from farthing.http.methods.payword import METHOD as PAYWORD
from farthing.http.methods.szm import CHAIN_METHOD, PRBG_METHOD
from farthing.http.payment_auth import Receipt
from farthing.mpp.client import WalletMethods
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.wallet import Wallet
from tests.reliability.procs import Server, issuer_server
from tests.reliability.world import ARTICLES, REALM, World, build_world
from tests.servers import command_server, free_port

pytestmark = [pytest.mark.xdist_group("reliability-servers"), pytest.mark.anyio]
ARTICLE = "/articles/a.txt"


@dataclass
class Deployment:
    world: World
    issuer: Server
    base: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    folder = tmp_path_factory.mktemp("pympp-client")
    target = str(folder / "farthing.sqlite")
    issuer = issuer_server(
        target, folder / "world" / "issuer.keys.json", workers=1, log_path=folder / "issuer.log"
    )
    world = build_world(folder / "world", target, issuer_url=issuer.base)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve",
        str(world.config_path.parent), "--config", str(world.config_path), "--port", str(port),
    ]  # fmt: skip
    with issuer, command_server(command, port, env={}, log_path=folder / "vendor.log") as base:
        yield Deployment(world, issuer, base)
    world.close()


@pytest.fixture
def wallet(tmp_path: Path) -> Iterator[Wallet]:
    with Wallet.create(tmp_path / "wallet.sqlite", "pass phrase") as opened:
        yield opened


async def buy(wallet: Wallet, base: str, method: str) -> httpx.Response:
    """GET the article through pympp's transport, paying only with farthing's ``method``."""
    methods = WalletMethods(wallet, methods=[method])
    async with httpx.AsyncClient(transport=methods.transport(), base_url=base) as client:
        response = await client.get(ARTICLE)
    await methods.finish(response)
    return response


@pytest.mark.parametrize("method", [CHAIN_METHOD, PRBG_METHOD])
async def test_pympp_buys_with_an_szm_card_and_the_body_opens(
    deployment: Deployment, wallet: Wallet, method: str
) -> None:
    world = deployment.world
    holder = (world.chain_cards if method == CHAIN_METHOD else world.prbg_cards)(1)[0]
    scheme = szm_chain if method == CHAIN_METHOD else szm_prbg
    wallet.add_szm_card(scheme.to_card_code(holder.card, realm=REALM), site=deployment.base)  # type: ignore[attr-defined]
    response = await buy(wallet, deployment.base, method)
    assert response.status_code == 200, response.text
    assert response.text == ARTICLES["a.txt"]  # the sealed body, opened
    receipt = Receipt.from_header(response.headers["payment-receipt"])
    assert receipt.method == method
    assert world.spent(holder) == 2  # taken once by the vendor
    (card,) = wallet.cards()
    assert card.units_left == 60 - 2  # and once by the wallet (world cards hold 60 units)


async def test_pympp_buys_with_payword(deployment: Deployment, wallet: Wallet) -> None:
    world = deployment.world
    wallet.add_payword(world.certificate, world.user_private, site=deployment.base)
    first = await buy(wallet, deployment.base, PAYWORD)
    second = await buy(wallet, deployment.base, PAYWORD)
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert first.text == second.text == ARTICLES["a.txt"]
    history = wallet.history()
    assert [(h.method, h.units, h.position) for h in history] == [
        (PAYWORD, 2, 4),
        (PAYWORD, 2, 2),
    ]
    receipt = Receipt.from_header(second.headers["payment-receipt"])
    commitment = b64url_decode(str(receipt.extra["commitment"]))
    held = world.store.payword_commitment(commitment)
    assert held is not None
    assert held.spent == 4  # each payment taken once by the vendor


async def test_pympp_buys_several_articles_at_once_with_one_card(
    deployment: Deployment, wallet: Wallet
) -> None:
    """Four requests at once through pympp, one card: each waits for the card's turn (without
    it, the wallet's CardInFlight would end three of them), each article is paid once."""
    world = deployment.world
    holder = world.chain_cards(1)[0]
    wallet.add_szm_card(szm_chain.to_card_code(holder.card, realm=REALM), site=deployment.base)  # type: ignore[attr-defined]
    answers = await asyncio.gather(*(buy(wallet, deployment.base, CHAIN_METHOD) for _ in range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert {a.text for a in answers} == {ARTICLES["a.txt"]}
    assert world.spent(holder) == 8
    assert wallet.cards()[0].units_left == 60 - 8


async def test_pympp_with_a_card_another_wallet_spent_catches_up_at_finish(
    deployment: Deployment, wallet: Wallet, tmp_path: Path
) -> None:
    """One card in two wallets: the other one buys twice (farthing's own client), then this
    one buys through pympp. Its payment names an index the card passed. pympp closes each
    402 of a paid try unread before its next try, so the vendor's PAYMENT_STALE position
    reaches the wallet only with the 402 pympp returns, through ``finish``: that request
    ends 402 (nothing taken), the card moves to the vendor's position, and the next request
    pays. (farthing's own PaymentAuth pays the first one already:
    tests/wallet/test_stale_card.py.)"""
    world = deployment.world
    holder = world.chain_cards(1)[0]
    code = szm_chain.to_card_code(holder.card, realm=REALM)  # type: ignore[attr-defined]
    wallet.add_szm_card(code, site=deployment.base)
    with Wallet.create(tmp_path / "other.sqlite", "pass phrase") as other:
        other.add_szm_card(code, site=deployment.base)
        async with httpx.AsyncClient(auth=PaymentAuth(other), base_url=deployment.base) as client:
            for _ in range(2):
                assert (await client.get(ARTICLE)).status_code == 200
    assert world.spent(holder) == 4
    first = await buy(wallet, deployment.base, CHAIN_METHOD)
    assert first.status_code == 402
    assert world.spent(holder) == 4  # nothing taken
    assert wallet.cards()[0].units_left == 60 - 4  # the units the other wallet spent
    second = await buy(wallet, deployment.base, CHAIN_METHOD)
    assert second.status_code == 200
    assert second.text == ARTICLES["a.txt"]
    assert world.spent(holder) == 6
    assert wallet.cards()[0].units_left == 60 - 6
