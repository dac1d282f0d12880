"""The wallet's test doubles: a passphrase KDF cheap enough for tests, and an answer from a
vendor that is not in the test.

:func:`cheap_wallet_kdf`: wallets created and opened inside it use an Argon2id cost far too
low for a real passphrase, so tests stay fast. The only way to get one: no flag, option or
environment variable of farthing itself lowers the cost. (It lives beside the wallet, not in
:mod:`farthing.testing`, which uses the core only.)

:func:`taken`: a test that calls :meth:`Wallet.pay` with no vendor to send the payment to
tells the wallet the vendor took it, so its card may pay again (a card pays one request at a
time: :mod:`farthing.wallet.turns`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from farthing.http.methods import METHOD_OF
from farthing.http.payment_auth import Receipt
from farthing.wallet import secretbox
from farthing.wallet.auth import Payer, PreparedPayment

__all__ = ["cheap_wallet_kdf", "taken"]


@contextmanager
def cheap_wallet_kdf() -> Iterator[None]:
    """Inside: new wallets get a 64 KiB, 1-pass Argon2id, and such wallets open. For tests."""
    cheap = secretbox.KdfCost(memory_kib=64, passes=1, lanes=1)
    saved = secretbox._policy
    secretbox._policy = secretbox._Policy(fresh=cheap, floor=cheap)
    try:
        yield
    finally:
        secretbox._policy = saved


def taken(wallet: Payer, payment: PreparedPayment, *, status: int = 404) -> None:
    """Record ``payment`` as taken by a vendor that answered ``status`` with a receipt: its
    position stays spent (never reused) and its card's turn is given back."""
    receipt = Receipt(method=METHOD_OF[payment.method], timestamp=0, reference="test")
    wallet.refused(payment, status, receipt=receipt)
