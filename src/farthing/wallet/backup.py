"""Wallet backups: one file holding a whole wallet, encrypted under its passphrase.

Format (version 1)::

    farthing-wallet-backup 1\\n
    {"kdf": {...Argon2id parameters...}, "check": "<base64url>"}\\n
    <the sealed snapshot, base64url>\\n

The snapshot is the wallet's SQLite database as ``VACUUM INTO`` writes it (a consistent copy
taken inside one read transaction, so a payment running meanwhile is either in it or not).
It is sealed whole with ChaCha20-Poly1305 under a key Argon2id derives from the passphrase
with fresh parameters (:class:`~farthing.wallet.secretbox.SecretBox`); the check value tells
a wrong passphrase from a damaged file. Card secrets inside stay sealed as in the wallet, so
the restored wallet opens with the same passphrase.

A backup is a snapshot: restored, each card is where it was when the backup was made. A
unit paid after that is paid again from the restored wallet; the vendor answers such a
stale payment with the card's position (PAYMENT_STALE) and the wallet moves the card there
and pays again (docs/wallet.md, "Passphrase and backups").
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Final

from farthing.core.clock import RandomSource
from farthing.core.encoding import b64url_decode, b64url_encode
from farthing.core.errors import Conflict, ErrorCode, LocalProtocolError, MalformedMessage
from farthing.wallet.secretbox import KdfParams, SecretBox, record_id
from farthing.wallet.store import WalletStore

__all__ = ["export_backup", "import_backup"]

_MAGIC: Final = b"farthing-wallet-backup 1"
_RECORD: Final = record_id("backup", b"", "snapshot")
_NOT_A_BACKUP: Final = "is not a farthing wallet backup"
_MAX_BACKUP: Final = 1 << 30  # base64url characters: a wallet of a gigabyte is not one


def export_backup(wallet: Path, passphrase: str, target: Path, *, rng: RandomSource) -> int:
    """Write an encrypted backup of ``wallet`` to ``target`` (new, owner-only); return its
    size. WRONG_PASSPHRASE if ``passphrase`` does not open the wallet; Conflict if
    ``target`` exists."""
    WalletStore.open(wallet, passphrase, rng=rng).close()  # the passphrase opens it
    snapshot = _snapshot(wallet)
    params = KdfParams.fresh(rng)
    box = SecretBox.derive(passphrase, params, rng)
    header = {"kdf": params.to_json(), "check": b64url_encode(box.check_value())}
    body = b"\n".join(
        (
            _MAGIC,
            json.dumps(header, sort_keys=True).encode(),
            b64url_encode(box.seal(_RECORD, snapshot)).encode(),
        )
    )
    _write_new(target, body + b"\n")
    return len(body) + 1


def import_backup(source: Path, passphrase: str, target: Path, *, rng: RandomSource) -> None:
    """Restore the backup ``source`` as the new wallet file ``target``. Raises
    UNKNOWN_VERSION (not a backup, or damaged), WRONG_PASSPHRASE, Conflict (``target``
    exists)."""
    if target.exists():
        raise Conflict(f"a wallet already exists at {target}")
    box, sealed = _read_backup(source, passphrase, rng)
    snapshot = box.open(_RECORD, sealed)
    _write_new(target, snapshot)
    try:
        WalletStore.open(target, passphrase, rng=rng).close()
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _snapshot(wallet: Path) -> bytes:
    with tempfile.TemporaryDirectory(prefix="farthing-backup-") as folder:
        copy = Path(folder) / "wallet.sqlite"
        source = sqlite3.connect(f"file:{wallet}?mode=ro", uri=True)
        try:
            source.execute("VACUUM INTO ?", (str(copy),))
        finally:
            source.close()
        return copy.read_bytes()


def _read_backup(source: Path, passphrase: str, rng: RandomSource) -> tuple[SecretBox, bytes]:
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise LocalProtocolError(
            f"cannot read {source}: {exc.strerror}", code=ErrorCode.NOT_FOUND
        ) from None
    lines = raw.split(b"\n")
    if len(lines) < 3 or lines[0] != _MAGIC:
        raise _foreign(source)
    try:
        header = json.loads(lines[1])
        params = KdfParams.from_json(header["kdf"])
        check = b64url_decode(header["check"])
        sealed = b64url_decode(lines[2], max_len=_MAX_BACKUP)
    except (ValueError, KeyError, TypeError, MalformedMessage):
        raise _foreign(source) from None
    params.require_strong()
    box = SecretBox.derive(passphrase, params, rng)
    box.verify_check(check)
    return box, sealed


def _foreign(source: Path) -> LocalProtocolError:
    return LocalProtocolError(f"{source} {_NOT_A_BACKUP}", code=ErrorCode.UNKNOWN_VERSION)


def _write_new(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Conflict(f"{path} exists already; choose another file") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
