"""Load test vectors from ``vectors/<scheme>/{generate,verify,invalid}.json``.

Each file is ``{"description": str, "vectors": [ {...}, ... ]}``; byte values are lowercase
hex strings. :func:`json_parametrize` turns a file into pytest parameters, one per vector,
with the vector's ``name`` as the test id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def load_vectors(scheme: str, kind: str) -> list[dict[str, Any]]:
    path = VECTORS / scheme / f"{kind}.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    vectors: list[dict[str, Any]] = document["vectors"]
    if not vectors:
        raise AssertionError(f"{path} holds no vectors")
    return vectors


def json_parametrize(scheme: str, kind: str) -> pytest.MarkDecorator:
    vectors = load_vectors(scheme, kind)
    ids = [str(v.get("name", i)) for i, v in enumerate(vectors)]
    return pytest.mark.parametrize("vector", vectors, ids=ids)
