"""PayWord: the broker credits a commitment once and only upward; the vendor's CAS spend."""

from __future__ import annotations

import time

import pytest

from farthing.core.errors import Conflict
from farthing.core.schemes.payword import OpenCommitment
from farthing.store import Store, VendorCommitmentRow
from tests.store.helpers import UNIT, advance_payword, open_books, race

COMMITMENT = b"M" * 32


def _user(store: Store) -> None:
    with store.transaction() as tx:
        books = open_books(tx)
        tx.payword.add_user(
            user_id="alice", account_id=books.customer, public_key=b"k" * 32,
            credit_limit_units=1000, currency="EUR", unit_micros=UNIT,
        )  # fmt: skip


def test_users_and_certificates_round_trip(store: Store) -> None:
    _user(store)
    with store.transaction() as tx:
        tx.payword.add_certificate(cert_id=b"c" * 32, user_id="alice", cert=b"CERT", expires_at=9)
        user = tx.payword.user("alice")
        cert = tx.payword.certificate(b"c" * 32)
    assert user is not None
    assert (user.public_key, user.credit_limit_units) == (b"k" * 32, 1000)
    assert cert is not None
    assert (cert.user_id, cert.cert, cert.expires_at) == ("alice", b"CERT", 9)
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.payword.add_certificate(cert_id=b"c" * 32, user_id="alice", cert=b"X", expires_at=9)


def test_redemption_is_credited_once_and_only_upward(store: Store) -> None:
    _user(store)
    with store.transaction() as tx:
        assert tx.payword.redeem(COMMITMENT, "shop", "alice", 5, at=1) == 5
        assert tx.payword.redeem(COMMITMENT, "shop", "alice", 5, at=2) == 0
        assert tx.payword.redeem(COMMITMENT, "shop", "alice", 3, at=3) == 0
        assert tx.payword.redeem(COMMITMENT, "shop", "alice", 8, at=4) == 3
        row = tx.payword.redemption(COMMITMENT)
        assert tx.payword.redeemed_units("alice") == 8
    assert row is not None
    assert (row.redeemed_index, row.credited_units, row.at) == (8, 8, 4)


def test_a_commitment_belongs_to_one_vendor(store: Store) -> None:
    _user(store)
    with store.transaction() as tx:
        tx.payword.redeem(COMMITMENT, "shop", "alice", 2, at=1)
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.payword.redeem(COMMITMENT, "other-shop", "alice", 4, at=1)


def test_concurrent_redemptions_credit_the_highest_index_once(store: Store) -> None:
    _user(store)

    def redeem(i: int) -> int:
        return store.run_in_transaction(
            lambda tx: tx.payword.redeem(COMMITMENT, "shop", "alice", 1 + i, at=1)
        )

    credited = race(6, redeem)
    assert sum(credited) == 6
    with store.transaction(readonly=True) as tx:
        row = tx.payword.redemption(COMMITMENT)
    assert row is not None
    assert row.redeemed_index == row.credited_units == 6


def _commitment(store: Store, length: int = 10) -> None:
    with store.transaction() as tx:
        tx.vendor.add_commitment(
            VendorCommitmentRow(
                commitment_id=COMMITMENT, commitment=b"signed", last_value=b"\x00" * 32,
                spent=0, length=length, currency="EUR", unit_micros=UNIT, expires_at=99,
            )
        )  # fmt: skip


def test_vendor_payword_advance_is_a_compare_and_set(store: Store) -> None:
    _commitment(store, length=10)
    assert advance_payword(store, COMMITMENT, 0, 2, b"\x02" * 32)
    assert not advance_payword(store, COMMITMENT, 0, 1, b"\x01" * 32)
    assert not advance_payword(store, COMMITMENT, 2, 11, b"\x0b" * 32)  # past the chain
    assert advance_payword(store, COMMITMENT, 2, 3, b"\x03" * 32)
    row = store.payword_commitment(COMMITMENT)
    assert row is not None
    assert (row.spent, row.last_value) == (3, b"\x03" * 32)
    assert store.payword_commitment(b"?" * 32) is None


def test_vendor_payword_advance_in_a_hot_batch(store: Store) -> None:
    _commitment(store, length=10)
    with store.hot_batch() as hot:
        assert hot.vendor.payword_advance(COMMITMENT, 0, 2, b"\x02" * 32)
        assert not hot.vendor.payword_advance(COMMITMENT, 0, 1, b"\x01" * 32)
    row = store.payword_commitment(COMMITMENT)
    assert row is not None
    assert (row.spent, row.last_value) == (2, b"\x02" * 32)


def test_vendor_threads_racing_on_a_commitment_have_one_winner(store: Store) -> None:
    _commitment(store, length=100)
    wins = race(8, lambda t: advance_payword(store, COMMITMENT, 0, 1 + t, bytes([t]) * 32))
    assert wins.count(True) == 1


def test_vendor_redemption_watermark(store: Store) -> None:
    _commitment(store)
    assert advance_payword(store, COMMITMENT, 0, 4, b"\x04" * 32)
    with store.transaction() as tx:
        assert [c.commitment_id for c in tx.vendor.payword_unredeemed(10)] == [COMMITMENT]
        assert tx.vendor.payword_mark_redeemed(COMMITMENT, 4)
        assert not tx.vendor.payword_mark_redeemed(COMMITMENT, 3)  # never down
        assert not tx.vendor.payword_mark_redeemed(COMMITMENT, 5)  # never past spent
        assert tx.vendor.payword_unredeemed(10) == []


def _admitted(cid: bytes, user_id: str, length: int, expires_at: int) -> OpenCommitment:
    return OpenCommitment(
        commitment_id=cid, user_id=user_id, vendor_id="shop", length=length,
        unit_micros=UNIT, expires_at=expires_at,
    )  # fmt: skip


def test_open_commitments_of_several_users_in_one_read(store: Store) -> None:
    _user(store)
    with store.transaction() as tx:
        alice = tx.payword.user("alice")
        assert alice is not None
        tx.payword.add_user(
            user_id="bob", account_id=alice.account_id, public_key=b"b" * 32,
            credit_limit_units=1000, currency="EUR", unit_micros=UNIT,
        )  # fmt: skip
        for made in (
            _admitted(b"A" * 32, "alice", 10, expires_at=100),
            _admitted(b"B" * 32, "alice", 20, expires_at=50),  # expired before 60
            _admitted(b"C" * 32, "bob", 30, expires_at=100),
        ):
            assert tx.payword.admit(made)
    with store.transaction(readonly=True) as tx:
        found = tx.payword.open_commitments_of(["alice", "bob", "carol"], expired_before=60)
        alone = tx.payword.open_commitments("alice", expired_before=60)
        nobody = tx.payword.open_commitments_of([], expired_before=0)
    assert {user: [c.commitment_id for c in rows] for user, rows in found.items()} == {
        "alice": [b"A" * 32], "bob": [b"C" * 32], "carol": [],
    }  # fmt: skip
    assert alone == found["alice"]
    assert nobody == {}


@pytest.mark.parametrize(
    "store_target", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_locks_taken_together_never_deadlock(store: Store) -> None:
    """Transactions that each take the same locks, named in different orders, in one
    ``lock_keys`` call: they queue, none is aborted as a deadlock (taken in the order
    given, PostgreSQL found a deadlock and aborted one; docs: 40P01)."""
    names = [f"user-{n}".encode() for n in range(5)]

    def hold(i: int) -> str:
        order = names[i:] + names[:i]
        try:
            with store.transaction() as tx:
                tx.lock_keys(order[::-1] if i % 2 else order)
                time.sleep(0.05)  # hold them while the others ask
        except Conflict as error:
            return repr(error.__cause__)
        return "held"

    assert race(6, hold) == ["held"] * 6


def test_admit_many_records_every_row_or_none(store: Store) -> None:
    """The broker's batch write: every row in one statement; an id recorded already (the
    caller's locks broken) is a Conflict and the transaction keeps none of the batch."""
    _user(store)
    first = [_admitted(bytes([n]) * 32, "alice", 10, expires_at=100) for n in range(3)]
    with store.transaction() as tx:
        tx.payword.admit_many(first)
        tx.admin.audit_many("merchant:shop", "payword.commitment.admit", [{"n": 1}, {"n": 2}])
    again = [_admitted(b"\x09" * 32, "alice", 10, expires_at=100), first[0]]
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.payword.admit_many(again)
    with store.transaction(readonly=True) as tx:
        held = tx.payword.open_commitments("alice", expired_before=0)
        audited = tx.admin.audit_entries(10)
    assert sorted(c.commitment_id for c in held) == [c.commitment_id for c in first]
    assert [(a.action, a.detail) for a in audited[:2]] == [
        ("payword.commitment.admit", {"n": 2}),
        ("payword.commitment.admit", {"n": 1}),
    ]
