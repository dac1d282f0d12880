"""The browser's card holder (src/farthing/paywall/web/core.js, shortcode.js) reproduces every
vector the Python core is held to: vectors/szm_chain (generate), vectors/szm_prbg (generate,
the hmac-ctr generator), vectors/sealing (seal and invalid) and vectors/shortcode (derive and
invalid), run in the real Chromium."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.vectorlib import load_vectors

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

WEB = resources.files("farthing.paywall") / "web"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def core_page(page: Page) -> Iterator[Page]:
    """A blank page on a loopback origin (a secure context, so WebCrypto is there) that can
    import the shipped core.js."""
    handler = functools.partial(_Quiet, directory=str(WEB))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page.goto(f"http://127.0.0.1:{server.server_address[1]}/core.js")
    yield page
    server.shutdown()
    server.server_close()


def run_in_page(page: Page, script: str, vectors: list[dict[str, Any]]) -> Any:
    return page.evaluate(
        "async ([script, vectors]) => {"
        " const core = await import('/core.js'); const sc = await import('/shortcode.js');"
        " const run = new Function('core', 'sc', 'vectors',"
        "   'return (async () => {' + script + '})()');"
        " return await run(core, sc, vectors); }",
        [script, vectors],
    )


CHAIN = """
const h = core.fromHex, x = core.toHex, out = [];
for (const v of vectors) {
  const cardId = h(v.card_id);
  const short = await sc.shortSecret(h(v.master_key), cardId);
  const secret = await sc.cardSecretFromShort(short, core.SECRET_DOMAINS["szm:chain"], cardId);
  const card = { method: core.CHAIN_METHOD, cardId, secret, length: v.length };
  const seed = await core.chainSeed(secret, cardId);
  const anchor = await core.chainValue(card, 0);
  const payments = [];
  for (const p of v.payments) {
    const paid = await core.paymentFor(card, p.index);
    payments.push({ index: p.index, value: x(paid.value), payment: x(paid.payment),
                    key_derived: x(paid.key) });
  }
  out.push({ card_secret: x(secret), chain_seed: x(seed), anchor: x(anchor), payments });
}
return out;
"""


def test_js_reproduces_the_chain_vectors(core_page: Page) -> None:
    vectors = load_vectors("szm_chain", "generate")
    got = run_in_page(core_page, CHAIN, vectors)
    for vector, result in zip(vectors, got, strict=True):
        assert result["card_secret"] == vector["card_secret"], vector["name"]
        assert result["chain_seed"] == vector["chain_seed"], vector["name"]
        assert result["anchor"] == vector["anchor"], vector["name"]
        expected = [
            {k: p[k] for k in ("index", "value", "payment", "key_derived")}
            for p in vector["payments"]
        ]
        assert result["payments"] == expected, vector["name"]


PRBG = """
const h = core.fromHex, x = core.toHex, out = [];
for (const v of vectors) {
  const cardId = h(v.card_id);
  const short = await sc.shortSecret(h(v.master_key), cardId);
  const secret = await sc.cardSecretFromShort(short, core.SECRET_DOMAINS["szm:prbg"], cardId);
  const card = { method: core.PRBG_METHOD, cardId, secret, length: v.units };
  const blocks = [];
  for (let j = 0; j < v.first_blocks.length; j += 1) {
    blocks.push(x(await core.prbgStreamBlock(secret, j)));
  }
  const payments = [];
  for (const p of v.payments) {
    const paid = await core.paymentFor(card, p.index);
    payments.push({ index: p.index, token: x(paid.value), payment: x(paid.payment),
                    key: x(paid.key) });
  }
  out.push({ card_secret: x(secret), first_blocks: blocks, payments });
}
return out;
"""


def test_js_reproduces_the_hmac_prbg_vectors(core_page: Page) -> None:
    vectors = [v for v in load_vectors("szm_prbg", "generate") if v["generator"] == "hmac-ctr"]
    assert len(vectors) >= 2
    got = run_in_page(core_page, PRBG, vectors)
    for vector, result in zip(vectors, got, strict=True):
        assert result["card_secret"] == vector["card_secret"], vector["name"]
        assert result["first_blocks"] == vector["first_blocks"], vector["name"]
        expected = [
            {k: p[k] for k in ("index", "token", "payment", "key")} for p in vector["payments"]
        ]
        assert result["payments"] == expected, vector["name"]


SEAL = """
const h = core.fromHex, x = core.toHex, out = [];
for (const v of vectors) {
  const binding = { method: v.method, cardId: h(v.card_id), index: v.index,
                    resource: v.resource, status: v.status, contentType: v.content_type };
  let sealed = h(v.sealed);
  if (v.flip !== undefined) sealed[v.flip] ^= 1;
  if (v.truncate !== undefined) sealed = sealed.subarray(0, v.truncate);
  let aad = null, opened = null, error = null;
  try { aad = x(core.sealBinding(binding)); } catch (e) { aad = null; }
  try { opened = x(await core.openSealed(h(v.key), sealed, binding)); }
  catch (e) { error = e instanceof core.SealBroken ? "SEAL_BROKEN" : String(e); }
  out.push({ aad, opened, error });
}
return out;
"""


def test_js_opens_every_seal_vector(core_page: Page) -> None:
    vectors = load_vectors("sealing", "seal")
    got = run_in_page(core_page, SEAL, vectors)
    for vector, result in zip(vectors, got, strict=True):
        assert result == {"aad": vector["aad"], "opened": vector["plaintext"], "error": None}


def test_js_refuses_every_invalid_seal_vector(core_page: Page) -> None:
    vectors = load_vectors("sealing", "invalid")
    got = run_in_page(core_page, SEAL, vectors)
    for vector, result in zip(vectors, got, strict=True):
        assert result["opened"] is None, vector["name"]
        assert result["error"] == vector["code"], vector["name"]


SHORT = """
const h = core.fromHex, x = core.toHex, out = [];
for (const v of vectors) {
  if (v.error !== undefined) {
    try { sc.parseCode(v.code); out.push({ refused: false }); }
    catch (e) { out.push({ refused: e instanceof sc.CodeTypo }); }
    continue;
  }
  const cardId = h(v.card_id);
  const short = sc.parseCode(v.code);
  out.push({
    short_secret: short,
    issuer_short: await sc.shortSecret(h(v.master_key), cardId),
    code: sc.formatCode(short),
    lookup_id: x(await sc.lookupId(short)),
    chain_secret: x(await sc.cardSecretFromShort(short, core.SECRET_DOMAINS["szm:chain"], cardId)),
    prbg_secret: x(await sc.cardSecretFromShort(short, core.SECRET_DOMAINS["szm:prbg"], cardId)),
  });
}
return out;
"""


def test_js_reproduces_the_short_code_vectors(core_page: Page) -> None:
    vectors = load_vectors("shortcode", "derive")
    got = run_in_page(core_page, SHORT, vectors)
    for vector, result in zip(vectors, got, strict=True):
        assert result["issuer_short"] == vector["short_secret"], vector["name"]
        expected = {k: vector[k] for k in result if k != "issuer_short"}
        assert {k: v for k, v in result.items() if k != "issuer_short"} == expected, vector["name"]


def test_js_refuses_every_invalid_short_code(core_page: Page) -> None:
    vectors = load_vectors("shortcode", "invalid")
    assert {v["error"] for v in vectors} == {"CARD_CODE_TYPO", "OVERSIZED"}
    got = run_in_page(core_page, SHORT, vectors)
    assert got == [{"refused": True}] * len(vectors)
