"""The wallet: the customer's side of every scheme (cards, stores, payment flows).

- :mod:`farthing.wallet.wallet`: :class:`~farthing.wallet.wallet.Wallet`, which pays HTTP 402
  challenges (the ``Payer`` of :mod:`farthing.wallet.auth`'s ``PaymentAuth``).
- :mod:`farthing.wallet.cards`: the kinds of card and how they are read in and stored.
- :mod:`farthing.wallet.methods`: each payment method's quote and write-ahead payment.
- :mod:`farthing.wallet.policy`: the spending policy.
- :mod:`farthing.wallet.store` and :mod:`farthing.wallet.secretbox`: the wallet file, its
  crash-safe transactions and its sealed secrets.
- :mod:`farthing.wallet.pkcs11_card`: the HLL card key inside a PKCS#11 token.

Nothing is imported here, so ``import farthing.wallet.auth`` stays light.
"""
