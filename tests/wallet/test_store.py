"""The wallet file: passphrase, sealed secrets, permissions, duplicates, format."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farthing.core import cardcode
from farthing.core.errors import (
    Conflict,
    ErrorCode,
    LocalProtocolError,
    MalformedMessage,
    ResourceBusy,
)
from farthing.core.money import Denomination
from farthing.core.schemes import szm_chain
from farthing.http.methods.szm import SzmRequest
from farthing.http.payment_auth import Challenge
from farthing.testing import DeterministicRandom, FixedClock
from farthing.wallet.secretbox import MINIMUM_COST, KdfParams, SecretBox, record_id
from farthing.wallet.store import WalletStore
from farthing.wallet.testing import cheap_wallet_kdf
from farthing.wallet.wallet import Wallet

EUR = Denomination(currency="EUR", unit_micros=1000)
SITE = "https://news.test"


def chain_card(seed: str = "card") -> szm_chain.ChainCard:
    _, card = szm_chain.issue_card(
        b"M" * 32, DeterministicRandom(seed), length=10, denomination=EUR, expires_at=2**40
    )
    return card


def challenge() -> Challenge:
    return Challenge(
        id="cid",
        realm="news",
        method="szmchain",
        intent="charge",
        request=SzmRequest(amount=1000, currency="EUR", resource="/a/*").to_json(),
        expires=4_000_000_000,
    )


# --- the secret box ---------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(plaintext=st.binary(max_size=300), key=st.binary(min_size=1, max_size=40))
def test_sealed_values_open_only_for_their_record(plaintext: bytes, key: bytes) -> None:
    box = SecretBox(b"k" * 32, DeterministicRandom("n"))
    sealed = box.seal(record_id("cards", key, "secret"), plaintext)
    if len(plaintext) >= 16:  # shorter strings may turn up in random bytes by chance
        assert plaintext not in sealed
    assert box.open(record_id("cards", key, "secret"), sealed) == plaintext
    with pytest.raises(LocalProtocolError) as caught:
        box.open(record_id("cards", key + b"x", "secret"), sealed)
    assert caught.value.code is ErrorCode.WALLET_LOCKED
    with pytest.raises(LocalProtocolError):
        box.open(record_id("cards", key, "state"), sealed)


def test_kdf_parameters_round_trip_and_are_checked() -> None:
    params = KdfParams.fresh(DeterministicRandom("salt"))
    assert KdfParams.from_json(params.to_json()) == params
    for bad in (
        {"memoryKiB": 4},
        {"memoryKiB": 1 << 40},
        {"passes": 0},
        {"lanes": 0},
        {"passes": "3"},
        {"kdf": "pbkdf2"},
        {"salt": "AAAA"},
    ):
        with pytest.raises(MalformedMessage):
            KdfParams.from_json({**params.to_json(), **bad})


def test_same_passphrase_different_salt_gives_different_keys() -> None:
    one = SecretBox.derive("pw", KdfParams.fresh(DeterministicRandom("a")), bytes)
    two = SecretBox.derive("pw", KdfParams.fresh(DeterministicRandom("b")), bytes)
    with pytest.raises(LocalProtocolError, match="wrong passphrase"):
        two.verify_check(one.check_value())


# --- the passphrase KDF: Argon2id, with a floor enforced on reading -----------------------


def stored_kdf(path: Path) -> dict[str, object]:
    with sqlite3.connect(path) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'kdf'").fetchone()
    document: dict[str, object] = json.loads(value)
    return document


@pytest.mark.real_kdf
def test_a_new_wallet_uses_argon2id_at_no_less_than_the_floor(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    Wallet.create(path, "pw").close()
    kdf = stored_kdf(path)
    assert kdf["kdf"] == "argon2id"
    assert kdf["memoryKiB"] == 64 * 1024 >= MINIMUM_COST.memory_kib == 19 * 1024
    assert kdf["passes"] == 3 >= MINIMUM_COST.passes == 2
    Wallet.open(path, "pw").close()


@pytest.mark.real_kdf
def test_a_wallet_under_the_floor_is_refused_and_told_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with cheap_wallet_kdf():
        Wallet.create(path, "pw").close()
    assert stored_kdf(path)["memoryKiB"] == 64
    with pytest.raises(LocalProtocolError, match="farthing wallet upgrade") as refused:
        Wallet.open(path, "pw")
    assert refused.value.code is ErrorCode.KDF_TOO_WEAK
    assert "64 KiB" in refused.value.message


@pytest.mark.real_kdf
@pytest.mark.parametrize("n", [2**10, 2**15, 2**17])
def test_a_wallet_from_before_argon2id_is_refused(tmp_path: Path, n: int) -> None:
    path = tmp_path / "w.sqlite"
    with cheap_wallet_kdf():
        Wallet.create(path, "pw").close()
    scrypt = {"kdf": "scrypt", "n": n, "r": 8, "p": 1, "salt": "A" * 22}
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'kdf'", (json.dumps(scrypt).encode(),))
    with pytest.raises(LocalProtocolError, match="farthing wallet upgrade") as refused:
        Wallet.open(path, "pw")
    assert refused.value.code is ErrorCode.KDF_TOO_WEAK


@pytest.mark.real_kdf
def test_upgrade_reseals_every_secret_under_strong_parameters(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    card = chain_card()
    with cheap_wallet_kdf(), Wallet.create(path, "pw") as wallet:
        wallet.add_szm_card(szm_chain.to_card_code(card, realm="news"), site=SITE)
        first = wallet.pay("https://news.test/a/b", [challenge()])
    with pytest.raises(LocalProtocolError, match="wrong passphrase"):
        WalletStore.upgrade(path, "wrong", rng=os.urandom)
    assert stored_kdf(path)["memoryKiB"] == 64  # untouched by the failed attempt
    assert WalletStore.upgrade(path, "pw", rng=os.urandom) is True
    assert stored_kdf(path)["memoryKiB"] == 64 * 1024
    assert WalletStore.upgrade(path, "pw", rng=os.urandom) is False  # nothing left to do
    with Wallet.open(path, "pw") as wallet:  # the production floor now admits it
        second = wallet.pay("https://news.test/a/b", [challenge()])
    assert second.index == first.index + 1


# --- the file ---------------------------------------------------------------------------


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    Wallet.create(path, "right").close()
    with pytest.raises(LocalProtocolError, match=r"^wrong passphrase$") as caught:
        Wallet.open(path, "wrong")
    assert caught.value.code is ErrorCode.WRONG_PASSPHRASE  # a damaged secret is WALLET_LOCKED
    Wallet.open(path, "right").close()


def test_a_wallet_locked_by_another_process_is_busy_not_misuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wallet file held by another writer is an outside failure, with SQLite's error as
    its cause: try again later (before: LocalProtocolError(INTERNAL), our own fault)."""
    import farthing.wallet.store as wallet_store

    monkeypatch.setattr(wallet_store, "_BUSY_TIMEOUT_S", 0)
    monkeypatch.setattr(
        wallet_store, "_PRAGMAS", (*wallet_store._PRAGMAS[:-1], "PRAGMA busy_timeout=0")
    )
    path = tmp_path / "w.sqlite"
    Wallet.create(path, "pw").close()
    with Wallet.open(path, "pw") as wallet, _held_by_another_writer(path):
        with pytest.raises(ResourceBusy) as caught:
            wallet.add_szm_card(szm_chain.to_card_code(chain_card(), realm="news"), site=SITE)
        with pytest.raises(ResourceBusy) as at_open:  # opening writes too (new tables)
            Wallet.open(path, "pw")
    assert caught.value.code is at_open.value.code is ErrorCode.WALLET_BUSY
    assert isinstance(caught.value.__cause__, Exception)
    assert not isinstance(caught.value, LocalProtocolError)
    with Wallet.open(path, "pw") as wallet:  # the other writer is done: it works again
        wallet.add_szm_card(szm_chain.to_card_code(chain_card(), realm="news"), site=SITE)


@contextmanager
def _held_by_another_writer(path: Path) -> Iterator[None]:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_missing_file_and_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError) as missing:
        Wallet.open(tmp_path / "nope.sqlite", "pw")
    assert missing.value.code is ErrorCode.NOT_FOUND
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE x (y)").connection.close()
    with pytest.raises(LocalProtocolError, match="not a farthing wallet") as caught:
        Wallet.open(foreign, "pw")
    assert caught.value.code is ErrorCode.UNKNOWN_VERSION
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LocalProtocolError, match="not a farthing wallet"):
        Wallet.open(junk, "pw")


def test_create_refuses_an_existing_file_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "w.sqlite"
    Wallet.create(path, "pw").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(Conflict):
        Wallet.create(path, "other")
    Wallet.open(path, "pw").close()  # untouched


def test_secrets_are_not_in_the_file_in_the_clear(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    card = chain_card()
    code = szm_chain.to_card_code(card, realm="news")
    with Wallet.create(path, "pw") as wallet:
        wallet.add_szm_card(code, site=SITE)
        wallet.pay("https://news.test/a/b", [challenge()])
        on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert card.card_id in on_disk  # public: the card is a pseudonym the vendor sees anyway
    assert card.secret not in on_disk
    assert cardcode.encode_card(code) not in on_disk


def test_a_card_cannot_be_added_twice(tmp_path: Path) -> None:
    code = szm_chain.to_card_code(chain_card(), realm="news")
    with Wallet.create(tmp_path / "w", "pw") as wallet:
        wallet.add_szm_card(code, site=SITE)
        with pytest.raises(Conflict):
            wallet.add_szm_card(code, site=SITE, label="again")
        with pytest.raises(Conflict):
            wallet.add_szm_card(
                szm_chain.to_card_code(chain_card("other"), realm="news"),
                site=SITE,
                label=wallet.cards()[0].label,
            )
        assert len(wallet.cards()) == 1


def test_a_secret_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with Wallet.create(path, "pw") as wallet:
        wallet.add_szm_card(szm_chain.to_card_code(chain_card("one"), realm="news"), site=SITE)
        wallet.add_szm_card(szm_chain.to_card_code(chain_card("two"), realm="other"), site=SITE)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE cards SET secret = (SELECT secret FROM cards WHERE id = 2) WHERE id = 1")
    db.close()
    with Wallet.open(path, "pw") as wallet, pytest.raises(LocalProtocolError) as caught:
        wallet.pay("https://news.test/a/b", [challenge()])
    assert caught.value.code is ErrorCode.WALLET_LOCKED
    with Wallet.open(path, "pw") as wallet:
        assert wallet.cards()[0].spent == 0


def test_card_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    clock = FixedClock()
    with Wallet.create(path, "pw", clock=clock) as wallet:
        wallet.add_szm_code(
            cardcode.to_text(szm_chain.to_card_code(chain_card(), realm="news")), site=SITE
        )
        assert wallet.pay("https://news.test/a/b", [challenge()]).index == 1
    with Wallet.open(path, "pw", clock=clock) as wallet:
        assert wallet.pay("https://news.test/a/b", [challenge()]).index == 2
        assert wallet.balances() == {"EUR": 8000}
        assert [h.position for h in wallet.history()] == [2, 1]


def test_a_newer_wallet_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    Wallet.create(path, "pw").close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = CAST('2' AS BLOB) WHERE key = 'format'")
    db.close()
    with pytest.raises(LocalProtocolError, match="wallet format 2") as caught:
        Wallet.open(path, "pw")
    assert caught.value.code is ErrorCode.UNKNOWN_VERSION


def test_a_file_from_before_the_pending_table_gets_it_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite"
    with Wallet.create(path, "pw") as wallet:
        wallet.add_szm_card(szm_chain.to_card_code(chain_card(), realm="news"), site=SITE)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE pending")
        db.execute("DROP TABLE refusals")
    db.close()
    with Wallet.open(path, "pw") as wallet:
        assert wallet.pay("https://news.test/a/b", [challenge()]).index == 1
