"""Child process of the wallet crash test: a reader paying a real vendor in a loop.

``python -m tests.reliability.wallet_child WALLET BASE_URL`` with the passphrase in
``FARTHING_WALLET_PASSPHRASE``. Prints ``ready``, then one JSON line per answer:
``{"status": 200, "index": i, "units": u}`` for a delivered (and opened) article, else
``{"status": s}``. The test SIGKILLs it at a random moment.
"""

from __future__ import annotations

import json
import os
import random
import sys

import httpx

from farthing.http.payment_auth import Receipt
from farthing.wallet.auth import PaymentAuth
from farthing.wallet.testing import cheap_wallet_kdf
from farthing.wallet.wallet import Wallet
from tests.reliability.world import ARTICLES


def main(wallet_path: str, base: str) -> None:
    names = sorted(ARTICLES)
    rng = random.Random()
    with (
        cheap_wallet_kdf(),  # the parent made the wallet with the cheap test cost
        Wallet.open(wallet_path, os.environ["FARTHING_WALLET_PASSPHRASE"]) as wallet,
        httpx.Client(base_url=base, auth=PaymentAuth(wallet), timeout=30) as client,
    ):
        print("ready", flush=True)
        while True:
            name = rng.choice(names)
            response = client.get(f"/articles/{name}")
            line: dict[str, object] = {"status": response.status_code}
            if response.status_code == 200:
                receipt = Receipt.from_header(response.headers["payment-receipt"])
                line |= {"index": receipt.extra["index"], "units": receipt.extra["units"]}
                line["ok"] = response.text == ARTICLES[name]
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
