// farthing's SZM card holder in the browser: the canonical encoding, the hash chain
// (szm:chain), the HMAC counter generator (szm:prbg, hmac-ctr), per-payment keys and the
// seal, on WebCrypto alone. A port of src/farthing/core/{encoding,hashchain,prbg,sealing}.py
// and the card-holder halves of core/schemes/szm_*.py; vectors/ is the single source of
// truth for both (tests/browser/test_core_js.py runs every vector here in Chromium).

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();

export const SEAL_ALG = "aes-256-gcm";
export const SEAL_VERSION = 3;
export const CHAIN_METHOD = "szm:chain";
export const PRBG_METHOD = "szm:prbg";
const CHAIN_TAG = encoder.encode("farthing/szm-chain\u0000");
export const SECRET_DOMAINS = {
  "szm:chain": "farthing/szm-chain/card-secret",
  "szm:prbg": "farthing/szm-prbg/card-secret",
};
const CHAIN_DOMAINS = {
  payment: "farthing/szm-chain/payment",
  seed: "farthing/szm-chain/chain-seed",
  key: "farthing/szm-chain/key",
};
const PRBG_DOMAINS = {
  payment: "farthing/szm-prbg/payment",
  stream: "farthing/szm-prbg/stream",
};
const HMAC_COUNTER_DOMAIN = "farthing/prbg/hmac-counter";
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

// --- bytes -------------------------------------------------------------------------------

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(text) {
  if (!/^([0-9a-f]{2})*$/.test(text)) throw new Error("not lowercase hex");
  return Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
}

export function b64url(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function fromB64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new Error("not base64url");
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

export function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function u16(value) {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) throw new Error("u16 out of range");
  return Uint8Array.of(value >> 8, value & 0xff);
}

function u64(value) {
  const big = BigInt(value);
  if (big < 0n || big > 0xffffffffffffffffn) throw new Error("u64 out of range");
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, big);
  return out;
}

// --- the canonical encoding (core/encoding.py) ---------------------------------------------

export function header(domain, version = 1) {
  const raw = encoder.encode(domain);
  if (!(raw.length > 0 && raw.length < 256 && version > 0 && version < 256)) {
    throw new Error("domain must be 1..255 bytes and version 1..255");
  }
  return concat(Uint8Array.of(version, raw.length), raw);
}

export class Writer {
  constructor(domain, version = 1) {
    this.parts = [header(domain, version)];
  }
  u64(value) {
    this.parts.push(u64(value));
    return this;
  }
  bytes(value) {
    this.parts.push(u16(value.length), value);
    return this;
  }
  text(value) {
    if (value !== value.normalize("NFC") || CONTROL.test(value)) {
      throw new Error("text must be NFC without control characters");
    }
    return this.bytes(encoder.encode(value));
  }
  finish() {
    return concat(...this.parts);
  }
}

// --- primitives: WebCrypto only ---------------------------------------------------------------

export async function sha256(data) {
  return new Uint8Array(await subtle.digest("SHA-256", data));
}

export async function hmacSha256(key, message) {
  const handle = await subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  return new Uint8Array(await subtle.sign("HMAC", handle, message));
}

export async function hkdfSha256(ikm, info, length = 32) {
  const handle = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  // No salt, as core/primitives.hkdf_sha256 (RFC 5869: an empty salt is HashLen zeros).
  const params = { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info };
  return new Uint8Array(await subtle.deriveBits(params, handle, length * 8));
}

// --- the hash chain (core/hashchain.py) -------------------------------------------------------

export async function chainWalk(tag, value, steps) {
  if (tag.length > 23) throw new Error("chain tag too long for one compression per step");
  for (let i = 0; i < steps; i += 1) value = await sha256(concat(tag, value));
  return value;
}

// --- the HMAC counter generator (core/prbg.py HmacCounterPrbg) --------------------------------

export async function prbgBlock(seed, index, domain = HMAC_COUNTER_DOMAIN) {
  if (seed.length !== 32) throw new Error("PRBG seed must be 32 bytes");
  return hmacSha256(seed, concat(header(domain), u64(index)));
}

// --- cards ------------------------------------------------------------------------------------

export async function chainSeed(secret, cardId) {
  return hmacSha256(secret, concat(header(CHAIN_DOMAINS.seed), u16(cardId.length), cardId));
}

/** w_index of a chain card: length - index hashes down from the seed w_N. */
export async function chainValue(card, index) {
  const seed = await chainSeed(card.secret, card.cardId);
  return chainWalk(CHAIN_TAG, seed, card.length - index);
}

export async function chainKey(card, index) {
  const info = new Writer(CHAIN_DOMAINS.key).bytes(card.cardId).u64(index).finish();
  return hkdfSha256(card.secret, info);
}

export async function prbgStreamBlock(secret, block) {
  return prbgBlock(secret, block, PRBG_DOMAINS.stream);
}

/** The payment of a card that moves its index to ``index``: {method, payment bytes, key}.
 * ``card``: {method, cardId, secret, length}; szm:prbg cards use hmac-ctr only. */
export async function paymentFor(card, index) {
  if (!(index >= 1 && index <= card.length)) throw new Error("no payment with this index");
  if (card.method === CHAIN_METHOD) {
    const value = await chainValue(card, index);
    const payment = new Writer(CHAIN_DOMAINS.payment).bytes(card.cardId).u64(index).bytes(value);
    return { method: card.method, value, payment: payment.finish(), key: await chainKey(card, index) };
  }
  if (card.method === PRBG_METHOD) {
    const value = await prbgStreamBlock(card.secret, 2 * (index - 1));
    const key = await prbgStreamBlock(card.secret, 2 * index - 1);
    const payment = new Writer(PRBG_DOMAINS.payment).bytes(card.cardId).u64(index).bytes(value);
    return { method: card.method, value, payment: payment.finish(), key };
  }
  throw new Error("not an SZM card this wallet can pay with");
}

/** The canonical bytes of a card (core/cardcode.py encode_card): what the issuer's answer
 * tag binds. ``card``: {protocol, cardId, secret, units, currency, unitMicros, expiresAt,
 * generator, realm, modulus}. */
export function encodeCard(card) {
  return new Writer("farthing/szm/card")
    .text(card.protocol)
    .bytes(card.cardId)
    .bytes(card.secret)
    .u64(card.units)
    .text(card.currency)
    .u64(card.unitMicros)
    .u64(card.expiresAt)
    .text(card.generator)
    .text(card.realm)
    .bytes(card.modulus)
    .finish();
}

// --- the seal (core/sealing.py) ---------------------------------------------------------------

export function sealBinding({ method, cardId, index, resource, status, contentType }) {
  if (!(status >= 100 && status <= 999)) throw new Error("an HTTP status is three digits");
  return new Writer("farthing/seal", SEAL_VERSION)
    .text(method)
    .bytes(cardId)
    .u64(index)
    .text(resource)
    .u64(status)
    .text(contentType)
    .finish();
}

export class SealBroken extends Error {}

/** The plaintext of nonce[12] || AES-256-GCM(key, body, binding), or SealBroken. */
export async function openSealed(key, sealed, binding) {
  if (sealed.length < 28 || key.length !== 32) throw new SealBroken("sealed content did not open");
  let aad;
  try {
    aad = sealBinding(binding);
  } catch {
    throw new SealBroken("sealed content did not open");
  }
  const handle = await subtle.importKey("raw", key, "AES-GCM", false, ["decrypt"]);
  const params = { name: "AES-GCM", iv: sealed.subarray(0, 12), additionalData: aad, tagLength: 128 };
  try {
    return new Uint8Array(await subtle.decrypt(params, handle, sealed.subarray(12)));
  } catch {
    throw new SealBroken("sealed content did not open");
  }
}
