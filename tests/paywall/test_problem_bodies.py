"""draft-payment-errors-00 problem bodies from a real ``farthing vendor serve``: the draft's
``code`` and ``reason`` beside farthing's ``farthingCode``, and a fault on the payment
path answered as -02's ``internal-payment-error`` (docs/http.md, "Problems")."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from farthing.core.errors import ErrorCode
from farthing.core.schemes import szm_chain
from farthing.store import Store, open_store
from tests.paywall.helpers import issue_chain_cards
from tests.paywall.test_retry_servers import GOOD, challenge_of, credential, write_config
from tests.servers import command_server, free_port

pytestmark = pytest.mark.xdist_group("uvicorn")
PROBLEMS = "https://paymentauth.org/problems/"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Store, Path]]:
    """A real ``farthing vendor serve`` on SQLite: its URL, the store, the database file."""
    target = tmp_path / "vendor.sqlite"
    store = open_store(str(target))
    config = write_config(tmp_path, str(target))
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "farthing"), "vendor", "serve",
        str(tmp_path / "goods"), "--config", str(config), "--port", str(port),
    ]  # fmt: skip
    with command_server(command, port, env={}, log_path=tmp_path / "serve.log") as base:
        yield base, store, target
    store.close()


def test_a_store_fault_while_paying_is_internal_payment_error(
    served: tuple[str, Store, Path],
) -> None:
    """-02 "Error Codes": ``internal-payment-error`` (500) for an unexpected fault while a
    payment is processed. The fault is real: the table the payment's write needs is gone."""
    base, store, target = served
    card = issue_chain_cards(store, 1)[0]
    challenge = challenge_of(base)
    with sqlite3.connect(target) as db:
        db.execute("DROP TABLE vendor_used_challenges")
    _, payment, _ = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
    response = httpx.get(
        base + "/articles/a.txt",
        headers={"authorization": credential(challenge, payment)},
        timeout=10,
    )
    assert response.status_code == 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["cache-control"] == "no-store"
    problem = response.json()
    assert problem["type"] == PROBLEMS + "internal-payment-error"
    assert problem["code"] == "internal_payment_error"
    assert problem["reason"] == "x-internal"
    assert problem["farthingCode"] == ErrorCode.INTERNAL
    assert len(problem["correlationId"]) == 32
    assert "vendor_used_challenges" not in response.text  # errors: no internal state
    assert GOOD not in response.content


def test_a_refusal_carries_the_drafts_code_and_reason_and_our_code(
    served: tuple[str, Store, Path],
) -> None:
    """errors "Fields": a string ``code`` (here -02's type name, errors-00 having none for a
    malformed credential) and an ``x-`` reason; farthing's integer as ``farthingCode``."""
    base, _, _ = served
    refused = httpx.get(
        base + "/articles/a.txt", headers={"authorization": "Payment !!"}, timeout=10
    )
    problem = refused.json()
    assert refused.status_code == 402
    assert problem["type"] == PROBLEMS + "malformed-credential"
    assert problem["code"] == "malformed_credential"
    assert problem["reason"] == "x-malformed-credential"
    assert problem["farthingCode"] == ErrorCode.MALFORMED_CREDENTIAL
