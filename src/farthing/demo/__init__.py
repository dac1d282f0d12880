"""``farthing demo``: the whole system, end to end, on SQLite and loopback, in one process.

1. An issuer (bank, broker, SZM card issuer) on a fresh SQLite file, served on a free
   loopback port; an operator sets it up through its HTTP API: anonymous SZM cards of both
   protocols (hash chain; HMAC-CTR and Blum-Blum-Shub generators), a customer with money,
   an HLL smart card (in a SoftHSM2 token when the machine has one), a merchant, a PayWord
   user with a broker certificate.
2. A vendor selling a few articles, sharing the issuer's store for SZM (no third party) and
   asking the issuer for HLL and PayWord.
3. A wallet that buys with every method through ``PaymentAuth``, opens sealed bodies, pays
   up front for a second article, then replays a payment for another good (refused) and
   for the same one (a free retry); deposits are cleared and the ledger is checked.

Every figure in the report comes from what ran; any check that fails makes it fail.
"""

from farthing.demo._runner import GOODS, DemoWorld, demo_world, run_demo
from farthing.demo.report import DemoReport

__all__ = ["GOODS", "DemoReport", "DemoWorld", "demo_world", "run_demo"]
