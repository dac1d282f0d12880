"""docs/http.md's complete exchanges are what a live vendor sends, byte for byte.

:mod:`tests.http.http_doc` serves the vendor (``farthing vendor serve``'s app, built here
with a fixed clock and randomness, fixed keys and cards) on 127.0.0.1 and makes one
exchange per method over a raw socket with farthing's wallet; this test compares them with
the blocks in docs/http.md (only uvicorn's ``date`` is normalised, to the app's clock) and
holds every JSON document shown to its schema. When the wire changes on purpose, rewrite
the blocks with ``python -m tests.http.http_doc --write``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.http import http_doc
from tests.http.test_schemas import errors

pytestmark = pytest.mark.xdist_group("uvicorn")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, http_doc.Exchange]:
    return http_doc.exchanges(tmp_path_factory.mktemp("http-doc"))


@pytest.mark.parametrize("method", http_doc.METHODS)
def test_the_doc_shows_what_the_vendor_sends(
    made: dict[str, http_doc.Exchange], method: str
) -> None:
    shown = http_doc.doc_blocks(http_doc.DOC.read_text(encoding="utf-8"))
    assert method in shown, f"docs/http.md has no <!-- exchange {method} --> block"
    assert shown[method] == http_doc.render(made[method]), (
        "docs/http.md is behind the wire: `python -m tests.http.http_doc` shows the "
        "difference, `--write` updates the doc"
    )


@pytest.mark.parametrize("method", http_doc.METHODS)
def test_each_exchange_is_402_then_200_with_a_receipt_then_a_402_problem(
    made: dict[str, http_doc.Exchange], method: str
) -> None:
    exchange = made[method]
    statuses = [answer.head.split("\n", 1)[0] for _, _, answer in exchange.steps]
    assert statuses == [
        "HTTP/1.1 402 Payment Required",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 402 Payment Required",
    ]
    refused, paid, failed = (answer for _, _, answer in exchange.steps)
    assert refused.header("cache-control") == failed.header("cache-control") == "no-store"
    assert paid.header("cache-control") == "private"
    assert paid.header("payment-receipt")
    assert exchange.opened == http_doc.GOODS[http_doc.ARTICLE]


@pytest.mark.parametrize("method", http_doc.METHODS)
def test_every_json_document_shown_matches_its_schema(
    made: dict[str, http_doc.Exchange], method: str
) -> None:
    documents = made[method].documents
    kinds = {schema for schema, _ in documents}
    assert kinds == {
        "problem.json",
        "credential.json",
        f"{method}.request.json",
        f"{method}.payload.json",
        f"{method}.receipt.json",
    }
    for schema, document in documents:
        assert errors(schema, document) == [], (schema, document)


def test_every_body_and_json_block_in_the_doc_is_one_the_schemas_took(
    made: dict[str, http_doc.Exchange],
) -> None:
    """What the doc prints (problem bodies, decoded documents) is among what was checked."""
    checked = [document for done in made.values() for _, document in done.documents]
    text = "".join(http_doc.doc_blocks(http_doc.DOC.read_text(encoding="utf-8")).values())
    printed = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", text, re.S)]
    printed += [json.loads(line) for line in text.splitlines() if line.startswith('{"type"')]
    assert len(printed) == 4 * 3 + 4 * 2  # per method: 3 decoded documents, 2 problems
    assert all(document in checked for document in printed)


def test_regenerating_writes_the_blocks_and_nothing_else(tmp_path: Path) -> None:
    text = "intro\n<!-- exchange hll -->\nold\n<!-- /exchange hll -->\nrest\n"
    assert http_doc.with_blocks(text, {"hll": "new\n"}) == (
        "intro\n<!-- exchange hll -->\nnew\n<!-- /exchange hll -->\nrest\n"
    )
