// The HTTP "Payment" wire as the page's wallet speaks it (docs/http.md, the Payment draft
// -02): challenges from WWW-Authenticate, the credential that echoes its challenge, the
// Payment-Receipt. Everything about the wire shape is here and nowhere else in the wallet.

import { b64url, fromB64url } from "./core.js";

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/;
// The wire's method id -> the card protocol that pays it (and that the seal binds).
export const CARD_OF_METHOD = { szmchain: "szm:chain", szmprbg: "szm:prbg" };
const ECHOED = ["id", "realm", "method", "intent", "request", "expires", "digest", "opaque", "header", "description"];
const CURRENCY = /^micro-([a-z]{3})$/;

function decodeJson(text) {
  return JSON.parse(decoder.decode(fromB64url(text)));
}

function encodeJson(value) {
  return b64url(encoder.encode(JSON.stringify(value)));
}

/** RFC 9110 challenge list (several headers arrive joined by ", "): the Payment ones. */
export function parseChallenges(header) {
  const out = [];
  let rest = header || "";
  let current = null;
  while (rest.length) {
    rest = rest.replace(/^[\s,]+/, "");
    const token = rest.match(TOKEN);
    if (!token) break;
    const after = rest.slice(token[0].length);
    const param = after.match(/^\s*=\s*("((?:[^"\\]|\\.)*)"|[!#$%&'*+.^_`|~0-9A-Za-z-]+)/);
    if (param && current) {
      current.params[token[0].toLowerCase()] =
        param[2] !== undefined ? param[2].replace(/\\(.)/g, "$1") : param[1];
      rest = after.slice(param[0].length);
    } else {
      current = { scheme: token[0].toLowerCase(), params: {} };
      out.push(current);
      rest = after;
    }
  }
  return out
    .filter((c) => c.scheme === "payment" && c.params.id && c.params.method && c.params.request)
    .map((c) => ({ params: c.params, method: c.params.method, realm: c.params.realm, request: decodeJson(c.params.request) }));
}

/** A challenge's price: {amount micro-units, currency "EUR"} (the wire says "micro-eur"),
 * or null for a request this wallet cannot read. */
export function priceOf(challenge) {
  const match = CURRENCY.exec(challenge.request.currency || "");
  const amount = Number(challenge.request.amount);
  if (!match || !Number.isSafeInteger(amount) || amount <= 0) return null;
  return { amount, currency: match[1].toUpperCase() };
}

/** {header name, value} of the credential carrying one SZM payment: the challenge echoed as
 * it came (its parameters' text), the payment in ``payload``. */
export function credential(challenge, payment) {
  const echo = {};
  for (const name of ECHOED) if (challenge.params[name] !== undefined) echo[name] = challenge.params[name];
  const value = "Payment " + encodeJson({ challenge: echo, payload: { payment: b64url(payment) } });
  return { name: challenge.params.header || "authorization", value };
}

/** The receipt's JSON, or null when there is none or it does not parse. */
export function receiptOf(response) {
  const header = response.headers.get("payment-receipt");
  if (!header) return null;
  try {
    return decodeJson(header.trim());
  } catch {
    return null;
  }
}
