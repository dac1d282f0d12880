"""The key file, the configuration from the environment, merchant key sealing, tags."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from farthing.core.errors import LocalProtocolError
from farthing.core.prbg import blum_modulus_of_any_size
from farthing.http.issuer_wire import redeem_request_tag, verify_request_tag
from farthing.issuer import (
    IssuerKeys,
    config_from_env,
    generate_issuer_keys,
    load_issuer_keys,
    write_key_file,
)
from farthing.issuer.auth import open_merchant_key, seal_merchant_key, token_hash
from farthing.testing import DeterministicRandom


def test_key_file_round_trip_is_private(tmp_path: Path, issuer_keys: IssuerKeys) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, issuer_keys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_issuer_keys(path) == issuer_keys
    assert issuer_keys.hll_master.hex() not in repr(issuer_keys)
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert set(document) >= {"hll_master", "szm_chain_master", "payword_broker_key", "bbs"}


def test_key_file_is_never_overwritten(tmp_path: Path, issuer_keys: IssuerKeys) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, issuer_keys)
    with pytest.raises(LocalProtocolError):
        write_key_file(path, issuer_keys)


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        (0o640, None, "group or others"),
        (0o600, "{not json", "malformed"),
        (0o600, '{"version": 2}', "malformed"),
        (0o600, "[]", "malformed"),
    ],
)
def test_bad_key_files_are_refused_without_leaking(
    tmp_path: Path, issuer_keys: IssuerKeys, mode: int, text: str | None, message: str
) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, issuer_keys)
    if text is not None:
        path.write_text(text)
    path.chmod(mode)
    with pytest.raises(LocalProtocolError) as refused:
        load_issuer_keys(path)
    assert message in refused.value.message
    assert issuer_keys.hll_master.hex() not in refused.value.message


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError) as missing:
        load_issuer_keys(tmp_path / "nope.json")
    assert "init" in missing.value.message


def test_config_from_env(tmp_path: Path, issuer_keys: IssuerKeys) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, issuer_keys)
    environ = {
        "FARTHING_ISSUER_DB": "postgresql://x/y",
        "FARTHING_ISSUER_KEYS": str(path),
        "FARTHING_ISSUER_CURRENCIES": "EUR, USD",
        "FARTHING_ISSUER_RATE_LIMIT": "off",
    }
    target, config = config_from_env(environ)
    assert target == "postgresql://x/y"
    assert config.currencies == ("EUR", "USD")
    assert config.rate_limits.enabled is False
    assert config.keys == issuer_keys


def test_merchant_keys_are_sealed_to_their_merchant() -> None:
    rng = DeterministicRandom("seal")
    wrap, key = rng(32), rng(32)
    sealed = seal_merchant_key(wrap, "m1", key, rng)
    assert key not in sealed
    assert open_merchant_key(wrap, "m1", sealed) == key
    with pytest.raises(LocalProtocolError):  # moved to another merchant's row
        open_merchant_key(wrap, "m2", sealed)
    with pytest.raises(LocalProtocolError):  # another key file
        open_merchant_key(rng(32), "m1", sealed)


def test_request_tags_bind_every_field() -> None:
    key = bytes(range(32))
    tag = verify_request_tag(key, "m1", b"offer", b"payment")
    assert tag != verify_request_tag(key, "m2", b"offer", b"payment")
    assert tag != verify_request_tag(key, "m1", b"offe", b"rpayment")
    assert tag != redeem_request_tag(key, "m1", b"offerpayment")
    assert len(token_hash("fop_x")) == 32


@pytest.mark.parametrize("bits", [512, 1024, 2047])
def test_a_key_file_with_a_weak_bbs_modulus_is_refused(
    tmp_path: Path, issuer_keys: IssuerKeys, bits: int
) -> None:
    path = tmp_path / "keys.json"
    write_key_file(path, issuer_keys)
    weak = blum_modulus_of_any_size(bits, DeterministicRandom("weak"))
    document = json.loads(path.read_text())
    document["bbs"] = {"p": format(weak.p, "x"), "q": format(weak.q, "x")}
    path.write_text(json.dumps(document))
    with pytest.raises(LocalProtocolError, match="under 2048 bits"):
        load_issuer_keys(path)
    with pytest.raises(ValueError, match="2048"):
        generate_issuer_keys(DeterministicRandom("weak"), broker_id="b", bbs_bits=bits)
