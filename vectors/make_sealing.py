"""Build the seal vectors: vectors/sealing/{seal,invalid}.json.

Run ``python vectors/make_sealing.py`` to rewrite the files. The seal
(:mod:`farthing.core.sealing`, docs/http.md) is AES-256-GCM under the payment's key K
with ``aad = seal_binding(method, card_id, index, resource, status, content_type)``; the
wire form is ``nonce || ciphertext || tag``. Keys, card ids and nonces come from
:class:`farthing.testing.DeterministicRandom`. Bytes are lowercase hex. Each ``invalid``
vector changes one thing on the way (written here by hand: what changed), and must fail
with SEAL_BROKEN.
"""

from __future__ import annotations

import json
from pathlib import Path

from farthing.core.encoding import Writer
from farthing.core.primitives import aead_seal
from farthing.core.sealing import seal, seal_binding
from farthing.testing import DeterministicRandom

Json = dict[str, object]

OUT = Path(__file__).resolve().parent / "sealing"

CASES: tuple[tuple[str, str, int, str, int, str, bytes], ...] = (
    # name, method, index, resource, status, content type, plaintext
    ("chain-article", "szm:chain", 2, "/articles/a", 200, "text/plain; charset=utf-8",
     b"secret article a"),
    ("prbg-html", "szm:prbg", 7, "/articles/b.html", 200, "text/html; charset=utf-8",
     b"<p>article b</p>"),
    ("not-found-page", "szm:chain", 4, "/articles/gone", 404, "text/plain; charset=utf-8",
     b"no such article"),
    ("no-content-type", "szm:prbg", 1, "/data/raw", 200, "", b"\x00\x01\x02"),
    ("unicode-path", "szm:chain", 9, "/articles/\u00e9.txt", 200, "text/plain", b"an NFC name"),
    ("empty-body", "szm:chain", 3, "/a", 204, "", b""),
)  # fmt: skip


def seal_vectors() -> list[Json]:
    out: list[Json] = []
    for name, method, index, resource, status, content_type, plaintext in CASES:
        rng = DeterministicRandom(f"farthing/vectors/sealing/{name}")
        key, card_id, nonce = rng(32), rng(16), rng(12)
        binding = {
            "method": method,
            "card_id": card_id,
            "index": index,
            "resource": resource,
            "status": status,
            "content_type": content_type,
        }
        out.append(
            {
                "name": name,
                "key": key.hex(),
                "nonce": nonce.hex(),
                "method": method,
                "card_id": card_id.hex(),
                "index": index,
                "resource": resource,
                "status": status,
                "content_type": content_type,
                "plaintext": plaintext.hex(),
                "aad": seal_binding(**binding).hex(),  # type: ignore[arg-type]
                "sealed": seal(key, plaintext, nonce=nonce, **binding).hex(),  # type: ignore[arg-type]
            }
        )
    return out


# What a party on the way changes, applied to the first seal vector's opening parameters.
TAMPERING: tuple[tuple[str, dict[str, object]], ...] = (
    ("content-type-relabelled", {"content_type": "text/html; charset=utf-8"}),
    ("status-changed", {"status": 203}),
    ("status-404-passed-as-200", {"status": 404}),
    ("resource-changed", {"resource": "/articles/b"}),
    ("index-changed", {"index": 3}),
    ("method-changed", {"method": "szm:prbg"}),
    ("card-changed", {"card_id": "00" * 16}),
    ("wrong-key", {"key": "11" * 32}),
    ("bit-flipped", {"flip": 20}),
    ("truncated", {"truncate": 27}),
)


def invalid_vectors(sealed: list[Json]) -> list[Json]:
    base = {k: v for k, v in sealed[0].items() if k not in ("name", "plaintext", "aad")}
    tampering = (*TAMPERING, ("version-2-chacha20-poly1305", {"sealed": old_seal(sealed[0])}))
    return [
        {"name": name, **base, **change, "error": "InvalidPayment", "code": "SEAL_BROKEN"}
        for name, change in tampering
    ]


def old_seal(vector: Json) -> str:
    """The same body sealed as before issue 15 (binding version 2, ChaCha20-Poly1305): a
    wallet of today must refuse it, not fall back to it."""
    aad = (
        Writer("farthing/seal", 2)
        .text(str(vector["method"]))
        .bytes(bytes.fromhex(str(vector["card_id"])))
        .u64(int(str(vector["index"])))
        .text(str(vector["resource"]))
        .u64(int(str(vector["status"])))
        .text(str(vector["content_type"]))
        .finish()
    )
    key, nonce = bytes.fromhex(str(vector["key"])), bytes.fromhex(str(vector["nonce"]))
    plaintext = bytes.fromhex(str(vector["plaintext"]))
    return (nonce + aead_seal(key, nonce, plaintext, aad)).hex()


def build() -> dict[str, dict[str, object]]:
    sealed = seal_vectors()
    return {
        "seal": {
            "description": "The seal of a paid SZM answer: AES-256-GCM under the "
            "payment's key; aad = canonical('farthing/seal' v3, method, card_id, index, "
            "resource, status, content_type); sealed = nonce || ciphertext || tag.",
            "vectors": sealed,
        },
        "invalid": {
            "description": "A sealed answer changed on the way (one thing each, or opened "
            "with a wrong key, or sealed the old way: binding v2 under ChaCha20-Poly1305): "
            "open_sealed must fail with SEAL_BROKEN.",
            "vectors": invalid_vectors(sealed),
        },
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for kind, document in build().items():
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        (OUT / f"{kind}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
