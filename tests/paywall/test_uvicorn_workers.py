"""End to end over loopback: a vendor with two uvicorn workers on one SQLite store.

The same payment sent many times at once, across both worker processes, is charged once
(the copies are retries of it);
overlapping chain indexes of one card never take more than the card's state says.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from farthing.core.encoding import b64url_encode
from farthing.core.schemes import szm_chain
from farthing.http.payment_auth import (
    Challenge,
    Credential,
    Receipt,
    format_credential,
    parse_challenges,
)
from farthing.store import open_store
from tests.paywall.helpers import KEYS, issue_chain_cards
from tests.servers import uvicorn_server

pytestmark = pytest.mark.xdist_group("uvicorn")
# Cards expire relative to the helpers' fixed NOW, which is in the future of the real clock.


def write_config(folder: Path) -> Path:
    goods = folder / "goods" / "articles"
    goods.mkdir(parents=True)
    (goods / "a.txt").write_text("secret article a")
    config = folder / "vendor.toml"
    config.write_text(
        'realm = "news"\n'
        'database = "vendor.sqlite"\n'
        'content_dir = "goods"\n'
        "[prices]\n"
        '"/articles/*" = "2000 EUR"\n'
        "[szm]\n"
        f'chain_master = "{KEYS.chain_master.hex()}"\n'
        f'prbg_master = "{KEYS.prbg_master.hex()}"\n'
    )
    return config


def credential(challenge: Challenge, payment: szm_chain.Payment) -> dict[str, str]:
    payload = {"payment": b64url_encode(szm_chain.encode_payment(payment))}
    return {"authorization": format_credential(Credential.answering(challenge, payload))}


def test_double_spend_across_two_workers_is_accepted_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    store = open_store(str(tmp_path / "vendor.sqlite"))
    cards = issue_chain_cards(store, 3)
    env = {"FARTHING_VENDOR_CONFIG": str(config)}
    with (
        uvicorn_server(
            "farthing.paywall.serve:app_from_env",
            env=env,
            workers=2,
            log_path=tmp_path / "server.log",
        ) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        first = client.get("/articles/a.txt")
        assert first.status_code == 402
        challenge = parse_challenges(first.headers.get_list("www-authenticate"))[0]
        # Many copies of one payment, at once, over many connections.
        _, payment, _ = szm_chain.next_payment(cards[0], 2, now=challenge.expires - 300)
        headers = credential(challenge, payment)

        def spend(_: int) -> tuple[int, object]:
            with httpx.Client(base_url=base, timeout=10) as own:
                response = own.get("/articles/a.txt", headers=headers)
                reason = response.json()["reason"] if response.status_code == 402 else None
                return response.status_code, reason

        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(spend, range(40)))
        # Overlapping indexes of one card: 2, 4 and 6 sent together.
        card = cards[1]
        overlapping = []
        for _ in range(3):
            # Each under its own challenge (an id pays once), so only the card decides.
            own = parse_challenges(
                client.get("/articles/a.txt").headers.get_list("www-authenticate")
            )[0]
            card, p, _ = szm_chain.next_payment(card, 2, now=challenge.expires - 300)
            overlapping.append(credential(own, p))
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(
                pool.map(
                    lambda h: httpx.get(base + "/articles/a.txt", headers=h, timeout=10),
                    overlapping,
                )
            )
    # Charged once. A copy that meets a delivery of that payment in flight (in its worker,
    # or on the other within DELIVERY_LEASE) is refused as in progress; one that comes
    # after is served as a retry (docs/http.md, "Retrying a paid request").
    assert (200, None) in statuses
    assert set(statuses) <= {(200, None), (402, "x-payment-in-progress")}, statuses
    row = store.szm_card(cards[0].card_id)
    assert row is not None
    assert row.spent == 2
    accepted_units = 0
    for response in results:
        if response.status_code == 200:
            receipt = response.headers["payment-receipt"]
            accepted_units += int(str(Receipt.from_header(receipt).extra["units"]))
    row1 = store.szm_card(cards[1].card_id)
    assert row1 is not None
    assert accepted_units == row1.spent
    assert any(r.status_code == 200 for r in results)
