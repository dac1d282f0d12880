"""The PKCS#11 card on a real SoftHSM2 token: MACs, key protection, PINs, errors, persistence."""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, TokenFlag
from pkcs11.exceptions import (
    AttributeReadOnly,
    AttributeSensitive,
    DeviceError,
    DeviceMemory,
    DeviceRemoved,
    PinIncorrect,
    PinLocked,
    PKCS11Error,
)

from farthing.core.errors import (
    CardLocked,
    DeviceFailure,
    ErrorCode,
    LocalProtocolError,
    MalformedMessage,
    WrongPin,
)
from farthing.wallet.pkcs11_card import (
    MODULE_ENV_VAR,
    Pkcs11CardKey,
    SoftHsmToken,
    find_pkcs11_module,
    install_card_key,
    install_transport_key,
    install_wrapped_card_key,
    map_pkcs11_errors,
)

pytestmark = pytest.mark.softhsm

CARD_KEY = bytes(range(32))
KEY_LABEL = "hll-card-key"
TRANSPORT_LABEL = "bank-transport"


def expected_mac(message: bytes, key: bytes = CARD_KEY) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def open_card(
    token: SoftHsmToken, *, pin: str | None = None, key_label: str = KEY_LABEL
) -> Pkcs11CardKey:
    return Pkcs11CardKey.open(
        module_path=token.module_path,
        token_label=token.label,
        user_pin=token.user_pin if pin is None else pin,
        key_label=key_label,
    )


def install(token: SoftHsmToken, key: bytes = CARD_KEY, label: str = KEY_LABEL) -> None:
    install_card_key(token.module_path, token.label, token.user_pin, label, key)


@pytest.fixture
def card_token(softhsm_token: SoftHsmToken) -> SoftHsmToken:
    install(softhsm_token)
    return softhsm_token


@pytest.fixture
def card(card_token: SoftHsmToken) -> Iterator[Pkcs11CardKey]:
    with open_card(card_token) as opened:
        yield opened


@pytest.fixture
def user_session(card_token: SoftHsmToken) -> Iterator[pkcs11.Session]:
    """A raw python-pkcs11 session, to inspect the key as an attacker with the PIN could."""
    token = pkcs11.lib(card_token.module_path).get_token(token_label=card_token.label)
    with token.open(rw=True, user_pin=card_token.user_pin) as session:
        yield session


# -- the MAC ----------------------------------------------------------------------------------


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.binary(max_size=2048))
@example(message=b"")
@example(message=b"\x00" * 100_000)
def test_token_mac_equals_hmac_sha256(card: Pkcs11CardKey, message: bytes) -> None:
    assert card.mac(message) == expected_mac(message)


def test_mac_depends_on_the_key(softhsm_token: SoftHsmToken) -> None:
    other_key = bytes(32)
    install(softhsm_token, key=other_key)
    with open_card(softhsm_token) as card:
        assert card.mac(b"pay 3") == expected_mac(b"pay 3", other_key)
        assert card.mac(b"pay 3") != expected_mac(b"pay 3")


def test_one_card_serves_many_threads(card: Pkcs11CardKey) -> None:
    messages = [f"payment {i}".encode() for i in range(40)]
    results: dict[bytes, bytes] = {}

    def worker(chunk: list[bytes]) -> None:
        for message in chunk:
            results[message] = card.mac(message)

    threads = [threading.Thread(target=worker, args=(messages[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {message: expected_mac(message) for message in messages}


# -- the key stays inside ---------------------------------------------------------------------


def test_card_key_value_cannot_be_read(user_session: pkcs11.Session) -> None:
    key = user_session.get_key(label=KEY_LABEL)
    with pytest.raises(AttributeSensitive):
        key[Attribute.VALUE]
    assert key[Attribute.SENSITIVE] is True
    assert key[Attribute.EXTRACTABLE] is False
    assert key[Attribute.TOKEN] is True
    assert key[Attribute.PRIVATE] is True


def test_card_key_has_only_mac_capabilities(user_session: pkcs11.Session) -> None:
    key = user_session.get_key(label=KEY_LABEL)
    assert key[Attribute.SIGN] is True
    assert key[Attribute.VERIFY] is True
    for capability in (
        Attribute.ENCRYPT,
        Attribute.DECRYPT,
        Attribute.WRAP,
        Attribute.UNWRAP,
        Attribute.DERIVE,
    ):
        assert key[capability] is False, capability


def test_card_key_protection_cannot_be_lifted(user_session: pkcs11.Session) -> None:
    key = user_session.get_key(label=KEY_LABEL)
    with pytest.raises(AttributeReadOnly):
        key[Attribute.EXTRACTABLE] = True
    with pytest.raises(AttributeReadOnly):
        key[Attribute.SENSITIVE] = False
    with pytest.raises(AttributeReadOnly):
        key.copy({Attribute.EXTRACTABLE: True})
    with pytest.raises(AttributeSensitive):
        key[Attribute.VALUE]


def test_card_key_is_invisible_without_login(card_token: SoftHsmToken) -> None:
    token = pkcs11.lib(card_token.module_path).get_token(token_label=card_token.label)
    with token.open() as public_session:
        assert list(public_session.get_objects({Attribute.LABEL: KEY_LABEL})) == []


# -- wrapped personalisation ------------------------------------------------------------------


def test_wrapped_card_key_unwraps_inside_the_token(softhsm_token: SoftHsmToken) -> None:
    transport_key = bytes(range(100, 132))
    t = softhsm_token
    install_transport_key(t.module_path, t.label, t.user_pin, TRANSPORT_LABEL, transport_key)
    wrapped = aes_key_wrap(transport_key, CARD_KEY)
    install_wrapped_card_key(
        t.module_path, t.label, t.user_pin, KEY_LABEL, wrapped, transport_key_label=TRANSPORT_LABEL
    )
    with open_card(t) as card:
        assert card.mac(b"wrapped") == expected_mac(b"wrapped")
    token = pkcs11.lib(t.module_path).get_token(token_label=t.label)
    with token.open(user_pin=t.user_pin) as session:
        key = session.get_key(label=KEY_LABEL)
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.DERIVE] is False
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]
        transport = session.get_key(label=TRANSPORT_LABEL)
        assert transport[Attribute.UNWRAP] is True
        assert transport[Attribute.DECRYPT] is False
        with pytest.raises(AttributeSensitive):
            transport[Attribute.VALUE]


def test_tampered_wrapped_key_is_rejected_and_nothing_is_stored(
    softhsm_token: SoftHsmToken,
) -> None:
    transport_key = bytes(range(100, 132))
    t = softhsm_token
    install_transport_key(t.module_path, t.label, t.user_pin, TRANSPORT_LABEL, transport_key)
    wrapped = bytearray(aes_key_wrap(transport_key, CARD_KEY))
    wrapped[-1] ^= 1
    with pytest.raises(MalformedMessage) as caught:
        install_wrapped_card_key(
            t.module_path,
            t.label,
            t.user_pin,
            KEY_LABEL,
            bytes(wrapped),
            transport_key_label=TRANSPORT_LABEL,
        )
    assert caught.value.code is ErrorCode.BAD_FIELD
    with pytest.raises(LocalProtocolError) as missing:
        open_card(t)
    assert missing.value.code is ErrorCode.NOT_FOUND


def test_aes_wrapped_key_of_wrong_length_is_rejected_before_unwrapping(
    softhsm_token: SoftHsmToken,
) -> None:
    t = softhsm_token
    install_transport_key(t.module_path, t.label, t.user_pin, "x", bytes(range(100, 132)))
    with pytest.raises(MalformedMessage):
        install_wrapped_card_key(
            t.module_path, t.label, t.user_pin, KEY_LABEL, CARD_KEY, transport_key_label="x"
        )


def test_unwrap_needs_an_existing_transport_key(softhsm_token: SoftHsmToken) -> None:
    t = softhsm_token
    with pytest.raises(LocalProtocolError, match="no transport key") as caught:
        install_wrapped_card_key(
            t.module_path, t.label, t.user_pin, KEY_LABEL, bytes(40), transport_key_label="none"
        )
    assert caught.value.code is ErrorCode.NOT_FOUND


# -- personalisation misuse -------------------------------------------------------------------


def test_install_refuses_a_taken_label(card_token: SoftHsmToken) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        install(card_token, key=bytes(32))
    assert caught.value.code is ErrorCode.CONFLICT
    with open_card(card_token) as card:  # the first key is untouched
        assert card.mac(b"m") == expected_mac(b"m")


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_install_refuses_a_card_key_of_wrong_length(
    softhsm_token: SoftHsmToken, length: int
) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        install(softhsm_token, key=bytes(length))
    assert caught.value.code is ErrorCode.MISUSE


# -- PINs, labels and sessions ----------------------------------------------------------------


def test_wrong_pin_raises_wrong_pin(card_token: SoftHsmToken) -> None:
    with pytest.raises(WrongPin) as caught:
        open_card(card_token, pin="not-the-pin")
    assert caught.value.code is ErrorCode.WRONG_PIN
    assert caught.value.tries_left >= 0
    assert isinstance(caught.value.__cause__, PinIncorrect)
    with open_card(card_token) as card:  # SoftHSM2 never locks; the right PIN still works
        assert card.mac(b"after") == expected_mac(b"after")


def test_wrong_pin_for_personalisation_raises_wrong_pin(softhsm_token: SoftHsmToken) -> None:
    t = softhsm_token
    with pytest.raises(WrongPin):
        install_card_key(t.module_path, t.label, "not-the-pin", KEY_LABEL, CARD_KEY)


def test_unknown_key_label_is_not_found(card_token: SoftHsmToken) -> None:
    with pytest.raises(LocalProtocolError, match="no card key labelled 'nope'") as caught:
        open_card(card_token, key_label="nope")
    assert caught.value.code is ErrorCode.NOT_FOUND
    with open_card(card_token) as card:  # the failed open logged out again
        assert card.mac(b"x") == expected_mac(b"x")


def test_unknown_token_label_is_not_found(card_token: SoftHsmToken) -> None:
    with pytest.raises(LocalProtocolError, match="no PKCS#11 token") as caught:
        Pkcs11CardKey.open(
            module_path=card_token.module_path,
            token_label="no-such-token",
            user_pin=card_token.user_pin,
            key_label=KEY_LABEL,
        )
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_missing_module_is_not_found(card_token: SoftHsmToken, tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        Pkcs11CardKey.open(
            module_path=str(tmp_path / "absent.so"),
            token_label=card_token.label,
            user_pin=card_token.user_pin,
            key_label=KEY_LABEL,
        )
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_closed_card_refuses_to_mac(card_token: SoftHsmToken) -> None:
    card = open_card(card_token)
    assert not card.closed
    card.close()
    card.close()  # idempotent
    assert card.closed
    with pytest.raises(LocalProtocolError, match="closed") as caught:
        card.mac(b"late")
    assert caught.value.code is ErrorCode.MISUSE


def test_second_open_in_one_process_is_refused(
    card: Pkcs11CardKey, card_token: SoftHsmToken
) -> None:
    with pytest.raises(LocalProtocolError, match="already logged in") as caught:
        open_card(card_token)
    assert caught.value.code is ErrorCode.MISUSE
    assert card.mac(b"still") == expected_mac(b"still")


# -- persistence ------------------------------------------------------------------------------


def test_key_persists_across_sessions(card_token: SoftHsmToken) -> None:
    with open_card(card_token) as first:
        tag = first.mac(b"persist")
    with open_card(card_token) as second:
        assert second.mac(b"persist") == tag == expected_mac(b"persist")


def test_key_persists_on_disk_for_a_new_process(card_token: SoftHsmToken) -> None:
    script = (
        "import sys\n"
        "from farthing.wallet.pkcs11_card import Pkcs11CardKey\n"
        "module, token, pin, key = sys.argv[1:]\n"
        "with Pkcs11CardKey.open(module_path=module, token_label=token, user_pin=pin,"
        " key_label=key) as card:\n"
        "    print(card.mac(b'from another process').hex())\n"
    )
    t = card_token
    result = subprocess.run(
        [sys.executable, "-c", script, t.module_path, t.label, t.user_pin, KEY_LABEL],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "SOFTHSM2_CONF": str(t.conf_path)},
    )
    assert bytes.fromhex(result.stdout.strip()) == expected_mac(b"from another process")


# -- error mapping (no token needed) ----------------------------------------------------------


def test_locked_pin_maps_to_card_locked() -> None:
    original = PinLocked()
    with pytest.raises(CardLocked) as caught, map_pkcs11_errors():
        raise original
    assert caught.value.__cause__ is original
    assert caught.value.code is ErrorCode.CARD_LOCKED


@pytest.mark.parametrize(
    ("flags", "tries_left"),
    [(TokenFlag(0), 0), (TokenFlag.USER_PIN_COUNT_LOW, 0), (TokenFlag.USER_PIN_FINAL_TRY, 1)],
)
def test_wrong_pin_reports_tries_left_from_token_flags(flags: TokenFlag, tries_left: int) -> None:
    with pytest.raises(WrongPin) as caught, map_pkcs11_errors(lambda: flags):
        raise PinIncorrect()
    assert caught.value.tries_left == tries_left


def test_wrong_pin_that_locks_the_card_maps_to_card_locked() -> None:
    with pytest.raises(CardLocked), map_pkcs11_errors(lambda: TokenFlag.USER_PIN_LOCKED):
        raise PinIncorrect()


def test_wrong_pin_survives_a_failing_flag_read() -> None:
    def broken() -> TokenFlag:
        raise DeviceRemoved()

    with pytest.raises(WrongPin) as caught, map_pkcs11_errors(broken):
        raise PinIncorrect()
    assert caught.value.tries_left == 0


def test_other_pkcs11_errors_become_local_errors() -> None:
    raised = PKCS11Error("odd")
    with pytest.raises(LocalProtocolError) as caught, map_pkcs11_errors():
        raise raised
    assert caught.value.code is ErrorCode.INTERNAL
    assert caught.value.__cause__ is raised
    assert not isinstance(caught.value, WrongPin | CardLocked)


@pytest.mark.parametrize("raised", [DeviceRemoved(), DeviceError(), DeviceMemory()])
def test_a_failing_device_is_an_external_failure(raised: PKCS11Error) -> None:
    """A removed or failing token is nobody's misuse (before: LocalProtocolError(INTERNAL))."""
    with pytest.raises(DeviceFailure) as caught, map_pkcs11_errors():
        raise raised
    assert caught.value.code is ErrorCode.DEVICE_FAILED
    assert caught.value.__cause__ is raised
    assert not isinstance(caught.value, LocalProtocolError)


def test_foreign_exceptions_pass_through_unchanged() -> None:
    with pytest.raises(KeyError), map_pkcs11_errors():
        raise KeyError("not ours")


# -- module discovery -------------------------------------------------------------------------


def test_module_env_var_wins(tmp_path: Path) -> None:
    module = tmp_path / "libvendor-pkcs11.so"
    module.write_bytes(b"")
    assert find_pkcs11_module({MODULE_ENV_VAR: str(module)}) == str(module)


def test_module_env_var_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LocalProtocolError, match=MODULE_ENV_VAR) as caught:
        find_pkcs11_module({MODULE_ENV_VAR: str(tmp_path / "missing.so")})
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_module_falls_back_to_softhsm(softhsm_home: Path) -> None:
    found = find_pkcs11_module({})
    assert Path(found).name == "libsofthsm2.so"
    assert Path(found).is_file()
