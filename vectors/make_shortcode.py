"""Build the short card code vectors: vectors/shortcode/{derive,invalid}.json.

Run ``python vectors/make_shortcode.py`` to rewrite the files. A ``derive`` vector gives a
master key and a card id and every value the issuer and the wallet derive from them
(:mod:`farthing.core.shortcode`): the printed code, the lookup id and the card secret S of
each SZM protocol. An ``invalid`` vector is a typed code and the error code it must give;
what is wrong with it is written here by hand. Bytes are lowercase hex.
"""

from __future__ import annotations

import json
from pathlib import Path

from farthing.core.schemes import szm_chain, szm_prbg
from farthing.core.shortcode import format_code, lookup_id, short_secret
from farthing.testing import DeterministicRandom

Json = dict[str, object]

OUT = Path(__file__).resolve().parent / "shortcode"
MASTER = DeterministicRandom("farthing/vectors/shortcode/master")(32)


def derive() -> list[Json]:
    rng = DeterministicRandom("farthing/vectors/shortcode/cards")
    vectors: list[Json] = []
    for number in range(4):
        card_id = rng(16)
        secret = short_secret(MASTER, card_id)
        vectors.append(
            {
                "name": f"card-{number}",
                "master_key": MASTER.hex(),
                "card_id": card_id.hex(),
                "short_secret": secret.symbols,
                "code": format_code(secret),
                "lookup_id": lookup_id(secret).hex(),
                "chain_secret": szm_chain.card_secret(MASTER, card_id).hex(),
                "prbg_secret": szm_prbg.card_secret(MASTER, card_id).hex(),
            }
        )
    return vectors


def invalid(good: str) -> list[Json]:
    symbols = good.replace("-", "")
    wrong_symbol = "1" if symbols[5] != "1" else "2"
    typo = symbols[:5] + wrong_symbol + symbols[6:]
    first_differing = next(i for i in range(23) if symbols[i] != symbols[i + 1])
    swap = (
        symbols[:first_differing]
        + symbols[first_differing + 1]
        + symbols[first_differing]
        + symbols[first_differing + 2 :]
    )
    return [
        {"name": "one-wrong-symbol", "code": typo, "error": "CARD_CODE_TYPO"},
        {"name": "neighbours-swapped", "code": swap, "error": "CARD_CODE_TYPO"},
        {"name": "a-U", "code": "U" + symbols[1:], "error": "CARD_CODE_TYPO"},
        {"name": "a-symbol-missing", "code": symbols[:-1], "error": "CARD_CODE_TYPO"},
        {"name": "a-symbol-extra", "code": symbols + "0", "error": "CARD_CODE_TYPO"},
        {"name": "a-long-code", "code": "FTH1-" + "A" * 200, "error": "OVERSIZED"},
    ]


def build() -> dict[str, Json]:
    derived = derive()
    return {
        "derive": {
            "description": "short secret, printed code, lookup id and card secrets of a card",
            "vectors": derived,
        },
        "invalid": {
            "description": "typed codes that must be refused, with the error code",
            "vectors": invalid(str(derived[0]["code"])),
        },
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for kind, document in build().items():
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        (OUT / f"{kind}.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
