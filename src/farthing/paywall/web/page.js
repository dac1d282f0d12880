// The reader's side of the page's wallet: the 402 page (enter a card, set a budget, say yes
// or no above it) and the wallet page (card, balance, what was bought, copy the code out).
// The service worker (sw.js) does the paying; this script never sends a payment.

import * as core from "./core.js";
import * as shortcode from "./shortcode.js";
import * as store from "./store.js";
import * as wire from "./wire.js";

const $ = (id) => document.getElementById(id);

function say(text) {
  $("status").textContent = text;
}

/** 2000 EUR micro-units -> "0.2 cent", as the paywall's page words it. */
export function money(micros, currency) {
  if (micros >= 1_000_000) return `${(micros / 1_000_000).toFixed(2)} ${currency}`;
  const cents = Math.round(micros / 100) / 100;
  return `${cents} ${cents <= 1 ? "cent" : "cents"}`;
}

function unitsWord(units) {
  return units === 1 ? "1 unit" : `${units} units`;
}

function balanceText(card) {
  const left = card.units - card.spent;
  return `${unitsWord(left)} left on your card (${money(left * card.unitMicros, card.currency)})`;
}

async function ensureWorker() {
  if (!("serviceWorker" in navigator)) throw new Error("this browser has no service workers");
  await navigator.serviceWorker.register("/_farthing/sw.js", { scope: "/", type: "module" });
  await navigator.serviceWorker.ready;
  if (navigator.serviceWorker.controller) return;
  await new Promise((resolve) => navigator.serviceWorker.addEventListener("controllerchange", resolve, { once: true }));
}

/** The card a typed short code names: checked here first (a typo never leaves the page),
 * then found at the shop by its lookup id, its answer checked against the code's tag, its
 * secret derived here. Throws an Error whose message is for the reader. */
async function checkCard(text) {
  const short = shortcode.parseCode(text);
  const lookup = core.b64url(await shortcode.lookupId(short));
  const response = await fetch("/_farthing/card", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ lookup }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.detail || "the shop did not answer");
  const cardId = core.fromB64url(answer.card_id);
  const domain = core.SECRET_DOMAINS[answer.protocol];
  if (!domain) throw new Error("this is not a card this wallet can pay with");
  const secret = await shortcode.cardSecretFromShort(short, domain, cardId);
  const terms = {
    protocol: answer.protocol, cardId, secret, units: answer.units, currency: answer.currency,
    unitMicros: answer.unit_micros, expiresAt: answer.expires_at, generator: answer.generator,
    realm: answer.realm, modulus: core.fromB64url(answer.modulus),
  };
  const tag = await shortcode.answerTag(short, core.encodeCard(terms));
  if (!core.equalBytes(tag, core.fromB64url(answer.tag))) {
    throw new Error("the shop's answer does not match this card code");
  }
  if (answer.status !== "active") throw new Error(`this card is ${answer.status} at the shop`);
  if (answer.generator === "bbs") {
    throw new Error("this browser wallet cannot pay with a BBS card; use the farthing CLI");
  }
  return {
    card: answer.card_id, method: answer.protocol, secret: core.b64url(secret),
    units: answer.units, spent: answer.spent, unitMicros: answer.unit_micros,
    currency: answer.currency, expiresAt: answer.expires_at, realm: answer.realm,
    code: shortcode.formatCode(short),
  };
}

function centsToMicros(text) {
  const value = Number(text);
  return Number.isFinite(value) && value >= 0 ? Math.round(value * 10_000) : null;
}

async function showBudget() {
  const budget = await store.getBudget();
  $("per-article").value = budget.perArticle / 10_000;
  $("per-day").value = budget.perDay / 10_000;
  $("budget").hidden = false;
}

async function saveBudget(event) {
  event.preventDefault();
  const perArticle = centsToMicros($("per-article").value);
  const perDay = centsToMicros($("per-day").value);
  if (perArticle === null || perDay === null) {
    say("Type each limit as a number of cents, for example 5.");
    return false;
  }
  await store.putBudget({ perArticle, perDay });
  return true;
}

// --- the 402 page ------------------------------------------------------------------------------

async function paywallPage(main) {
  const offer = JSON.parse(main.dataset.offer);
  // The forms' handlers first, before anything is awaited: a code typed and sent while the
  // stored card is still being read must not submit the form to the shop as a plain GET.
  $("card-form").addEventListener("submit", (event) => enterCard(event, offer));
  $("budget-form").addEventListener("submit", async (event) => {
    if (await saveBudget(event)) await readNow();
  });
  const card = await store.getCard();
  if (!card) return;
  showUnits(card, offer);
  $("card-entry").hidden = true;
  const methods = offer.methods.map((m) => wire.CARD_OF_METHOD[m]);
  if (!methods.includes(card.method) || card.currency !== offer.currency) {
    say("Your card does not pay this article here.");
    return;
  }
  const units = Math.ceil(offer.amount / card.unitMicros);
  if (card.spent + units > card.units) {
    say(`Your card has too few units left: ${balanceText(card)}.`);
    return;
  }
  const refused = await store.takeRefusal(offer.path);
  if (refused) {
    // Perhaps the card paid elsewhere since: the shop's balance moves this wallet's index on.
    const again = await checkCard(card.code).catch(() => null);
    const now = again ? await store.putCard({ ...card, spent: again.spent }) : card;
    say(
      `The shop refused the payment: ${refused}. Nothing was taken from your card; ` +
        `the shop says: ${balanceText(now)}. Reload the page to try again.`,
    );
    return;
  }
  const ask = await store.mustAsk(offer.path, offer.amount);
  if (ask) return showAsk(ask, offer);
  // A card and no reason to ask: the service worker was not in charge yet; once.
  if (!sessionStorage.getItem("farthing-reloaded:" + offer.path)) await readNow();
  else say("The wallet could not pay for this page. Open your wallet to see why.");
}

function showUnits(card, offer) {
  if (card.currency !== offer.currency) return;
  $("price-units").textContent = `, ${unitsWord(Math.ceil(offer.amount / card.unitMicros))} of your card`;
}

async function enterCard(event, offer) {
  event.preventDefault();
  say("Checking the card with the shop…");
  let card;
  try {
    card = await checkCard($("card-code").value);
  } catch (error) {
    say(`This card code was refused: ${error.message}.`);
    $("card-code").focus();
    return;
  }
  await store.putCard(card);
  showUnits(await store.getCard(), offer);
  $("card-entry").hidden = true;
  $("balance").textContent = `Card accepted: ${balanceText(await store.getCard())}.`;
  say($("balance").textContent);
  await showBudget();
  $("per-article").focus();
}

function showAsk(ask, offer) {
  const price = money(offer.amount, offer.currency);
  $("ask-why").textContent =
    ask.why === "article"
      ? `This article costs ${price}, more than your limit of ${money(ask.limit, offer.currency)} per article.`
      : `This article costs ${price}; with it you would pass your limit of ${money(ask.limit, offer.currency)} today.`;
  $("ask").hidden = false;
  $("ask-yes").addEventListener("click", async () => {
    await store.approve(offer.path, offer.amount);
    await readNow();
  });
  $("ask-no").addEventListener("click", () => {
    $("ask").hidden = true;
    say("Nothing was paid.");
  });
  $("ask-yes").focus();
}

async function readNow() {
  say("Opening the article…");
  await ensureWorker();
  sessionStorage.setItem("farthing-reloaded:" + location.pathname, "1");
  location.reload();
}

// --- the wallet page ---------------------------------------------------------------------------

async function walletPage() {
  // The budget form stays hidden until showBudget has filled it: a limit typed earlier would
  // be overwritten by the stored one, and "Budget saved." would save the old limit.
  $("budget-form").addEventListener("submit", async (event) => {
    if (await saveBudget(event)) say("Budget saved.");
  });
  await ensureWorker().catch((error) => say(`No wallet in this browser: ${error.message}.`));
  const card = await store.getCard();
  $("no-card").hidden = Boolean(card);
  $("card").hidden = !card;
  if (card) {
    $("card-kind").textContent = card.method === "szm:chain" ? "hash chain card" : "generator card";
    $("card-id").textContent = card.card;
    $("card-balance").textContent = balanceText(card);
    $("card-unit").textContent = money(card.unitMicros, card.currency);
    $("card-expires").textContent = new Date(card.expiresAt * 1000).toISOString().slice(0, 10);
    $("card-code").value = card.code || "";
    $("copy-code").addEventListener("click", async () => {
      $("card-code").select();
      try {
        await navigator.clipboard.writeText(card.code || "");
        say("Card code copied.");
      } catch {
        say("Select the code and copy it.");
      }
    });
  }
  await showBudget();
  const bought = (await store.listBought()).sort((a, b) => b.at - a.at);
  const list = $("bought");
  for (const item of bought) {
    const entry = document.createElement("li");
    const link = document.createElement("a");
    link.href = item.path;
    link.textContent = item.path;
    entry.append(link, ` (${unitsWord(item.units)}, ${new Date(item.at).toISOString().slice(0, 16).replace("T", " ")} UTC)`);
    list.append(entry);
  }
  $("nothing-bought").hidden = bought.length > 0;
}

const main = document.querySelector("main");
if (main && main.id === "paywall") paywallPage(main).catch((error) => say(`The wallet failed: ${error.message}.`));
if (main && main.id === "wallet") walletPage().catch((error) => say(`The wallet failed: ${error.message}.`));
