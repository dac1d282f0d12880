"""Idempotent retry against real servers on loopback (docs/http.md, "Retrying a paid
request"): identical credentials arriving together at a two-worker vendor on SQLite and on
PostgreSQL are charged once, and through a real ``farthing vendor serve`` an answer lost
because the client closed its socket right after sending is got again by sending the same
request again."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    Receipt,
    format_credential,
    parse_challenges,
)
from farthing.store import Store, open_store
from tests.paywall.helpers import KEYS, issue_chain_cards
from tests.servers import command_server, free_port, uvicorn_server

pytestmark = pytest.mark.xdist_group("uvicorn")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
GOOD = b"secret article a"


def write_config(folder: Path, database: str) -> Path:
    goods = folder / "goods" / "articles"
    goods.mkdir(parents=True)
    (goods / "a.txt").write_bytes(GOOD)
    (goods / "b.txt").write_bytes(b"secret article b")
    config = folder / "vendor.toml"
    config.write_text(
        'realm = "news"\n'
        f'database = "{database}"\n'
        'content_dir = "goods"\n'
        "[prices]\n"
        '"/articles/*" = "2000 EUR"\n'
        "[szm]\n"
        f'chain_master = "{KEYS.chain_master.hex()}"\n'
        f'prbg_master = "{KEYS.prbg_master.hex()}"\n'
    )
    return config


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Store]]:
    """The vendor's store: its target for the config, and an open handle for the test."""
    target = (
        str(tmp_path / "vendor.sqlite")
        if request.param == "sqlite"
        else str(request.getfixturevalue("fresh_pg_dsn"))
    )
    store = open_store(target)
    yield target, store
    store.close()


def challenge_of(base: str) -> Challenge:
    first = httpx.get(base + "/articles/a.txt", timeout=10)
    assert first.status_code == 402
    return parse_challenges(first.headers.get_list("www-authenticate"))[0]


def credential(challenge: Challenge, payment: szm_chain.Payment) -> str:
    payload = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
    return format_credential(Credential.answering(challenge, payload))


def opened(response: httpx.Response, key: bytes, payment: szm_chain.Payment) -> bytes:
    return open_sealed(
        key,
        response.content,
        method="szm:chain",
        card_id=payment.card_id,
        index=payment.index,
        resource="/articles/a.txt",
        status=response.status_code,
        content_type=sealed_type(response),
    )


def sealed_type(response: httpx.Response) -> str:
    """The original content type the receipt names (the seal binds it)."""
    sealed = Receipt.from_header(response.headers["payment-receipt"]).extra["sealed"]
    assert isinstance(sealed, dict)
    return str(sealed["contentType"])


def test_identical_requests_at_once_are_charged_once(
    tmp_path: Path, database: tuple[str, Store]
) -> None:
    target, store = database
    card = issue_chain_cards(store, 1)[0]
    config = write_config(tmp_path, target)
    rounds, copies = 5, 2
    with uvicorn_server(
        "farthing.paywall.serve:app_from_env",
        env={"FARTHING_VENDOR_CONFIG": str(config)},
        workers=2,
        log_path=tmp_path / "server.log",
    ) as base:
        answers: list[tuple[bytes, szm_chain.Payment, list[httpx.Response]]] = []
        for _ in range(rounds):
            challenge = challenge_of(base)  # an id pays once: one per payment
            card, payment, key = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
            headers = {"authorization": credential(challenge, payment)}
            start = threading.Barrier(copies)

            def send(
                _: int, headers: dict[str, str] = headers, start: threading.Barrier = start
            ) -> httpx.Response:
                with httpx.Client(base_url=base, timeout=10) as own:
                    start.wait(timeout=10)  # the copies leave together, on their own sockets
                    return own.get("/articles/a.txt", headers=headers)

            with ThreadPoolExecutor(max_workers=copies) as pool:
                answers.append((key, payment, list(pool.map(send, range(copies)))))
    for key, payment, responses in answers:
        # A copy that met the other's delivery in flight (its worker's, or the other's
        # within DELIVERY_LEASE) is refused as in progress; one that came after it ended
        # is a retry. These goods are quick to send, so either may happen here; the slow
        # goods of tests/paywall/test_concurrent_delivery.py make the race certain.
        statuses = sorted(r.status_code for r in responses)
        assert statuses in ([200, 200], [200, 402]), [r.text for r in responses]
        for served in (r for r in responses if r.status_code == 200):
            assert opened(served, key, payment) == GOOD
        for refused in (r for r in responses if r.status_code == 402):
            assert refused.json()["reason"] == "x-payment-in-progress"
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 2 * rounds  # each payment charged once, never twice


def lose_the_answer(base: str, authorization: str) -> None:
    """Send a paid GET on a raw socket and close it at once, before any answer arrives."""
    host, port = base.removeprefix("http://").split(":")
    request = (
        "GET /articles/a.txt HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        f"Authorization: {authorization}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    # SO_LINGER 0: close() resets the connection, as a crashed client or a middlebox would.


def wait_for_spent(store: Store, card_id: bytes, spent: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        row = store.szm_card(card_id)
        assert row is not None
        if row.spent == spent or time.monotonic() > deadline:
            return row.spent
        time.sleep(0.05)


def test_an_answer_lost_on_a_reset_socket_is_got_again(
    tmp_path: Path, database: tuple[str, Store]
) -> None:
    target, store = database
    card = issue_chain_cards(store, 1)[0]
    config = write_config(tmp_path, target)
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve",
        str(tmp_path / "goods"), "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    with command_server(command, port, env={}, log_path=tmp_path / "serve.log") as base:
        challenge = challenge_of(base)
        card, payment, key = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
        authorization = credential(challenge, payment)
        lose_the_answer(base, authorization)
        charged = wait_for_spent(store, card.card_id, 2)
        again = httpx.get(
            base + "/articles/a.txt", headers={"authorization": authorization}, timeout=10
        )
        elsewhere = httpx.get(
            base + "/articles/b.txt", headers={"authorization": authorization}, timeout=10
        )
    assert charged == 2  # the vendor took the payment; its answer never arrived
    assert again.status_code == 200, again.text
    assert opened(again, key, payment) == GOOD
    assert elsewhere.status_code == 402
    assert b"secret" not in elsewhere.content
    row = store.szm_card(card.card_id)
    assert row is not None
    assert row.spent == 2
