// The page's wallet: a service worker on the shop's own origin. It answers the site's GET
// navigations and fetches; a 402 that its card can pay within the reader's budget is paid
// (index reserved durably first), the sealed answer opened, and the page gets the content.
// Anything it cannot or may not pay goes to the page as it came: the 402 page then asks.

import * as core from "./core.js";
import * as store from "./store.js";
import * as wire from "./wire.js";

const RESERVED = "/_farthing/";
const SEALED_TYPE = "application/vnd.farthing.sealed";

self.addEventListener("install", (event) => event.waitUntil(self.skipWaiting()));
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || event.request.method !== "GET") return;
  if (url.pathname.startsWith(RESERVED)) return;
  event.respondWith(answer(event.request, url));
});

async function answer(request, url) {
  const bought = await store.getBought(url.pathname);
  if (bought) return fromBought(bought); // bought before: opened again, nothing paid
  const first = await fetch(request);
  if (first.status !== 402) return first;
  const card = await store.getCard();
  if (!card) return first;
  const challenge = wire
    .parseChallenges(first.headers.get("www-authenticate"))
    .find((c) => wire.CARD_OF_METHOD[c.method] === card.method && c.realm === card.realm);
  const price = challenge ? wire.priceOf(challenge) : null;
  if (!price || price.currency !== card.currency) return first;
  // One payment at a time per card, across tabs: indexes then reach the vendor in order.
  return navigator.locks.request("farthing-card:" + card.card, () =>
    pay(request, url, card, challenge, price.amount, first),
  );
}

async function pay(request, url, card, challenge, amount, first) {
  const units = Math.ceil(amount / card.unitMicros);
  const reserved = await store.reserve({ cardId: card.card, path: url.pathname, units, amount });
  if (!reserved.index) return first; // the page asks, or says the card is empty
  const holder = {
    method: card.method,
    cardId: core.fromB64url(card.card),
    secret: core.fromB64url(card.secret),
    length: card.units,
  };
  const paid = await core.paymentFor(holder, reserved.index);
  const credential = wire.credential(challenge, paid.payment);
  const headers = { [credential.name]: credential.value, accept: request.headers.get("accept") || "*/*" };
  let response;
  try {
    response = await sendTwice(url, headers);
  } catch {
    await store.settle(reserved.ref, "lost");
    return Response.error();
  }
  const receipt = wire.receiptOf(response);
  if (!receipt || receipt.index !== reserved.index) {
    await store.settle(reserved.ref, receipt ? "lost" : "released");
    if (receipt || request.mode !== "navigate" || response.status < 400) return response;
    // A refused payment on a navigation: the reader gets the 402 page, which says why.
    await store.noteRefusal(url.pathname, await refusalWords(response));
    return first;
  }
  return openAnswer(response, receipt, holder, paid.key, reserved, url, amount);
}

async function refusalWords(response) {
  try {
    const problem = await response.json();
    return `${problem.title || "refused"} (${problem.detail || response.status})`;
  } catch {
    return `the shop answered ${response.status}`;
  }
}

/** The same request again after a network failure: the vendor serves a retry for the
 * same Authorization at no new charge (docs/http.md, "Retrying a paid request"). */
async function sendTwice(url, headers) {
  try {
    return await fetch(url, { headers, cache: "no-store", redirect: "manual" });
  } catch {
    return fetch(url, { headers, cache: "no-store", redirect: "manual" });
  }
}

async function openAnswer(response, receipt, holder, key, reserved, url, amount) {
  const sealed = receipt.sealed;
  if (response.headers.get("content-type") !== SEALED_TYPE || !sealed) {
    await store.settle(reserved.ref, "seal-broken");
    return new Response("The shop's answer was not sealed to your card.", { status: 502 });
  }
  let body;
  try {
    body = await core.openSealed(key, new Uint8Array(await response.arrayBuffer()), {
      method: holder.method,
      cardId: holder.cardId,
      index: reserved.index,
      resource: url.pathname,
      status: response.status,
      contentType: sealed.contentType,
    });
  } catch {
    await store.settle(reserved.ref, "seal-broken");
    return new Response("The shop's answer did not open with your card's key.", { status: 502 });
  }
  await store.settle(reserved.ref, "paid");
  if (response.ok) {
    await store.recordBought({
      path: url.pathname,
      status: response.status,
      contentType: sealed.contentType,
      body,
      amount,
      units: receipt.units,
      ref: reserved.ref,
      at: Date.now(),
    });
  }
  return new Response(body, { status: response.status, headers: plainHeaders(sealed.contentType) });
}

function fromBought(bought) {
  return new Response(bought.body, { status: bought.status, headers: plainHeaders(bought.contentType) });
}

function plainHeaders(contentType) {
  const headers = { "cache-control": "no-store", "x-farthing-paid": "1" };
  if (contentType) headers["content-type"] = contentType;
  return headers;
}
