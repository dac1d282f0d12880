"""Each payment method's HTTP binding, in one module shared by the paywall and the wallet.

A method's wire form is three JSON objects: the challenge's ``request`` (the price, as the
paywall asks for it), the credential's ``payload`` (the payment, as the wallet sends it) and
the ``Payment-Receipt`` members beyond the envelope of :mod:`farthing.http.payment_auth`.
Each is a frozen dataclass with ``to_json`` (what is sent) and ``from_json`` (strict
parsing). :mod:`~farthing.http.methods.common` holds what the methods share;
``src/farthing/schemas/<method>.<kind>.json`` describe the same objects, and
tests/http/test_schemas.py holds each dataclass to its schema.

- :mod:`~farthing.http.methods.szm`: ``szm:chain`` and ``szm:prbg`` (one shape for both);
- :mod:`~farthing.http.methods.hll`: ``hll:mac``, and the offer the card MACs, rebuilt from
  the request by both sides;
- :mod:`~farthing.http.methods.payword`: ``payword``.
"""
