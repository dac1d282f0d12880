"""The seal against vectors/sealing/*.json, the binding against docs/http.md's layout, and the
files against their generator."""

from __future__ import annotations

import importlib.util
import json
import struct
from typing import Any

import pytest

from farthing.core.errors import ErrorCode, InvalidPayment
from farthing.core.sealing import open_sealed, seal, seal_binding
from tests.vectorlib import VECTORS, json_parametrize, load_vectors

Vector = dict[str, Any]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def binding_of(v: Vector) -> dict[str, Any]:
    return {
        "method": v["method"],
        "card_id": h(v["card_id"]),
        "index": v["index"],
        "resource": v["resource"],
        "status": v["status"],
        "content_type": v["content_type"],
    }


def documented_aad(v: Vector) -> bytes:
    """docs/http.md, byte for byte: version 3, the domain, then the six fields."""

    def text(value: str) -> bytes:
        raw = value.encode("utf-8")
        return struct.pack(">H", len(raw)) + raw

    domain = b"farthing/seal"
    return (
        bytes((3, len(domain)))
        + domain
        + text(v["method"])
        + struct.pack(">H", 16)
        + h(v["card_id"])
        + struct.pack(">Q", v["index"])
        + text(v["resource"])
        + struct.pack(">Q", v["status"])
        + text(v["content_type"])
    )


@json_parametrize("sealing", "seal")
def test_seal_vector(vector: Vector) -> None:
    binding = binding_of(vector)
    assert seal_binding(**binding) == h(vector["aad"]) == documented_aad(vector)
    sealed = seal(h(vector["key"]), h(vector["plaintext"]), nonce=h(vector["nonce"]), **binding)
    assert sealed == h(vector["sealed"])
    assert open_sealed(h(vector["key"]), sealed, **binding) == h(vector["plaintext"])


@json_parametrize("sealing", "invalid")
def test_invalid_seal_vector(vector: Vector) -> None:
    sealed = bytearray(h(vector["sealed"]))
    if "flip" in vector:
        sealed[vector["flip"]] ^= 0x01
    if "truncate" in vector:
        sealed = sealed[: vector["truncate"]]
    with pytest.raises(InvalidPayment) as caught:
        open_sealed(h(vector["key"]), bytes(sealed), **binding_of(vector))
    assert vector["error"] == "InvalidPayment"
    assert caught.value.code is ErrorCode[vector["code"]]


def test_vector_files_match_their_generator() -> None:
    path = VECTORS / "make_sealing.py"
    spec = importlib.util.spec_from_file_location("make_sealing", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()
    assert set(built) == {"seal", "invalid"}
    for kind, document in built.items():
        stored = json.loads((VECTORS / "sealing" / f"{kind}.json").read_text(encoding="utf-8"))
        assert document == stored, kind
        assert load_vectors("sealing", kind) == stored["vectors"]
