"""The wallet: the customer's side of every scheme (cards, stores, payment flows)."""
