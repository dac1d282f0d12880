// The HTTP "Payment" wire as the page's wallet speaks it (docs/http.md): challenges from
// WWW-Authenticate, the credential for Authorization, the Payment-Receipt. Everything about
// the wire shape is here and nowhere else in the wallet.

import { b64url, fromB64url } from "./core.js";

const decoder = new TextDecoder();
const encoder = new TextEncoder();
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/;

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
    .map((c) => ({ ...c.params, request: decodeJson(c.params.request) }));
}

/** ``Authorization: Payment <b64url JSON>`` carrying one SZM payment. */
export function credential(challenge, method, payment) {
  return "Payment " + encodeJson({ id: challenge.id, payload: { method, payment: b64url(payment) } });
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
