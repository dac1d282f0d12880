// The short card code a reader types (src/farthing/core/shortcode.py): 23 symbols of
// Crockford's base32 and a GF(32) check symbol. The page's wallet checks the code before it
// asks the shop anything, and derives from it the lookup id it sends and the card secret it
// never sends. vectors/shortcode is the truth for both languages (tests/web/test_core_js.py).

import { Writer, concat, hkdfSha256, hmacSha256 } from "./core.js";

export const ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const SECRET_LEN = 23;
const SYMBOLS = SECRET_LEN + 1;
const VALUE = Object.fromEntries([...ALPHABET].map((c, i) => [c, i]));
VALUE.I = 1;
VALUE.L = 1;
VALUE.O = 0;
const IGNORED = new Set([" ", "-", "\t", "\n", "\r"]);
const POLY = 0b100101; // x^5 + x^2 + 1
const encoder = new TextEncoder();

export class CodeTypo extends Error {}

function timesAlpha(value) {
  value <<= 1;
  return value & 0b100000 ? value ^ POLY : value;
}

function gfMul(a, b) {
  let product = 0;
  while (b) {
    if (b & 1) product ^= a;
    a = timesAlpha(a);
    b >>= 1;
  }
  return product;
}

const WEIGHTS = (() => {
  const powers = [1];
  for (let i = 0; i < SECRET_LEN; i += 1) powers.push(timesAlpha(powers[powers.length - 1]));
  return powers.reverse();
})();

function syndrome(values) {
  return values.reduce((total, value, i) => total ^ gfMul(WEIGHTS[i], value), 0);
}

/** The 23 canonical symbols of a typed code, or CodeTypo in words a reader understands. */
export function parseCode(text) {
  if (text.length > 128) throw new CodeTypo("a card code is 24 symbols");
  const values = [];
  let position = 0;
  for (const char of text) {
    position += 1;
    if (IGNORED.has(char)) continue;
    const value = VALUE[char.toUpperCase()];
    if (value === undefined) {
      throw new CodeTypo(`"${char}" (character ${position}) is not a card code symbol: a code has only digits and the letters A-Z without U`);
    }
    values.push(value);
  }
  if (values.length !== SYMBOLS) {
    throw new CodeTypo(`a card code has ${SYMBOLS} symbols (not counting dashes), this one ${values.length}`);
  }
  if (syndrome(values) !== 0) {
    throw new CodeTypo("the card code has a typo: its check symbol does not match; compare it with the card");
  }
  return values.slice(0, SECRET_LEN).map((v) => ALPHABET[v]).join("");
}

/** The printed form: the symbols and the check, in groups of four. */
export function formatCode(short) {
  const check = syndrome([...short].map((c) => VALUE[c]).concat([0]));
  const symbols = short + ALPHABET[check];
  return symbols.match(/.{1,4}/g).join("-");
}

/** The issuer's short secret of a card: the top 115 bits of an HMAC under its master key
 * (the card holder reads it from the card; this is here for the vectors). */
export async function shortSecret(masterKey, cardId) {
  const mac = await hmacSha256(masterKey, new Writer("farthing/szm/short-secret").bytes(cardId).finish());
  let number = 0n;
  for (const byte of mac) number = (number << 8n) | BigInt(byte);
  number >>= BigInt(256 - 5 * SECRET_LEN);
  let symbols = "";
  for (let i = SECRET_LEN - 1; i >= 0; i -= 1) symbols += ALPHABET[Number((number >> BigInt(5 * i)) & 31n)];
  return symbols;
}

/** What the wallet sends to find its card: a one-way function of the code. */
export async function lookupId(short) {
  return hkdfSha256(encoder.encode(short), new Writer("farthing/szm/card-lookup").finish(), 16);
}

/** The protocol's 32-byte card secret S (domain: "farthing/szm-chain/card-secret", ...). */
export async function cardSecretFromShort(short, domain, cardId) {
  return hkdfSha256(encoder.encode(short), new Writer(domain).bytes(cardId).finish());
}

/** The issuer's proof that an answer (the card's canonical bytes) is about this code. */
export async function answerTag(short, cardBytes) {
  return hkdfSha256(encoder.encode(short), concat(new Writer("farthing/szm/card-answer").finish(), cardBytes), 16);
}
