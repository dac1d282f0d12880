"""The wallet's test double: a passphrase KDF cheap enough for tests.

:func:`cheap_wallet_kdf`: wallets created and opened inside it use an Argon2id cost far too
low for a real passphrase, so tests stay fast. The only way to get one: no flag, option or
environment variable of farthing itself lowers the cost. (It lives beside the wallet, not in
:mod:`farthing.testing`, which uses the core only.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from farthing.wallet import secretbox

__all__ = ["cheap_wallet_kdf"]


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
