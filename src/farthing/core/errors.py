"""The one error tree of farthing, with stable error codes.

::

    FarthingError                      every error farthing raises on purpose
    ├── RemoteProtocolError            the peer sent something wrong (their fault)
    │   ├── MalformedMessage           bytes that do not decode canonically       400
    │   ├── UnsupportedMethod          a payment method we do not speak           400
    │   ├── InvalidPayment             verification failed; never says which check 401
    │   │   └── StalePayment           the card's own, not ahead: says where it is 401
    │   ├── InsufficientFunds          the card or account cannot cover the price 402
    │   ├── PaymentExpired             a card, certificate or challenge is too old 402
    │   ├── AccessDenied               authenticated, but not allowed             403
    │   ├── NotFound                   no such account, card, merchant            404
    │   ├── Conflict                   a state change lost a race or repeats      409
    │   └── RateLimited                slow down                                   429
    ├── LocalProtocolError             the caller misused the API (our fault)
    │   ├── CardExhausted              the wallet's card has no units left
    │   ├── CardLocked                 too many wrong PINs
    │   ├── WrongPin                   the PIN is wrong
    │   └── PolicyRefused              the wallet's spending policy refuses a price
    └── ExternalFailure                something we rely on broke (nobody's fault here) 503
        ├── Unavailable                a server we need cannot serve now; retry after   503
        ├── DeviceFailure              the card device (a PKCS#11 token) failed or left
        └── ResourceBusy               a local file (the wallet) is locked or unwritable

Whose fault decides the branch, as trio separates a closed resource (our misuse) from a
broken one (something outside): a peer's mistake is answered to that peer; our own misuse
is a bug, logged and answered as a bare 500; an outside failure is nobody's mistake, so the
request may simply be tried again later. An :class:`ExternalFailure` keeps what broke (the
httpx, SQLAlchemy or PKCS#11 exception) as ``__cause__`` for the log; only its fixed message
and code ever reach a remote party.

Which outage is which (each code is raised as exactly one class, :data:`CLASS_OF_CODE`):

- ISSUER_UNAVAILABLE, STORE_UNAVAILABLE: :class:`Unavailable` (503 with Retry-After);
- DEVICE_FAILED: :class:`DeviceFailure`; WALLET_BUSY: :class:`ResourceBusy`;
- SERVER_BUSY stays a :class:`RateLimited`: the server sheds load on purpose to protect
  itself, which is a refusal like any rate limit, not something that broke.
- a busy SQLite store (another writer holds the lock past the timeout) stays a
  :class:`Conflict`: the request lost a race, as a failed compare-and-set does, and is
  answered 409 as before; a store that cannot take another connection is Unavailable.
- an unknown PKCS#11 error stays LocalProtocolError(INTERNAL): it may be our misuse.

Each error carries a stable ``code`` from :class:`ErrorCode` (unique, tested) and an
``http_status`` hint that the HTTP edge maps to an RFC 9457 problem. Messages are fixed
strings chosen by the raiser: they never echo secrets, and verification failures never
say which check failed (no oracle for a forger).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import IntEnum, unique
from types import MappingProxyType
from typing import Final

__all__ = [
    "CLASS_OF_CODE",
    "AccessDenied",
    "CardExhausted",
    "CardInFlight",
    "CardLocked",
    "Conflict",
    "DeviceFailure",
    "ErrorCode",
    "ExternalFailure",
    "FarthingError",
    "InsufficientFunds",
    "InvalidPayment",
    "LocalProtocolError",
    "MalformedMessage",
    "NotFound",
    "PaymentExpired",
    "PolicyRefused",
    "RateLimited",
    "RemoteProtocolError",
    "ResourceBusy",
    "StalePayment",
    "Unavailable",
    "UnsupportedMethod",
    "WrongPin",
]


@unique
class ErrorCode(IntEnum):
    """Stable error codes. Never renumber; only append.

    1xxx encoding, 2xxx verification, 3xxx funds and time, 4xxx access and state,
    5xxx local misuse, 6xxx something outside broke (the older ISSUER_UNAVAILABLE and
    STORE_UNAVAILABLE keep their 5xxx numbers), 9xxx internal.
    """

    MALFORMED = 1000
    NON_CANONICAL = 1001
    TRUNCATED = 1002
    OVERSIZED = 1003
    UNKNOWN_VERSION = 1004
    WRONG_DOMAIN = 1005
    BAD_FIELD = 1006
    UNSUPPORTED_METHOD = 1007
    MALFORMED_CREDENTIAL = 1008
    INVALID_PAYLOAD = 1020  # the credential parses, its method's payload does not
    CARD_CODE_TYPO = 1040  # a typed card code: a symbol, its length or its check is wrong
    BATCH_TOO_LARGE = 1041  # a batch (online verifications, admissions) holds too many items

    PAYMENT_INVALID = 2000
    CHALLENGE_INVALID = 2001
    SEAL_BROKEN = 2002
    SIGNATURE_INVALID = 2003
    DEPOSIT_INVALID = 2004
    # The same credential is being delivered right now (draft -02 "Concurrent Request
    # Handling": one delivery); resend it once that answer is out.
    PAYMENT_IN_PROGRESS = 2021
    # A payment the card (PayWord commitment) made already, proved the card's own: another
    # copy of the card paid since; the answer says where the card is (StalePayment).
    PAYMENT_STALE = 2090

    INSUFFICIENT_FUNDS = 3000
    CARD_EXPIRED = 3001
    CHALLENGE_EXPIRED = 3002
    CERTIFICATE_EXPIRED = 3003
    AMOUNT_MISMATCH = 3004
    RISK_LIMIT = 3005
    PAYMENT_REQUIRED = 3006
    CREDIT_LIMIT = 3007

    ACCESS_DENIED = 4000
    UNAUTHENTICATED = 4001
    NOT_FOUND = 4002
    CONFLICT = 4003
    DUPLICATE_SPEND = 4004
    RATE_LIMITED = 4005
    PAYLOAD_TOO_LARGE = 4006
    SERVER_BUSY = 4007
    IDEMPOTENCY_KEY_REUSED = 4022  # an Idempotency-Key already used for another request
    IDEMPOTENCY_IN_PROGRESS = 4023  # the request of this Idempotency-Key is still running

    CARD_EXHAUSTED = 5000
    CARD_LOCKED = 5001
    WRONG_PIN = 5002
    POLICY_REFUSED = 5003
    MISUSE = 5004
    WALLET_LOCKED = 5005
    ISSUER_UNAVAILABLE = 5006
    INSECURE_TRANSPORT = 5007  # the wallet pays only over https (plain http on loopback)
    WRONG_SITE = 5008  # the site is outside the card's set of sites
    STORE_UNAVAILABLE = 5009  # no free store connection, or the database refuses clients
    KDF_TOO_WEAK = 5010  # a wallet file sealed under a passphrase KDF below our minimum
    WRONG_ISSUER = 5011  # the challenge names another bank or broker than the card's
    WRONG_PASSPHRASE = 5012  # the wallet's check value does not open (WALLET_LOCKED: damage)
    NO_CARD_FITS = 5013  # the wallet holds no card of any method the vendor offers
    CARD_IN_FLIGHT = 5014  # the card's last payment is unanswered: its next one must wait

    DEVICE_FAILED = 6000  # the PKCS#11 device failed, ran out of memory or was removed
    WALLET_BUSY = 6001  # the wallet file is locked by another process, or unwritable

    INTERNAL = 9000


class FarthingError(Exception):
    """Base of every error farthing raises on purpose. Not raised itself."""

    default_code: ErrorCode = ErrorCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code.name})"


class RemoteProtocolError(FarthingError):
    """The other party sent something wrong. Safe to report to that party."""

    default_code = ErrorCode.MALFORMED
    http_status = 400


class MalformedMessage(RemoteProtocolError):
    """Bytes, text or JSON that do not decode to a canonical message of the expected kind."""

    default_code = ErrorCode.MALFORMED
    http_status = 400


class UnsupportedMethod(RemoteProtocolError):
    """A payment method, scheme, generator or version this party does not speak."""

    default_code = ErrorCode.UNSUPPORTED_METHOD
    http_status = 400


class InvalidPayment(RemoteProtocolError):
    """A payment, MAC, signature or seal did not verify.

    Deliberately vague: a replay, a forged token, a wrong card and a stale index all raise
    this with the same message, so a forger learns nothing from which one it was:
    ``raise InvalidPayment()`` is the one refusal (as fernet has one InvalidToken).
    """

    default_code = ErrorCode.PAYMENT_INVALID
    http_status = 401

    def __init__(
        self, message: str = "payment did not verify", *, code: ErrorCode | None = None
    ) -> None:
        super().__init__(message, code=code)


class StalePayment(InvalidPayment):
    """A payment whose index the card (PayWord commitment) reached already (its last
    payment included, from another request), and whose value proves it is the card's own: a
    copy of the card (another wallet, a restored backup) paid since. ``position`` is where
    the card is (its ``spent``); ``last_value`` the vendor's last payword for PayWord (the
    wallet checks it against its own chain), else None.

    Told only to whoever knows a value of the card; a forged value, another card's or an
    index too far back stay the one vague InvalidPayment.
    """

    default_code = ErrorCode.PAYMENT_STALE

    def __init__(
        self,
        message: str = "the card paid past this index",
        *,
        position: int = 0,
        last_value: bytes | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.position = position
        self.last_value = last_value


class InsufficientFunds(RemoteProtocolError):
    """The card or account cannot cover the price (or the payment pays the wrong amount)."""

    default_code = ErrorCode.INSUFFICIENT_FUNDS
    http_status = 402


class PaymentExpired(RemoteProtocolError):
    """A card, certificate, commitment or challenge is past its expiry."""

    default_code = ErrorCode.CARD_EXPIRED
    http_status = 402


class AccessDenied(RemoteProtocolError):
    """The caller is not authenticated, or is not allowed to do this."""

    default_code = ErrorCode.ACCESS_DENIED
    http_status = 403


class NotFound(RemoteProtocolError):
    """No such account, card, merchant or batch."""

    default_code = ErrorCode.NOT_FOUND
    http_status = 404


class Conflict(RemoteProtocolError):
    """A state change that repeats one already made, or lost a race to another."""

    default_code = ErrorCode.CONFLICT
    http_status = 409


class RateLimited(RemoteProtocolError):
    """Too many requests; retry after ``retry_after`` seconds."""

    default_code = ErrorCode.RATE_LIMITED
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, code: ErrorCode | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class LocalProtocolError(FarthingError):
    """This side misused the API or its own state forbids the action. Not the peer's fault."""

    default_code = ErrorCode.MISUSE
    http_status = 500


class CardExhausted(LocalProtocolError):
    """The card has fewer units (or less balance) left than the payment needs."""

    default_code = ErrorCode.CARD_EXHAUSTED
    http_status = 402


class CardInFlight(LocalProtocolError):
    """The card's last payment has not been answered yet; its next payment waits for that.

    A vendor takes a payment whose index passes the card's last one as paying the gap too,
    and refuses as a replay an earlier payment that reaches it afterwards; so a wallet sends
    a card's payments one at a time. Transient: try again once the answer is in
    (``PaymentAuth`` waits on its own).
    """

    default_code = ErrorCode.CARD_IN_FLIGHT
    http_status = 409

    def __init__(
        self,
        message: str,
        *,
        card: str | None = None,
        next_look: Callable[[], float] | None = None,
        code: ErrorCode | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.card = card
        self.next_look = next_look
        """The caller's place in line, if the card is held in this process: seconds to sleep
        before looking again, 0.0 when it is the caller's go (farthing.wallet.turns)."""


class CardLocked(LocalProtocolError):
    """The card refuses to work: too many wrong PINs, or it was blocked."""

    default_code = ErrorCode.CARD_LOCKED
    http_status = 403


class WrongPin(LocalProtocolError):
    """The PIN given to the card is wrong; ``tries_left`` says how many remain."""

    default_code = ErrorCode.WRONG_PIN
    http_status = 403

    def __init__(self, message: str, *, tries_left: int) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class PolicyRefused(LocalProtocolError):
    """The wallet's spending policy refuses this price; nothing was spent."""

    default_code = ErrorCode.POLICY_REFUSED
    http_status = 402


class ExternalFailure(FarthingError):
    """Something this side relies on broke: a server, a device, a file. Not raised itself.

    Nobody's mistake: the same request may work later. The cause (the library's own
    exception) travels as ``__cause__`` for the log and is never sent to a remote party.
    """

    default_code = ErrorCode.INTERNAL
    http_status = 503


class Unavailable(ExternalFailure):
    """A server this side needs cannot serve now: the store has no free connection or the
    database refuses more clients (STORE_UNAVAILABLE), or the issuer is unreachable or
    answers nonsense (ISSUER_UNAVAILABLE). Retry after ``retry_after`` seconds."""

    default_code = ErrorCode.STORE_UNAVAILABLE
    http_status = 503

    def __init__(self, message: str, *, retry_after: int, code: ErrorCode | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class DeviceFailure(ExternalFailure):
    """The card device (a PKCS#11 token) failed, ran out of memory or was removed."""

    default_code = ErrorCode.DEVICE_FAILED
    http_status = 503


class ResourceBusy(ExternalFailure):
    """A local resource (the wallet file) is locked by another process or cannot be written."""

    default_code = ErrorCode.WALLET_BUSY
    http_status = 503


def _class_of(code: ErrorCode) -> type[FarthingError]:
    """The one class each code is raised as: by exact code, then by the thousands."""
    exact: dict[ErrorCode, type[FarthingError]] = {
        ErrorCode.UNSUPPORTED_METHOD: UnsupportedMethod,
        ErrorCode.PAYMENT_STALE: StalePayment,
        ErrorCode.CARD_EXPIRED: PaymentExpired,
        ErrorCode.CHALLENGE_EXPIRED: PaymentExpired,
        ErrorCode.CERTIFICATE_EXPIRED: PaymentExpired,
        ErrorCode.ACCESS_DENIED: AccessDenied,
        ErrorCode.UNAUTHENTICATED: AccessDenied,
        ErrorCode.NOT_FOUND: NotFound,
        ErrorCode.CONFLICT: Conflict,
        ErrorCode.DUPLICATE_SPEND: Conflict,
        ErrorCode.IDEMPOTENCY_KEY_REUSED: Conflict,
        ErrorCode.IDEMPOTENCY_IN_PROGRESS: Conflict,
        ErrorCode.RATE_LIMITED: RateLimited,
        ErrorCode.SERVER_BUSY: RateLimited,
        ErrorCode.PAYLOAD_TOO_LARGE: MalformedMessage,
        ErrorCode.PAYMENT_REQUIRED: InsufficientFunds,
        ErrorCode.CARD_EXHAUSTED: CardExhausted,
        ErrorCode.CARD_LOCKED: CardLocked,
        ErrorCode.CARD_IN_FLIGHT: CardInFlight,
        ErrorCode.WRONG_PIN: WrongPin,
        ErrorCode.POLICY_REFUSED: PolicyRefused,
        ErrorCode.ISSUER_UNAVAILABLE: Unavailable,
        ErrorCode.STORE_UNAVAILABLE: Unavailable,
        ErrorCode.DEVICE_FAILED: DeviceFailure,
        ErrorCode.WALLET_BUSY: ResourceBusy,
    }
    by_thousand: dict[int, type[FarthingError]] = {
        1: MalformedMessage,
        2: InvalidPayment,
        3: InsufficientFunds,
        5: LocalProtocolError,
        9: LocalProtocolError,
    }
    return exact.get(code) or by_thousand[int(code) // 1000]


CLASS_OF_CODE: Final[Mapping[ErrorCode, type[FarthingError]]] = MappingProxyType(
    {code: _class_of(code) for code in ErrorCode}
)
"""The class each code is raised as, for rebuilding an error from its code alone (a problem
from the issuer). Codes reused under another class (MISUSE's CONFLICT, NOT_FOUND raised as
LocalProtocolError by a local lookup) are still sent and read back as this one."""
