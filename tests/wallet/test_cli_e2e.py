"""The wallet CLI end to end: a fresh wallet loads every kind of card and pays a running vendor.

An issuer and a vendor run on loopback (the demo's set-up, :func:`demo_world`); the cards are
what the issuer handed out (printed SZM codes, the HLL card file with its key in a SoftHSM2
token, a PayWord certificate and key). Everything else goes through ``farthing wallet``
exactly as a person types it: init, add-card, get --method, history.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from typer.testing import CliRunner, Result

import farthing.cli.wallet as wallet_cli
from farthing.cli import app
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.schemes import hll
from farthing.demo import GOODS, DemoWorld, demo_world
from farthing.wallet.cards import parse_szm_code
from farthing.wallet.pkcs11_card import init_softhsm_token

pytestmark = pytest.mark.xdist_group("demo")

PASSPHRASE = "a fresh cli wallet passphrase"
_SOFTHSM_CONF = "SOFTHSM2_CONF"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoWorld]:
    # The demo points SOFTHSM2_CONF at its own token directory; put back what was there.
    before = os.environ.get(_SOFTHSM_CONF)
    try:
        with demo_world(tmp_path_factory.mktemp("world")) as running:
            yield running
    finally:
        if before is None:
            os.environ.pop(_SOFTHSM_CONF, None)
        else:
            os.environ[_SOFTHSM_CONF] = before


@dataclass(frozen=True)
class Cli:
    """``farthing wallet ...`` on one wallet file, failing the test on a non-zero exit."""

    runner: CliRunner
    folder: Path

    def __call__(self, *args: str) -> Result:
        result = self.runner.invoke(app, ["wallet", *args])
        assert result.exit_code == 0, (args, result.output)
        return result

    def file(self, name: str, text: str) -> str:
        path = self.folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {
        "FARTHING_WALLET": str(tmp_path / "wallet.sqlite"),
        "FARTHING_WALLET_PASSPHRASE": PASSPHRASE,
        "COLUMNS": "200",
    }
    made = Cli(CliRunner(env=env), tmp_path)
    assert "Created wallet" in made("init").output
    return made


def add_payword(cli: Cli, world: DemoWorld) -> None:
    certificate = cli.file("certificate.b64", b64url_encode(world.cards.payword_certificate))
    user_key = cli.file("user.key", b64url_encode(world.cards.payword_key))
    added = cli(
        "add-card", "payword", "--certificate", certificate, "--user-key", user_key,
        "--site", world.vendor_url,
    )  # fmt: skip
    assert "(payword)" in added.output


def buy_with_each(cli: Cli, world: DemoWorld, methods: list[str]) -> list[tuple[str, str]]:
    """``get --method M -o FILE`` once per method, each for another article; what was bought."""
    articles = sorted(name for name in GOODS if name.startswith("articles/"))
    bought = []
    for method, article in zip(methods, articles, strict=False):
        url = f"{world.vendor_url}/{article}"
        target = cli.folder / article.replace("/", "-")
        got = cli("get", url, "-o", str(target), "--method", method)
        assert "Saved" in got.output
        assert target.read_text(encoding="utf-8") == GOODS[article], method  # opened if sealed
        bought.append((url, method))
    return bought


def assert_history_shows(cli: Cli, bought: list[tuple[str, str]]) -> None:
    """Each purchase is a row of the history table: URL, method, and the outcome ``paid``."""
    lines = [line for line in cli("history").output.splitlines() if "http://" in line]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]
    # Columns: When, URL, Method, Card, Units, Paid, Outcome (newest first).
    assert sorted((row[1], row[2], row[6]) for row in rows) == sorted(
        (url, method, "paid") for url, method in bought
    ), rows


def test_a_fresh_wallet_loads_an_szm_code_an_hll_token_and_payword_and_pays_with_each(
    cli: Cli, world: DemoWorld
) -> None:
    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (softhsm2-util not on PATH); run `make sysdeps`")
    hll = world.cards.hll
    assert hll.token is not None, hll.device  # SoftHSM2 is here, so the demo used a token
    added = cli(
        "add-card",
        "szm",
        world.cards.szm_codes["szm:chain"],
        "--label",
        "printed",
        "--site",
        world.vendor_url,
    )
    assert "(szm:chain)" in added.output
    added = cli.runner.invoke(app, [
        "wallet", "add-card", "hll",
        "--card-file", cli.file("hll-card.json", hll.card_json),
        "--pkcs11-module", hll.token.module_path,
        "--token-label", hll.token.token_label,
        "--key-label", hll.token.key_label,
        "--label", "smart card", "--site", world.vendor_url,
    ], env={"FARTHING_CARD_PIN": hll.pin})  # fmt: skip
    assert added.exit_code == 0, added.output
    assert f"PKCS#11 token {hll.token.token_label!r}" in added.output
    add_payword(cli, world)
    listed = cli("cards").output
    assert all(method in listed for method in ("szm:chain", "hll:mac", "payword"))

    bought = buy_with_each(cli, world, ["szm:chain", "hll:mac", "payword", "payword"])
    assert_history_shows(cli, bought)


def test_a_fresh_wallet_without_a_token_pays_with_an_szm_prbg_code_and_payword(
    cli: Cli, world: DemoWorld
) -> None:
    added = cli(
        "add-card",
        "szm",
        world.cards.szm_codes["szm:prbg"],
        "--label",
        "printed",
        "--site",
        world.vendor_url,
    )
    assert "(szm:prbg)" in added.output
    add_payword(cli, world)

    bought = buy_with_each(cli, world, ["szm:prbg", "payword"])
    assert_history_shows(cli, bought)
    assert "98/100" in cli("cards").output  # an article costs 2 units of 0.001 EUR


def test_get_refuses_an_unknown_method_before_paying(cli: Cli, world: DemoWorld) -> None:
    result = cli.runner.invoke(
        app, ["wallet", "get", f"{world.vendor_url}/articles/ocean.txt", "--method", "cash"]
    )
    assert result.exit_code == 1
    assert "unknown payment method 'cash'" in result.output
    assert "Nothing bought yet." in cli("history").output


def test_the_cli_personalises_an_hll_token_and_k_c_is_never_in_the_clear(
    cli: Cli, world: DemoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hll-token-key -> the bank's POST /v1/hll/cards -> add-card hll -> get, on a real
    SoftHSM2 token: the bank's answer (the card file) holds K_C only wrapped, the token holds it
    as a sensitive, non-extractable key, and the card pays the running vendor."""
    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (softhsm2-util not on PATH); run `make sysdeps`")
    token = init_softhsm_token(Path(os.environ[_SOFTHSM_CONF]).parent, label="cli-card")
    monkeypatch.setenv("FARTHING_CARD_PIN", token.user_pin)
    where = ("--pkcs11-module", token.module_path, "--token-label", token.label)
    public_file = cli.folder / "token.pub"
    cli("hll-token-key", *where, "-o", str(public_file))
    request = {
        "customer_id": "alice",
        "units": 50,
        "token_public_key": public_file.read_text(encoding="utf-8").strip(),
    }
    answer = world.setup.operator.post("/v1/hll/cards", json=request)
    assert answer.status_code == 201, answer.text
    card_id = b64url_decode(answer.json()["card_id"])
    card_key = hll.derive_card_key(world.setup.keys.hll_master, card_id)
    for form in (card_key.hex(), b64url_encode(card_key)):
        assert form not in answer.text
    card_file = cli.file("card.json", answer.text)
    assert answer.json()["bank_key"] == b64url_encode(
        hll.card_certification_public_key(world.setup.keys.hll_master)
    )
    added = cli(
        "add-card", "hll", "--card-file", card_file, *where, "--label", "cli card",
        "--site", world.vendor_url,
    )  # fmt: skip
    assert f"PKCS#11 token {token.label!r}" in added.output
    assert card_key not in (cli.folder / "wallet.sqlite").read_bytes()

    with (
        pkcs11.lib(token.module_path)
        .get_token(token_label=token.label)
        .open(user_pin=token.user_pin) as session
    ):
        key = session.get_key(label="hll-card-key")
        assert (key[Attribute.EXTRACTABLE], key[Attribute.SENSITIVE]) == (False, True)
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]
        wrap = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="hll-card-wrap")
        assert (wrap[Attribute.EXTRACTABLE], wrap[Attribute.DECRYPT]) == (False, False)

    url = f"{world.vendor_url}/articles/tundra.txt"
    target = cli.folder / "tundra.txt"
    got = cli("get", url, "-o", str(target), "--method", "hll:mac")
    assert "Saved" in got.output
    assert target.read_text(encoding="utf-8") == GOODS["articles/tundra.txt"]


class LoseFirstPaidAnswer(httpx.BaseTransport):
    """Loopback HTTP to the real vendor; the answer to the first paid request is read and
    then lost (the connection resets after the vendor committed)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.authorizations: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if "authorization" not in request.headers:
            return response
        self.authorizations.append(request.headers["authorization"])
        if len(self.authorizations) == 1:
            response.read()
            response.close()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_an_answer_lost_after_paying_is_got_by_running_the_command_again(
    cli: Cli, world: DemoWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Measured before: the first run paid 2 units, lost the article and ended in a ReadError
    # traceback; the second paid 2 more (wallet 100 -> 96, vendor spent 0 -> 4, one article
    # delivered). Now 100 -> 98 and 0 -> 2.
    batch = world.setup.operator.post(
        "/v1/szm/batches",
        json={
            "protocol": "szm:chain", "count": 1, "units": 100, "unit_micros": 1000,
            "currency": "EUR", "expires_at": int(time.time()) + 86_400,
        },
    ).json()  # fmt: skip
    codes = world.setup.operator.get(f"/v1/szm/batches/{batch['batch_id']}/codes").json()
    code = str(codes["cards"][0]["code"])
    card_id = parse_szm_code(code).card_id
    cli("add-card", "szm", code, "--site", world.vendor_url)
    transport = LoseFirstPaidAnswer()

    def lossy_client(auth: httpx.Auth, timeout: float) -> httpx.Client:
        return httpx.Client(auth=auth, timeout=timeout, transport=transport)

    monkeypatch.setattr(wallet_cli, "make_client", lossy_client)
    url, target = f"{world.vendor_url}/articles/ocean.txt", cli.folder / "ocean.txt"
    lost = cli.runner.invoke(app, ["wallet", "get", url, "-o", str(target)])
    assert lost.exit_code == 1
    assert "broke off" in lost.output
    assert "Traceback" not in lost.output
    vendor_spent = world.setup.store.szm_card(card_id)
    assert vendor_spent is not None
    assert vendor_spent.spent == 2  # the vendor committed; the reader has nothing yet
    assert not target.exists()
    again = cli("get", url, "-o", str(target))
    assert "Saved" in again.output
    assert target.read_text(encoding="utf-8") == GOODS["articles/ocean.txt"]
    assert transport.authorizations[1] == transport.authorizations[0]  # resent as it was
    after = world.setup.store.szm_card(card_id)
    assert after is not None
    assert after.spent == 2  # one article delivered, two units taken
    assert "98/100" in cli("cards").output
    assert_history_shows(cli, [(url, "szm:chain")])


def test_the_card_holder_asks_the_issuer_what_is_left_on_a_card(cli: Cli, world: DemoWorld) -> None:
    cli(
        "add-card",
        "szm",
        world.cards.szm_codes["szm:chain"],
        "--label",
        "printed",
        "--site",
        world.vendor_url,
    )
    asked = cli("card-status", "printed", "--issuer", world.issuer_url)
    assert "units left at the issuer (active)" in asked.output
    unknown = cli.runner.invoke(
        app, ["wallet", "card-status", "nope", "--issuer", world.issuer_url]
    )
    assert unknown.exit_code == 1
    assert "no SZM card labelled 'nope'" in unknown.output
