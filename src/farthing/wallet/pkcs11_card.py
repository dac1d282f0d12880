"""The HLL card's secret part in a real tamper-resistant device: a PKCS#11 token.

Theory of operation
-------------------
Hwang, Lin and Li ("A simple micro-payment scheme", J. Systems and Software 55, 2001) put the
customer's card key K_C in a tamper-resistant smart card that computes the payment MAC itself.
That a device holds K_C and MACs inside is the paper's; how we do it is our reconstruction.

- The key. K_C (32 bytes, derived by the bank) becomes a PKCS#11 secret key object of type
  GENERIC_SECRET with TOKEN, PRIVATE and SENSITIVE true, EXTRACTABLE false, and only the SIGN and
  VERIFY capabilities (no ENCRYPT, DECRYPT, WRAP, UNWRAP or DERIVE, which are known ways to pull a
  key out of a token). PKCS#11 forbids turning SENSITIVE off or EXTRACTABLE on afterwards.
- Personalisation (the path the CLI takes). :func:`new_wrapping_key` makes an RSA key pair inside
  the token; its private half is non-extractable and can only unwrap. The bank encrypts K_C to the
  public half (RSA-OAEP) and :func:`install_wrapped_card_key` unwraps it straight into the token as
  the non-extractable card key, so K_C never exists in the clear outside the bank and the token.
  The same function also unwraps under an AES transport key (AES key wrap, RFC 3394) loaded at
  manufacture (:func:`install_transport_key`), as a card issuer that owns its cards would.
  :func:`install_card_key` writes K_C in the clear: test and demo tooling only, never a CLI path.
- The MAC. :meth:`Pkcs11CardKey.mac` is HMAC-SHA256(K_C, message) computed by the token
  (CKM_SHA256_HMAC). It matches the software card bit for bit, so the bank verifies either.
- What is not inside. PKCS#11 has no monotonic counter and no balance that gates signing, so the
  HLL counter and balance live in the wallet's crash-safe store beside the token. The token only
  guards K_C and the user PIN (its retry counter is the token's own). A holder of the token, the
  PIN and the store can roll the store back and get more MACs; the bank's unique (card, counter)
  check still stops double deposit. docs/protocols/hll.md spells out what this weakens.

Nothing in :class:`Pkcs11CardKey` is specific to SoftHSM2: pass a hardware token's module path
(e.g. OpenSC's) and the same code runs. :func:`init_softhsm_token` is test and demo tooling only.

PKCS#11 facts this module lives with
- Login state belongs to the process, per token: while one :class:`Pkcs11CardKey` is open on a
  token, opening a second one in the same process fails (the token says "already logged in"),
  and closing a session logs every session of the process out. Use one object per token per process.
- python-pkcs11 caches one loaded module per path; SoftHSM2 reads ``SOFTHSM2_CONF`` and scans its
  token directory only when the module is initialised.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sysconfig
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, final

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11.exceptions import (
    AttributeSensitive,
    DeviceError,
    DeviceMemory,
    DeviceRemoved,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    GeneralError,
    KeyUnextractable,
    MultipleObjectsReturned,
    MultipleTokensReturned,
    NoSuchKey,
    NoSuchToken,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    SessionClosed,
    SessionHandleInvalid,
    TokenNotPresent,
    TokenNotRecognised,
    UserAlreadyLoggedIn,
    UserNotLoggedIn,
    WrappedKeyInvalid,
    WrappedKeyLenRange,
)
from pkcs11.types import PrivateKey, PublicKey, SecretKey, Session, SignMixin, Token, UnwrapMixin

from farthing.core.errors import (
    CardLocked,
    DeviceFailure,
    ErrorCode,
    LocalProtocolError,
    MalformedMessage,
    WrongPin,
)

if TYPE_CHECKING:
    from pkcs11 import _pkcs11

__all__ = [
    "CARD_KEY_LENGTH",
    "MODULE_ENV_VAR",
    "Pkcs11CardKey",
    "SoftHsmToken",
    "find_pkcs11_module",
    "init_softhsm_token",
    "install_card_key",
    "install_transport_key",
    "install_wrapped_card_key",
    "map_pkcs11_errors",
    "new_wrapping_key",
]

MODULE_ENV_VAR: Final = "FARTHING_PKCS11_MODULE"
CARD_KEY_LENGTH: Final = 32
_MAC_LENGTH: Final = 32
_WRAPPED_CARD_KEY_LENGTH: Final = CARD_KEY_LENGTH + 8  # RFC 3394 adds one 64-bit block
_TRANSPORT_KEY_LENGTHS: Final = frozenset({16, 24, 32})
WRAPPING_KEY_BITS: Final = 3072
# SoftHSM2 2.6 unwraps RSA-OAEP only with SHA-1 (hash and MGF1); OAEP does not need collisions.
_OAEP_PARAMS: Final = (Mechanism.SHA_1, MGF.SHA1, None)
_MAX_TOKEN_LABEL_BYTES: Final = 32  # CK_TOKEN_INFO.label is 32 bytes
_SOFTHSM_CONF_VAR: Final = "SOFTHSM2_CONF"
_SOFTHSM_LIB: Final = "libsofthsm2.so"


# -- error mapping --------------------------------------------------------------------------------

# Most specific first; anything else becomes "the card refused" with an internal code.
_TRANSLATIONS: Final[tuple[tuple[tuple[type[PKCS11Error], ...], str, ErrorCode], ...]] = (
    (
        (NoSuchToken, TokenNotPresent, TokenNotRecognised),
        "no such PKCS#11 token",
        ErrorCode.NOT_FOUND,
    ),
    ((NoSuchKey,), "no such key on the token", ErrorCode.NOT_FOUND),
    (
        (MultipleObjectsReturned, MultipleTokensReturned),
        "the label names more than one token or key",
        ErrorCode.CONFLICT,
    ),
    (
        (UserAlreadyLoggedIn,),
        "this process is already logged in to the token; use one card object per token",
        ErrorCode.MISUSE,
    ),
    (
        (UserNotLoggedIn, SessionClosed, SessionHandleInvalid),
        "the card session has ended",
        ErrorCode.MISUSE,
    ),
    ((AttributeSensitive, KeyUnextractable), "the token keeps that value secret", ErrorCode.MISUSE),
)
# The token itself broke or left: nobody's misuse, so an ExternalFailure (DeviceFailure).
_DEVICE_FAILURES: Final = (DeviceRemoved, DeviceError, DeviceMemory)


@contextmanager
def map_pkcs11_errors(pin_status: Callable[[], TokenFlag] | None = None) -> Iterator[None]:
    """Translate python-pkcs11 exceptions into farthing's error tree, raising ``from`` the original.

    Args:
        pin_status: re-reads the token's flags after a wrong PIN (PKCS#11 only says "final try"
            or "locked"), so :class:`WrongPin` can carry ``tries_left``.

    Raises:
        WrongPin: the PIN is wrong; ``tries_left`` is 1 on the final try, else 0 (unknown).
        CardLocked: the user PIN is locked.
        DeviceFailure: the token failed, ran out of memory or was removed (DEVICE_FAILED).
        LocalProtocolError: anything else the token refused; ``code`` says what
            (NOT_FOUND, CONFLICT, MISUSE, INTERNAL).
    """
    try:
        yield
    except (PinIncorrect, PinInvalid, PinLenRange) as exc:
        raise _wrong_pin_error(pin_status) from exc
    except PinLocked as exc:
        raise CardLocked("the card's PIN is locked") from exc
    except _DEVICE_FAILURES as exc:
        raise DeviceFailure("the card device failed") from exc
    except PKCS11Error as exc:
        message, code = _describe(exc)
        raise LocalProtocolError(message, code=code) from exc


def _describe(exc: PKCS11Error) -> tuple[str, ErrorCode]:
    for kinds, message, code in _TRANSLATIONS:
        if isinstance(exc, kinds):
            return message, code
    return "the card refused the operation", ErrorCode.INTERNAL


def _wrong_pin_error(pin_status: Callable[[], TokenFlag] | None) -> LocalProtocolError:
    flags = _read_pin_flags(pin_status)
    if flags & TokenFlag.USER_PIN_LOCKED:
        return CardLocked("the card's PIN is locked")
    # PKCS#11 exposes no retry count, only "final try"; 0 means "unknown" otherwise.
    tries_left = 1 if flags & TokenFlag.USER_PIN_FINAL_TRY else 0
    return WrongPin("the card PIN is wrong", tries_left=tries_left)


def _read_pin_flags(pin_status: Callable[[], TokenFlag] | None) -> TokenFlag:
    if pin_status is None:
        return TokenFlag(0)
    try:
        return pin_status()
    except PKCS11Error:
        return TokenFlag(0)  # the flags are a courtesy; the wrong PIN is the error to report


# -- module, token and session --------------------------------------------------------------------


def find_pkcs11_module(environ: Mapping[str, str] | None = None) -> str:
    """The PKCS#11 module to load: ``$FARTHING_PKCS11_MODULE``, else a known SoftHSM2 path.

    Raises:
        LocalProtocolError: (NOT_FOUND) the variable names a missing file, or no module is found.
    """
    env = os.environ if environ is None else environ
    override = env.get(MODULE_ENV_VAR)
    if override:
        if not Path(override).is_file():
            raise LocalProtocolError(
                f"{MODULE_ENV_VAR} names a file that does not exist: {override}",
                code=ErrorCode.NOT_FOUND,
            )
        return override
    for candidate in _known_module_paths():
        if candidate.is_file():
            return str(candidate)
    raise LocalProtocolError(
        f"no PKCS#11 module found; install SoftHSM2 or set {MODULE_ENV_VAR}",
        code=ErrorCode.NOT_FOUND,
    )


def _known_module_paths() -> tuple[Path, ...]:
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return (
        Path("/usr/lib/softhsm", _SOFTHSM_LIB),  # Debian, Ubuntu
        Path("/usr/lib", multiarch, "softhsm", _SOFTHSM_LIB),  # Debian multiarch
        Path("/usr/lib64/pkcs11", _SOFTHSM_LIB),  # Fedora, RHEL
        Path("/usr/lib/pkcs11", _SOFTHSM_LIB),  # Arch
        Path("/usr/local/lib/softhsm", _SOFTHSM_LIB),  # built from source
        Path("/opt/homebrew/lib/softhsm", _SOFTHSM_LIB),  # macOS Homebrew
    )


def _load_module(module_path: str) -> _pkcs11.lib:
    if not Path(module_path).is_file():
        raise LocalProtocolError(f"no PKCS#11 module at {module_path}", code=ErrorCode.NOT_FOUND)
    with map_pkcs11_errors():
        return pkcs11.lib(module_path)


def _find_token(module: _pkcs11.lib, token_label: str) -> Token:
    with map_pkcs11_errors():
        try:
            return module.get_token(token_label=token_label)
        except NoSuchToken as exc:
            raise LocalProtocolError(
                f"no PKCS#11 token labelled {token_label!r}", code=ErrorCode.NOT_FOUND
            ) from exc


def _login(module_path: str, token_label: str, user_pin: str, *, rw: bool) -> Session:
    module = _load_module(module_path)
    token = _find_token(module, token_label)

    def pin_status() -> TokenFlag:
        # Token objects cache their flags; ask the module afresh.
        return module.get_token(token_label=token_label).flags

    with map_pkcs11_errors(pin_status):
        return token.open(rw=rw, user_pin=user_pin)


def _close_session(session: Session) -> None:
    # A session the token already ended (re-initialised module, pulled card) counts as closed.
    with map_pkcs11_errors(), suppress(SessionHandleInvalid, SessionClosed):
        session.close()


@contextmanager
def _user_session(module_path: str, token_label: str, user_pin: str) -> Iterator[Session]:
    session = _login(module_path, token_label, user_pin, rw=True)
    try:
        yield session
    finally:
        _close_session(session)


# -- the card key ---------------------------------------------------------------------------------


@final
class Pkcs11CardKey:
    """The HLL card's secret part: HMAC-SHA256 under K_C, computed inside a PKCS#11 token.

    Satisfies the HLL scheme's ``CardKey`` protocol. Open with :meth:`open`; use as a context
    manager or call :meth:`close`. One PKCS#11 session per object, guarded by a lock, so one
    object may be shared by threads (their MACs run one at a time). The PIN is not kept.
    """

    __slots__ = ("_key", "_lock", "_session")

    def __init__(self, session: Session, key: SignMixin) -> None:
        """Private: use :meth:`open`, which logs in and finds the key."""
        self._session: Session | None = session
        self._key = key
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, *, module_path: str, token_label: str, user_pin: str, key_label: str
    ) -> Pkcs11CardKey:
        """Log in to the token labelled ``token_label`` and find the card key ``key_label``.

        Raises:
            WrongPin: the PIN is wrong.
            CardLocked: the PIN is locked.
            LocalProtocolError: (NOT_FOUND) no such module, token or key; (MISUSE) this process
                already has the token open.
            DeviceFailure: (DEVICE_FAILED) the token failed or was removed.
        """
        session = _login(module_path, token_label, user_pin, rw=False)
        try:
            key = _find_card_key(session, key_label)
        except BaseException:
            with suppress(LocalProtocolError, DeviceFailure):  # report the first error
                _close_session(session)
            raise
        return cls(session, key)

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA256(K_C, message), computed by the token; K_C never leaves it.

        Raises:
            LocalProtocolError: (MISUSE) the card is closed or its session ended.
            DeviceFailure: (DEVICE_FAILED) the token failed or was removed.
        """
        with self._lock:
            if self._session is None:
                raise LocalProtocolError("the card is closed")
            with map_pkcs11_errors():
                tag = self._key.sign(message, mechanism=Mechanism.SHA256_HMAC)
        if len(tag) != _MAC_LENGTH:
            raise LocalProtocolError(
                "the token returned a MAC of the wrong length", code=ErrorCode.INTERNAL
            )
        return tag

    def close(self) -> None:
        """Log out and close the session. Idempotent.

        PKCS#11 logs out every session of this process on the token, not only this one.
        """
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                _close_session(session)

    @property
    def closed(self) -> bool:
        return self._session is None

    def __enter__(self) -> Pkcs11CardKey:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _find_card_key(session: Session, key_label: str) -> SignMixin:
    with map_pkcs11_errors():
        try:
            key = session.get_key(
                object_class=ObjectClass.SECRET_KEY,
                key_type=KeyType.GENERIC_SECRET,
                label=key_label,
            )
        except NoSuchKey as exc:
            raise LocalProtocolError(
                f"no card key labelled {key_label!r} on the token", code=ErrorCode.NOT_FOUND
            ) from exc
    if not isinstance(key, SignMixin):  # SIGN is false on that object
        raise LocalProtocolError(f"the key labelled {key_label!r} cannot compute MACs")
    return key


# -- personalisation ------------------------------------------------------------------------------


def install_card_key(
    module_path: str, token_label: str, user_pin: str, key_label: str, key_bytes: bytes
) -> None:
    """Write K_C into the token as a non-extractable HMAC key (personalisation in the clear).

    Raises:
        LocalProtocolError: (MISUSE) the key is not 32 bytes; (CONFLICT) the label is taken;
            or any error of :meth:`Pkcs11CardKey.open` for the token and PIN.
    """
    _require_length(key_bytes, {CARD_KEY_LENGTH}, "the card key")
    with _user_session(module_path, token_label, user_pin) as session:
        _refuse_taken_label(session, key_label)
        template = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
            Attribute.VALUE: key_bytes,
            **_card_key_attributes(key_label),
        }
        with map_pkcs11_errors():
            session.create_object(template)


def install_transport_key(
    module_path: str, token_label: str, user_pin: str, key_label: str, key_bytes: bytes
) -> None:
    """Load the bank's AES transport key, usable only to unwrap card keys.

    In a real card this happens once, at manufacture, under the issuer's control (as with
    GlobalPlatform card keys); later card keys then travel only wrapped.

    Raises:
        LocalProtocolError: (MISUSE) not an AES-128/192/256 key; (CONFLICT) the label is taken.
    """
    _require_length(key_bytes, _TRANSPORT_KEY_LENGTHS, "the transport key")
    with _user_session(module_path, token_label, user_pin) as session:
        _refuse_taken_label(session, key_label)
        template = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: key_bytes,
            **_key_attributes(key_label, unwrap=True),
        }
        with map_pkcs11_errors():
            session.create_object(template)


def new_wrapping_key(module_path: str, token_label: str, user_pin: str, key_label: str) -> bytes:
    """Make an RSA key pair inside the token for the bank to wrap K_C to; return the public key
    (DER SubjectPublicKeyInfo) to send with the personalisation request.

    The private half is persistent, private, sensitive and non-extractable, and can only unwrap
    (no decrypt, sign or derive), so it cannot be used to read K_C back out of the token.

    Raises:
        LocalProtocolError: (CONFLICT) the label is taken; any error of opening the token.
    """
    with _user_session(module_path, token_label, user_pin) as session:
        _refuse_taken_label(session, key_label)
        with map_pkcs11_errors():
            public, _ = session.generate_keypair(
                KeyType.RSA,
                WRAPPING_KEY_BITS,
                store=True,
                label=key_label,
                public_template={
                    Attribute.TOKEN: True,
                    Attribute.WRAP: True,
                    Attribute.ENCRYPT: False,
                    Attribute.VERIFY: False,
                },
                private_template=_private_unwrap_attributes(key_label),
            )
            modulus, exponent = public[Attribute.MODULUS], public[Attribute.PUBLIC_EXPONENT]
    numbers = rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big"))
    return numbers.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def install_wrapped_card_key(
    module_path: str,
    token_label: str,
    user_pin: str,
    key_label: str,
    wrapped_key: bytes,
    *,
    transport_key_label: str,
) -> None:
    """Unwrap K_C straight into the token as the non-extractable card key.

    ``transport_key_label`` names the unwrapping key: the private half of a
    :func:`new_wrapping_key` pair (RSA-OAEP), or an AES transport key (RFC 3394 key wrap).

    Raises:
        MalformedMessage: (BAD_FIELD) the wrapped key has the wrong length or fails its
            integrity check: the bank sent something wrong, or it was wrapped for another token.
        LocalProtocolError: (NOT_FOUND) no such unwrapping key; (CONFLICT) the label is taken.
    """
    with _user_session(module_path, token_label, user_pin) as session:
        _refuse_taken_label(session, key_label)
        unwrapper = _find_unwrapping_key(session, transport_key_label)
        rsa_key = isinstance(unwrapper, PrivateKey)
        if not rsa_key and len(wrapped_key) != _WRAPPED_CARD_KEY_LENGTH:
            raise _rejected_wrapped_key()
        with map_pkcs11_errors():
            try:
                unwrapper.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.GENERIC_SECRET,
                    wrapped_key,
                    label=key_label,
                    mechanism=Mechanism.RSA_PKCS_OAEP if rsa_key else Mechanism.AES_KEY_WRAP,
                    # python-pkcs11 takes OAEP's (hash, mgf, label); its stub says bytes only.
                    mechanism_param=_OAEP_PARAMS if rsa_key else None,  # type: ignore[arg-type]
                    store=True,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    template=_card_key_attributes(key_label),
                )
            # SoftHSM2 reports a failed RFC 3394 integrity check as CKR_GENERAL_ERROR.
            except (
                WrappedKeyInvalid,
                WrappedKeyLenRange,
                EncryptedDataInvalid,
                EncryptedDataLenRange,
                GeneralError,
            ) as exc:
                raise _rejected_wrapped_key() from exc


def _rejected_wrapped_key() -> MalformedMessage:
    return MalformedMessage("the token rejected the wrapped card key", code=ErrorCode.BAD_FIELD)


def _find_unwrapping_key(session: Session, key_label: str) -> UnwrapMixin:
    """The secret (AES) or private (RSA) key labelled ``key_label``: never a public key."""
    with map_pkcs11_errors():
        found = [
            key
            for key in session.get_objects({Attribute.LABEL: key_label})
            if isinstance(key, (SecretKey, PrivateKey)) and not isinstance(key, PublicKey)
        ]
    if not found:
        raise LocalProtocolError(
            f"no transport key labelled {key_label!r} on the token", code=ErrorCode.NOT_FOUND
        )
    key = found[0]
    if len(found) > 1 or not isinstance(key, UnwrapMixin):  # UNWRAP is false on that object
        raise LocalProtocolError(f"the key labelled {key_label!r} cannot unwrap")
    return key


def _private_unwrap_attributes(key_label: str) -> dict[Attribute, object]:
    """A private key that can only unwrap (a private key has no VERIFY, ENCRYPT or WRAP)."""
    return {
        Attribute.LABEL: key_label,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.UNWRAP: True,
        Attribute.DECRYPT: False,
        Attribute.SIGN: False,
        Attribute.DERIVE: False,
    }


def _card_key_attributes(key_label: str) -> dict[Attribute, object]:
    return _key_attributes(key_label, sign=True)


def _key_attributes(
    key_label: str, *, sign: bool = False, unwrap: bool = False
) -> dict[Attribute, object]:
    """A persistent, private, sensitive, non-extractable key with only the named uses.

    ENCRYPT, DECRYPT, WRAP and DERIVE stay false for both kinds of key: each is a known way to
    move key material out of a token (wrap-and-decrypt, derive-by-concatenation).
    """
    return {
        Attribute.LABEL: key_label,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: sign,
        Attribute.VERIFY: sign,
        Attribute.UNWRAP: unwrap,
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        Attribute.WRAP: False,
        Attribute.DERIVE: False,
    }


def _refuse_taken_label(session: Session, key_label: str) -> None:
    with map_pkcs11_errors():
        # list() drains the search so the token's find operation is finalised.
        taken = list(session.get_objects({Attribute.LABEL: key_label}))
    if taken:
        raise LocalProtocolError(
            f"the token already holds an object labelled {key_label!r}", code=ErrorCode.CONFLICT
        )


def _require_length(value: bytes, allowed: set[int] | frozenset[int], what: str) -> None:
    if len(value) not in allowed:
        lengths = " or ".join(str(n) for n in sorted(allowed))
        raise LocalProtocolError(f"{what} must be {lengths} bytes long")


# -- SoftHSM2 tooling for tests and demos ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftHsmToken:
    """A SoftHSM2 token made by :func:`init_softhsm_token`; what a caller needs to open it."""

    module_path: str
    conf_path: Path
    label: str
    so_pin: str = field(repr=False)
    user_pin: str = field(repr=False)


def init_softhsm_token(
    directory: Path,
    *,
    label: str = "farthing-card",
    user_pin: str | None = None,
    so_pin: str | None = None,
    module_path: str | None = None,
) -> SoftHsmToken:
    """Create a fresh SoftHSM2 token whose files live in ``directory/tokens``. Tests and demos only.

    Writes ``directory/softhsm2.conf``, points ``SOFTHSM2_CONF`` in ``os.environ`` at it, and runs
    ``softhsm2-util --init-token --free``. SoftHSM2 reads that variable, and scans its token
    directory, only when the module is initialised, and python-pkcs11 keeps one loaded module per
    path for the whole process. So keep one ``directory`` per process (many tokens in it is fine),
    and set it before anything loads the module. If the module is already loaded and cannot see the
    new token (or the directory changed), this re-initialises it, which ends every session the
    process has on that module: close open cards first. PINs default to random ones; they pass
    through ``softhsm2-util``'s command line, visible to local ``ps``, which is fine for a
    throwaway token and nothing else.

    Raises:
        LocalProtocolError: (MISUSE) the label is longer than 32 bytes; (NOT_FOUND) no
            SoftHSM2 module or ``softhsm2-util``; (INTERNAL) ``softhsm2-util`` failed.
    """
    if len(label.encode()) > _MAX_TOKEN_LABEL_BYTES:
        raise LocalProtocolError("a token label is at most 32 bytes")
    token = SoftHsmToken(
        module_path=module_path or find_pkcs11_module(),
        conf_path=_write_softhsm_conf(Path(directory)),
        label=label,
        so_pin=so_pin or secrets.token_hex(8),
        user_pin=user_pin or secrets.token_hex(4),
    )
    conf_changed = os.environ.get(_SOFTHSM_CONF_VAR) != str(token.conf_path)
    os.environ[_SOFTHSM_CONF_VAR] = str(token.conf_path)
    _run_softhsm_util(token)
    _rescan_tokens(token.module_path, label, force=conf_changed)
    return token


def _write_softhsm_conf(directory: Path) -> Path:
    token_dir = directory / "tokens"
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf_path = directory / "softhsm2.conf"
    conf_path.write_text(
        "# Written by farthing.wallet.pkcs11_card.init_softhsm_token; tests and demos only.\n"
        f"directories.tokendir = {token_dir.resolve()}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    return conf_path.resolve()


def _run_softhsm_util(token: SoftHsmToken) -> None:
    executable = shutil.which("softhsm2-util")
    if executable is None:
        raise LocalProtocolError("softhsm2-util is not installed", code=ErrorCode.NOT_FOUND)
    command = [
        executable,
        "--init-token",
        "--free",
        *("--label", token.label),
        *("--so-pin", token.so_pin),
        *("--pin", token.user_pin),
    ]
    # A fixed executable from PATH and arguments we built: no shell, no untrusted input.
    result = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, check=False, timeout=60, env=dict(os.environ)
    )
    if result.returncode != 0:
        raise LocalProtocolError(
            f"softhsm2-util could not create the token: {result.stderr.strip()[:200]}",
            code=ErrorCode.INTERNAL,
        )


def _rescan_tokens(module_path: str, label: str, *, force: bool) -> None:
    module = _load_module(module_path)
    with map_pkcs11_errors():
        if force or label not in {token.label for token in module.get_tokens()}:
            module.reinitialize()  # C_Finalize + C_Initialize: re-reads the conf and token dir
