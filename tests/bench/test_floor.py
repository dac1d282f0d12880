"""The profile section's floor (bench/profile.py ``_floor_one``): the straight line it times
does a paid request's real work, not less. Its answer opens with the payment's key (as
the issuer derives it) to the good, under the binding the vendor uses; its receipt and
fresh challenge are well formed and the challenge is this vendor's; the card moved and the
challenge id is taken in the store, committed."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from bench.e2e import BODY, CHAIN_MASTER, PAID_PATH, REALM
from bench.inproc import sqlite_rig
from bench.profile import (
    FLOOR_STEPS,
    _floor,
    _floor_one,
    _Ticks,
    fresh_payments,
)

from farthing.core.encoding import b64url_decode
from farthing.core.schemes import szm_chain
from farthing.core.sealing import open_sealed
from farthing.http.payment_auth import (
    ChallengeBinder,
    Receipt,
    parse_challenges,
    parse_credential,
)


def test_the_floors_answer_is_a_paid_answer_and_its_write_is_stored(tmp_path: Path) -> None:
    with sqlite_rig(tmp_path) as rig:
        store, secret = rig.store, rig.folder.challenge_secret
        (item,) = fresh_payments(store, secret, 1)
        state = item.state
        binder = ChallengeBinder(secret)
        request_b64 = parse_credential(item.line).challenge.request
        prepared = store._prepared
        secrets = {state.card_id: szm_chain.card_secret(CHAIN_MASTER, state.card_id)}
        conn = sqlite3.connect(rig.folder.database, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            headers, sealed = _floor_one(
                item, binder, request_b64, conn, prepared.challenge_use,
                prepared.szm_advance, secrets,
            )  # fmt: skip
            conn.execute("COMMIT")
        finally:
            conn.close()
        row = store.szm_card(state.card_id)
        used = store.challenge_used(b64url_decode(parse_credential(item.line).challenge.id))
    named = dict(headers)
    key = szm_chain.issuer_payment_key(CHAIN_MASTER, state, 1)
    opened = open_sealed(
        key, sealed, method="szm:chain", card_id=state.card_id, index=1, resource=PAID_PATH,
        status=200, content_type="text/plain; charset=utf-8",
    )  # fmt: skip
    assert opened == BODY
    assert int(named[b"content-length"]) == len(sealed)
    receipt = Receipt.from_header(named[b"payment-receipt"].decode())
    assert receipt.method == "szmchain"
    (fresh,) = parse_challenges([named[b"www-authenticate"].decode()])
    binder.verify(fresh.echo(), now=int(time.time()), realm=REALM, request_b64=request_b64)
    assert row is not None
    assert row.spent == 1
    assert used


def test_the_floor_pass_moves_every_card_once(tmp_path: Path) -> None:
    """A whole floor pass (groups of 16 to a commit, an fsync of the WAL file each), and
    an instrumented one: every payment's write applied (the pass raises otherwise), and
    each step of the straight line ran."""
    with sqlite_rig(tmp_path) as rig:
        store, secret = rig.store, rig.folder.challenge_secret
        with store.hot_batch():
            pass  # the WAL file exists once the store has written
        database = Path(rig.folder.database)
        assert os.path.exists(f"{database}-wal")
        per_request, commit = _floor(store, secret, database, 40)
        ticks = _Ticks()
        _floor(store, secret, database, 20, ticks)
    assert per_request > commit > 0
    assert len(ticks.spent) == len(FLOOR_STEPS)
