"""Each payment method's HTTP binding, in one module shared by the paywall and the wallet.

A method's wire form is three JSON objects: the challenge's ``request`` (the ``charge``
intent's price, with the method's members under ``methodDetails``), the credential's
``payload`` (the payment, as the wallet sends it) and the ``Payment-Receipt`` members beyond
the envelope of :mod:`farthing.http.payment_auth`. Each is a frozen dataclass with
``to_json`` (what is sent) and ``from_json`` (strict parsing).
:mod:`~farthing.http.methods.common` holds what the methods share;
``src/farthing/schemas/<method>.<kind>.json`` describe the same objects, and
tests/http/test_schemas.py holds each dataclass to its schema.

Method ids on the wire are lowercase letters only (the draft); the card kinds (schemes)
keep their names inside farthing (card files, the store, the seal binding):

=============  ==============  =========================================
method id      scheme          module
=============  ==============  =========================================
``szmchain``   ``szm:chain``   :mod:`~farthing.http.methods.szm`
``szmprbg``    ``szm:prbg``    :mod:`~farthing.http.methods.szm`
``hll``        ``hll:mac``     :mod:`~farthing.http.methods.hll`
``payword``    ``payword``     :mod:`~farthing.http.methods.payword`
=============  ==============  =========================================
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from farthing.http.methods import hll, payword, szm

__all__ = ["METHOD_OF", "SCHEME_OF"]

SCHEME_OF: Final[Mapping[str, str]] = MappingProxyType(
    {**szm.METHODS, hll.METHOD: hll.SCHEME, payword.METHOD: payword.SCHEME}
)
"""Method id on the wire -> the scheme (card kind) that pays it."""

METHOD_OF: Final[Mapping[str, str]] = MappingProxyType(
    {scheme: method for method, scheme in SCHEME_OF.items()}
)
"""Scheme (card kind) -> its method id on the wire."""
