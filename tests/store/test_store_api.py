"""Units of work, error mapping at the store edge, operators, audit, merchants."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

import farthing.store
from farthing.core.errors import Conflict, ErrorCode
from farthing.store import AccountKind, Store, Tx, is_retryable, map_db_errors
from tests.store.helpers import fail_inside


def _busy_error() -> sa_exc.OperationalError:
    orig = sqlite3.OperationalError("database is locked")
    orig.sqlite_errorname = "SQLITE_BUSY"  # type: ignore[attr-defined]
    return sa_exc.OperationalError("BEGIN IMMEDIATE", {}, orig)


def _unique_error() -> sa_exc.IntegrityError:
    orig = sqlite3.IntegrityError("UNIQUE constraint failed: accounts.name")
    orig.sqlite_errorname = "SQLITE_CONSTRAINT_UNIQUE"  # type: ignore[attr-defined]
    return sa_exc.IntegrityError("INSERT", {}, orig)


def test_map_db_errors_translates_at_the_edge() -> None:
    with pytest.raises(Conflict) as busy, map_db_errors():
        raise _busy_error()
    assert busy.value.code is ErrorCode.CONFLICT
    assert is_retryable(busy.value)
    with pytest.raises(Conflict) as duplicate, map_db_errors():
        raise _unique_error()
    assert not is_retryable(duplicate.value)
    assert isinstance(duplicate.value.__cause__, sa_exc.IntegrityError)
    other = sa_exc.OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error"))
    with pytest.raises(sa_exc.OperationalError), map_db_errors():
        raise other
    with pytest.raises(ValueError, match="mine"), map_db_errors():
        raise ValueError("mine")


def test_transaction_commits_or_rolls_back(store: Store) -> None:
    with store.transaction() as tx:
        tx.ledger.create_account("kept", AccountKind.CASH, "EUR")
    with pytest.raises(RuntimeError):
        fail_inside(store, lambda tx: tx.ledger.create_account("dropped", AccountKind.CASH, "EUR"))
    with store.transaction(readonly=True) as tx:
        assert tx.ledger.account_by_name("kept") is not None
        assert tx.ledger.account_by_name("dropped") is None


def test_run_in_transaction_retries_only_retryable_conflicts(store: Store) -> None:
    calls: list[int] = []

    def flaky(tx: Tx) -> int:
        calls.append(1)
        if len(calls) < 3:
            with map_db_errors():
                raise _busy_error()
        return tx.ledger.create_account(f"acct-{len(calls)}", AccountKind.CASH, "EUR")

    created = store.run_in_transaction(flaky, retries=5)
    assert len(calls) == 3
    with store.transaction(readonly=True) as tx:
        account = tx.ledger.account_by_name("acct-3")
    assert account is not None
    assert account.id == created

    def duplicate(tx: Tx) -> None:
        calls.append(1)
        tx.ledger.create_account("acct-3", AccountKind.CASH, "EUR")

    calls.clear()
    with pytest.raises(Conflict):
        store.run_in_transaction(duplicate, retries=5)
    assert len(calls) == 1

    def always_busy(tx: Tx) -> None:
        calls.append(1)
        with map_db_errors():
            raise _busy_error()

    calls.clear()
    with pytest.raises(Conflict):
        store.run_in_transaction(always_busy, retries=2)
    assert len(calls) == 3


def test_operator_tokens_are_found_by_hash_and_revoked(store: Store) -> None:
    token_hash = hashlib.sha256(b"secret-token").digest()
    with store.transaction() as tx:
        operator_id = tx.admin.add_operator_token("ops", token_hash)
        found = tx.admin.operator_by_token_hash(token_hash)
        assert tx.admin.operator_by_token_hash(hashlib.sha256(b"other").digest()) is None
    assert found is not None
    assert (found.id, found.name, found.active) == (operator_id, "ops", True)
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.admin.add_operator_token("again", token_hash)
    with store.transaction() as tx:
        assert tx.admin.revoke_operator_token(operator_id)
        assert not tx.admin.revoke_operator_token(operator_id)
        revoked = tx.admin.operator_by_token_hash(token_hash)
    assert revoked is not None
    assert not revoked.active
    with pytest.raises(ValueError), store.transaction() as tx:
        tx.admin.add_operator_token("raw", b"not-a-hash")


def test_audit_log_keeps_json_details_newest_first(store: Store) -> None:
    with store.transaction() as tx:
        tx.admin.audit("ops", "merchant.add", {"merchant": "shop", "n": 1})
        tx.admin.audit("ops", "card.block", {"card": "ab", "why": ["lost"]})
    with store.transaction(readonly=True) as tx:
        entries = tx.admin.audit_entries(limit=10)
        assert len(tx.admin.audit_entries(limit=1)) == 1
    assert [(e.action, e.detail) for e in entries] == [
        ("card.block", {"card": "ab", "why": ["lost"]}),
        ("merchant.add", {"merchant": "shop", "n": 1}),
    ]
    assert entries[0].at == 1_800_000_000


def test_merchants_round_trip(store: Store) -> None:
    with store.transaction() as tx:
        account = tx.ledger.create_account("shop", AccountKind.MERCHANT, "EUR")
        tx.admin.add_merchant("shop", account, b"\x00sealed\xff")
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.admin.add_merchant("shop", account, b"again")
    with store.transaction(readonly=True) as tx:
        shop = tx.admin.merchant("shop")
        assert tx.admin.merchant("nobody") is None
        assert [m.merchant_id for m in tx.admin.merchants()] == ["shop"]
    assert shop is not None
    assert (shop.account_id, shop.key_sealed) == (account, b"\x00sealed\xff")


def test_public_names_are_exported() -> None:
    names = farthing.store.__all__
    assert names == sorted(names)
    assert all(hasattr(farthing.store, name) for name in names)
