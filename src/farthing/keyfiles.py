"""Key files shared by the issuer and the paywall: private JSON (mode 0600) and the SZM
vendor's own key file.

The issuer writes and reads its key file (:mod:`farthing.issuer.config`); an SZM vendor reads
only its own, made from the issuer's by ``farthing vendor init --issuer-keys``::

    {"version": 1, "kind": "farthing-vendor-keys", "realm": "...",
     "szm_chain_master": ..., "szm_prbg_master": ..., "bbs": {"p": ..., "q": ...}}

This module sits below both (it imports the core only), so the paywall reads its keys
without importing the issuer package. Either file readable by group or others is refused,
as ssh does; no message ever contains key material.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from farthing.core.errors import LocalProtocolError
from farthing.core.prbg import BBS_MIN_MODULUS_BITS, BbsKey, require_strong_modulus

__all__ = [
    "FILE_FORMAT_VERSION",
    "SECRET_LEN",
    "VendorKeys",
    "bad_key_file",
    "bbs_from_json",
    "bbs_json",
    "load_vendor_keys",
    "read_private_json",
    "write_private_json",
    "write_vendor_key_file",
]

FILE_FORMAT_VERSION: Final = 1
SECRET_LEN: Final = 32
_VENDOR_SECRETS: Final = ("szm_chain_master", "szm_prbg_master")
_VENDOR_KIND: Final = "farthing-vendor-keys"
_MAX_KEY_FILE: Final = 64 * 1024


def write_private_json(path: Path, document: Mapping[str, object]) -> None:
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise LocalProtocolError("the key file exists already") from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # whatever the umask said
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_private_json(target: Path, *, missing: str) -> Mapping[str, object]:
    try:
        mode = target.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise bad_key_file("the key file must not be accessible by group or others (chmod 600)")
        raw = target.read_bytes()[: _MAX_KEY_FILE + 1]
    except FileNotFoundError:
        raise bad_key_file(missing) from None
    if len(raw) > _MAX_KEY_FILE:
        raise bad_key_file("the key file is too large")
    try:
        document = json.loads(raw)
    except ValueError:
        raise bad_key_file("the key file is malformed") from None
    if not isinstance(document, Mapping):
        raise bad_key_file("the key file is malformed")
    return document


def bad_key_file(message: str) -> LocalProtocolError:
    """A key file that is missing, too open or malformed: the operator's to fix."""
    return LocalProtocolError(message)


def bbs_from_json(bbs: object) -> BbsKey:
    if not isinstance(bbs, Mapping):
        raise ValueError("bbs must be an object")
    p, q = int(str(bbs["p"]), 16), int(str(bbs["q"]), 16)
    if (p * q).bit_length() < BBS_MIN_MODULUS_BITS:
        raise bad_key_file(
            f"the key file's BBS modulus has under {BBS_MIN_MODULUS_BITS} bits; "
            "make a new key file with `farthing issuer init`"
        )
    return BbsKey(n=p * q, p=p, q=q)


def bbs_json(bbs: BbsKey) -> dict[str, str]:
    return {"p": format(bbs.p, "x"), "q": format(bbs.q, "x")}


# --- the SZM vendor's own key file ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorKeys:
    """What an SZM vendor holds: the SZM masters of its issuer's realm and the BBS factors.

    Nothing else of the issuer's: no K_B, no broker key, no merchant-key wrap."""

    realm: str
    szm_chain_master: bytes = field(repr=False)
    szm_prbg_master: bytes = field(repr=False)
    bbs: BbsKey = field(repr=False)

    def __post_init__(self) -> None:
        for name in _VENDOR_SECRETS:
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != SECRET_LEN:
                raise ValueError(f"{name} must be {SECRET_LEN} bytes")
        require_strong_modulus(self.bbs.n)
        if not isinstance(self.realm, str) or not 0 < len(self.realm.encode()) <= 255:
            raise ValueError("realm must be 1..255 bytes of text")


def write_vendor_key_file(path: Path, keys: VendorKeys) -> None:
    """Create ``path`` (mode 0600) holding ``keys``; refuses to overwrite an existing file."""
    document: dict[str, object] = {
        "version": FILE_FORMAT_VERSION,
        "kind": _VENDOR_KIND,
        "realm": keys.realm,
    }
    document.update({name: getattr(keys, name).hex() for name in _VENDOR_SECRETS})
    document["bbs"] = bbs_json(keys.bbs)
    write_private_json(path, document)


def load_vendor_keys(path: str | Path) -> VendorKeys:
    """Read a vendor key file; an issuer's key file is refused (a vendor must not hold it)."""
    document = read_private_json(
        Path(path), missing="no vendor key file; run `farthing vendor init DIR --issuer-keys FILE`"
    )
    if document.get("kind") != _VENDOR_KIND:
        raise bad_key_file(
            "not a vendor key file (an issuer's? a vendor must not hold that); "
            "make the vendor's own with `farthing vendor init DIR --issuer-keys FILE`"
        )
    try:
        if document["version"] != FILE_FORMAT_VERSION:
            raise ValueError("unknown key file version")
        return VendorKeys(
            realm=str(document["realm"]),
            bbs=bbs_from_json(document["bbs"]),
            **{name: bytes.fromhex(str(document[name])) for name in _VENDOR_SECRETS},
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        raise bad_key_file("the vendor key file is malformed") from None
