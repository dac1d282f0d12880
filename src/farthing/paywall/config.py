"""The vendor's config file (TOML), and the app factory uvicorn workers import.

A small file next to the goods::

    realm = "My articles"
    database = "vendor.sqlite"            # a path (relative to this file) or a postgresql:// DSN
    content_dir = "goods"                 # served as static files behind the paywall
    challenge_secret_file = "challenge.key"   # made on first use (32 random bytes)
    deposit_interval = 60                 # seconds between background deposits (HLL, PayWord)

    [prices]                              # first match wins; * = one path segment, ** = any
    "/articles/*" = "2000 EUR"            # micro-units of the currency: 2000 = 0.2 cent
    "/**" = "500 EUR"

    [szm]                                 # the vendor sells its issuer's SZM cards
    keys = "vendor.keys.json"             # the vendor's own key file (SZM masters, BBS
                                          # factors; no other issuer secret), written by
                                          # `farthing vendor init --issuer-keys FILE`
                                          # (or chain_master / prbg_master as hex)

    [hll]                                 # sell to HLL smart cards through a bank
    issuer_url = "http://127.0.0.1:8001"
    merchant_id = "shop"
    merchant_key_file = "merchant.key"    # hex, from `farthing issuer merchants add`
    unit_micros = 1000
    bank_public_key = "<base64url>"       # `farthing issuer hll-key`: named in challenges
                                          # (wallets pay only cards of that bank); required
                                          # for "deferred" (card certificates)
    mode = "online"                       # or "deferred", with two more keys:
    # risk_limit = 50                     #   units one card may owe unverified
    # merchant_cap = 5000                 #   units all cards together may owe unverified

    [payword]
    vendor_id = "shop"
    broker_id = "broker"
    broker_public_key = "<base64url>"     # GET /v1/payword/broker, or `issuer payword
                                          # users add`; hex (64 digits) is read too
    unit_micros = 1000
    issuer_url = "http://127.0.0.1:8001"  # the broker, to redeem at; if there is no [hll],
    merchant_key_file = "merchant.key"    # these two enable deposits (vendor_id = merchant id)

Every error in the file is reported with the key at fault; nothing is guessed.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from farthing.core.encoding import b64url_decode
from farthing.core.errors import LocalProtocolError, MalformedMessage
from farthing.paywall.app import HllSettings, PaywordSettings, SzmKeys, VendorSettings
from farthing.paywall.methods.hll import HllMode
from farthing.paywall.pricing import Price, PriceTable

__all__ = ["CONFIG_ENV", "DepositSettings", "VendorConfig", "load_vendor_config"]

CONFIG_ENV: Final = "FARTHING_VENDOR_CONFIG"
_PRICE: Final = re.compile(r"\A\s*(\d+)\s+([A-Z]{3})\s*\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositSettings:
    """Where and as whom the vendor deposits (HLL batches, PayWord redemptions)."""

    issuer_url: str
    merchant_id: str
    merchant_key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorConfig:
    settings: VendorSettings
    prices: PriceTable
    database: str
    content_dir: Path
    issuer_url: str | None
    deposits: DepositSettings | None = None
    deposit_interval: float = 60.0


def _bad(key: str, why: str) -> LocalProtocolError:
    return LocalProtocolError(f"vendor config: {key}: {why}")


def _str(table: dict[str, object], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise _bad(f"{where}{key}", "a non-empty string is required")
    return value


def _int(table: dict[str, object], key: str, where: str, default: int | None = None) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"{where}{key}", "a non-negative integer is required")
    return value


def _positive(table: dict[str, object], key: str, where: str) -> int:
    value = _int(table, key, where)
    if value == 0:
        raise _bad(f"{where}{key}", "a positive integer is required")
    return value


def _hex(text: str, key: str, *, length: int | None = None) -> bytes:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        raise _bad(key, "not hexadecimal") from None
    if length is not None and len(value) != length:
        raise _bad(key, f"must be {length} bytes ({2 * length} hex digits)")
    return value


def _public_key(text: str, key: str) -> bytes:
    """A 32-byte public key as the issuer publishes it (base64url, 43 characters), or as
    hex (64 digits: configs written before base64url was the one form)."""
    text = text.strip()
    if len(text) == 64:
        return _hex(text, key, length=32)
    try:
        value = b64url_decode(text, max_len=64)
    except MalformedMessage:
        raise _bad(key, "write the key in base64url, as the issuer publishes it") from None
    if len(value) != 32:
        raise _bad(key, "must be 32 bytes (43 base64url characters)")
    return value


def _relative(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _secret_file(path: Path) -> bytes:
    """32 random bytes kept in ``path`` (hex), created with mode 0600 on first use.

    Workers starting at once on a fresh config race to make it: each writes its own file
    aside and links it into place, so the file appears whole, once; losers read the winner's.
    """
    if not path.exists():
        aside = path.with_name(f".{path.name}.{os.urandom(8).hex()}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex() + "\n")
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        finally:
            aside.unlink()
    return _hex(path.read_text(), str(path), length=32)


def _prices(table: object) -> PriceTable:
    if not isinstance(table, dict) or not table:
        raise _bad("prices", 'a table of route pattern = "<micros> <CUR>" is required')
    prices = PriceTable()
    for pattern, text in table.items():
        match = _PRICE.match(text) if isinstance(text, str) else None
        if match is None:
            raise _bad(f"prices.{pattern}", 'write the price as "<micro-units> <CURRENCY>"')
        try:
            prices.add(pattern, Price(micros=int(match.group(1)), currency=match.group(2)))
        except ValueError as error:
            raise _bad(f"prices.{pattern}", str(error)) from None
    return prices


def _szm(table: dict[str, object], base: Path) -> SzmKeys:
    if "issuer_keys" in table:
        raise _bad(
            "szm.issuer_keys",
            "a vendor does not read the issuer's key file (it holds the HLL bank key, the "
            "PayWord broker key and the merchant-key wrap); make the vendor's own with "
            "`farthing vendor init DIR --issuer-keys FILE` and name it in szm.keys",
        )
    if "keys" not in table:  # keys inline, as hex (tests, or a vendor without a file)
        return SzmKeys(
            chain_master=_hex(_str(table, "chain_master", "szm."), "szm.chain_master", length=32),
            prbg_master=_hex(_str(table, "prbg_master", "szm."), "szm.prbg_master", length=32),
        )
    from farthing.keyfiles import load_vendor_keys

    keys = load_vendor_keys(_relative(base, _str(table, "keys", "szm.")))
    return SzmKeys(
        chain_master=keys.szm_chain_master, prbg_master=keys.szm_prbg_master, bbs=keys.bbs
    )


def _hll(table: dict[str, object], base: Path) -> HllSettings:
    mode_text = table.get("mode", "online")
    if mode_text not in ("online", "deferred"):
        raise _bad("hll.mode", 'use "online" or "deferred"')
    key_file = _relative(base, _str(table, "merchant_key_file", "hll."))
    mode = HllMode(mode_text)
    deferred = mode is HllMode.DEFERRED
    return HllSettings(
        merchant_id=_str(table, "merchant_id", "hll."),
        merchant_key=_hex(key_file.read_text(), "hll.merchant_key_file", length=32),
        unit_micros=_int(table, "unit_micros", "hll."),
        mode=mode,
        risk_limit=_positive(table, "risk_limit", "hll.") if deferred else 0,
        merchant_cap=_positive(table, "merchant_cap", "hll.") if deferred else 0,
        bank_public_key=_public_key(_str(table, "bank_public_key", "hll."), "hll.bank_public_key")
        if deferred or "bank_public_key" in table
        else None,
    )


def _payword(table: dict[str, object]) -> PaywordSettings:
    return PaywordSettings(
        vendor_id=_str(table, "vendor_id", "payword."),
        broker_id=_str(table, "broker_id", "payword."),
        broker_public=_public_key(
            _str(table, "broker_public_key", "payword."), "payword.broker_public_key"
        ),
        unit_micros=_int(table, "unit_micros", "payword."),
    )


def _deposits(
    settings: VendorSettings,
    hll: dict[str, object] | None,
    pw: dict[str, object] | None,
    base: Path,
) -> DepositSettings | None:
    """From [hll] when present, else from [payword]'s optional issuer_url and key file."""
    if settings.hll is not None and hll is not None:
        return DepositSettings(
            issuer_url=_str(hll, "issuer_url", "hll."),
            merchant_id=settings.hll.merchant_id,
            merchant_key=settings.hll.merchant_key,
        )
    if settings.payword is None or pw is None or "issuer_url" not in pw:
        return None
    key_file = _relative(base, _str(pw, "merchant_key_file", "payword."))
    return DepositSettings(
        issuer_url=_str(pw, "issuer_url", "payword."),
        merchant_id=settings.payword.vendor_id,
        merchant_key=_hex(key_file.read_text(), "payword.merchant_key_file", length=32),
    )


def _section(data: dict[str, object], name: str) -> dict[str, object] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(name, "must be a table")
    return value


def load_vendor_config(path: Path) -> VendorConfig:
    """Read and check a vendor config file; LocalProtocolError names the key at fault."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise _bad(str(path), f"cannot read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise _bad(str(path), f"not valid TOML ({error})") from None
    base = path.resolve().parent
    szm, hll, pw = (_section(data, name) for name in ("szm", "hll", "payword"))
    settings = VendorSettings(
        realm=_str(data, "realm", ""),
        challenge_secret=_secret_file(
            _relative(base, str(data.get("challenge_secret_file", "challenge.key")))
        ),
        szm=_szm(szm, base) if szm is not None else None,
        hll=_hll(hll, base) if hll is not None else None,
        payword=_payword(pw) if pw is not None else None,
    )
    if settings.szm is None and settings.hll is None and settings.payword is None:
        raise _bad(str(path), "enable at least one of [szm], [hll], [payword]")
    database = _str(data, "database", "")
    if not database.startswith("postgresql"):
        database = str(_relative(base, database))
    return VendorConfig(
        settings=settings,
        prices=_prices(data.get("prices")),
        database=database,
        content_dir=_relative(base, str(data.get("content_dir", "."))),
        issuer_url=_str(hll, "issuer_url", "hll.") if hll is not None else None,
        deposits=_deposits(settings, hll, pw, base),
        deposit_interval=_int(data, "deposit_interval", "", 60),
    )
