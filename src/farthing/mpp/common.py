"""What the pympp client and server methods share: farthing's method ids as pympp methods.

pympp describes a method by ``mpp.Method(name, intent, request_model, payload_model)``, with
pydantic models that validate the JSON. farthing's own wire modules
(:mod:`farthing.http.methods`) read and check that JSON, so the models here accept any
object and leave the checking to farthing, which refuses what it does not read.
"""

from __future__ import annotations

from typing import Any, Final

from mpp.methods import Method
from pydantic import BaseModel, ConfigDict

from farthing.http.methods import SCHEME_OF

__all__ = ["CHARGE", "METHOD_IDS", "AnyObject", "method_definition"]

CHARGE: Final = "charge"
METHOD_IDS: Final = tuple(SCHEME_OF)  # the method ids on the wire: szmchain, szmprbg, ...


class AnyObject(BaseModel):
    """A JSON object whose members farthing's wire module checks (not pydantic)."""

    model_config = ConfigDict(extra="allow")

    def members(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def method_definition(name: str) -> Method[AnyObject, AnyObject]:
    """The pympp description of farthing's method ``name`` for the ``charge`` intent."""
    return Method(name=name, intent=CHARGE, request_model=AnyObject, payload_model=AnyObject)
