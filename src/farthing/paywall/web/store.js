// The page's wallet state in IndexedDB (this origin's storage): the card, its index, every
// payment and what it bought. An index is reserved in ONE readwrite transaction with strict
// durability, before the payment is even computed: tabs and the service worker share the
// database, so two of them never get the same index, and a crash after the reservation
// loses at most that payment's units (never reuses an index).

const DB_NAME = "farthing-wallet";
const DB_VERSION = 1;
export const DEFAULT_BUDGET = { perArticle: 50_000, perDay: 1_000_000 }; // micro-units

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function done(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  });
}

let opening = null;

export function openDb() {
  if (opening) return opening;
  opening = new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      db.createObjectStore("cards", { keyPath: "card" });
      db.createObjectStore("payments", { keyPath: "ref" });
      db.createObjectStore("bought", { keyPath: "path" });
      db.createObjectStore("settings", { keyPath: "name" });
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return opening;
}

/** Run ``body(stores)`` in one transaction; resolves with its result once committed. */
async function transact(names, mode, body) {
  const db = await openDb();
  const tx = db.transaction(names, mode, { durability: "strict" });
  const stores = Object.fromEntries(names.map((n) => [n, tx.objectStore(n)]));
  const finished = done(tx);
  let result;
  try {
    result = await body(stores);
  } catch (error) {
    tx.abort();
    await finished.catch(() => {});
    throw error;
  }
  await finished;
  return result;
}

export function today(now = Date.now()) {
  return new Date(now).toISOString().slice(0, 10);
}

export async function getCard() {
  return transact(["cards"], "readonly", async ({ cards }) => {
    const all = await request(cards.getAll());
    return all[0] || null;
  });
}

/** The one card of this site (a new one replaces the old; its payments stay listed). */
export async function putCard(card) {
  return transact(["cards"], "readwrite", async ({ cards }) => {
    const old = await request(cards.get(card.card));
    // The index only moves forward: a card entered again keeps the higher of the two.
    if (old) card.spent = Math.max(old.spent, card.spent);
    await request(cards.clear());
    await request(cards.put(card));
    return card;
  });
}

export async function getBudget() {
  return transact(["settings"], "readonly", async ({ settings }) => {
    const row = await request(settings.get("budget"));
    return row ? { perArticle: row.perArticle, perDay: row.perDay } : { ...DEFAULT_BUDGET };
  });
}

export async function putBudget(budget) {
  return transact(["settings"], "readwrite", async ({ settings }) => {
    await request(settings.put({ name: "budget", ...budget }));
  });
}

/** The reader said yes to paying ``amount`` for ``path`` once, above the budget. */
export async function approve(path, amount) {
  return transact(["settings"], "readwrite", async ({ settings }) => {
    await request(settings.put({ name: "approval:" + path, amount, at: Date.now() }));
  });
}

async function spentToday(settings, day) {
  const row = await request(settings.get("day"));
  return row && row.day === day ? row.micros : 0;
}

/** Why paying ``amount`` for ``path`` needs the reader's yes first, or null. Read-only. */
export async function mustAsk(path, amount) {
  return transact(["settings"], "readonly", async ({ settings }) => askReason(settings, path, amount));
}

async function askReason(settings, path, amount) {
  const approval = await request(settings.get("approval:" + path));
  if (approval && approval.amount >= amount) return null;
  const budgetRow = await request(settings.get("budget"));
  const budget = budgetRow || DEFAULT_BUDGET;
  if (amount > budget.perArticle) return { why: "article", amount, limit: budget.perArticle };
  const day = await spentToday(settings, today());
  if (day + amount > budget.perDay) return { why: "day", amount, limit: budget.perDay, day };
  return null;
}

/**
 * Reserve the next index of ``cardId`` for ``units`` units (``amount`` micro-units of
 * budget), durably, before anything is sent. One transaction: the reason to ask, the card's
 * index, the payment row and the day's total all move together or not at all.
 * Returns {index, ref} or {ask} or {empty}.
 */
export async function reserve({ cardId, path, units, amount }) {
  const names = ["cards", "payments", "settings"];
  return transact(names, "readwrite", async ({ cards, payments, settings }) => {
    const ask = await askReason(settings, path, amount);
    if (ask) return { ask };
    const card = await request(cards.get(cardId));
    if (!card) return { empty: true };
    const index = card.spent + units;
    if (index > card.units) return { empty: true };
    card.spent = index;
    await request(cards.put(card));
    const ref = `${card.card}:${index}`;
    const day = today();
    await request(
      payments.put({ ref, card: card.card, index, units, path, amount, state: "reserved", at: Date.now(), day }),
    );
    const total = await spentToday(settings, day);
    await request(settings.put({ name: "day", day, micros: total + amount }));
    await request(settings.delete("approval:" + path));
    return { index, ref };
  });
}

/**
 * Settle a reserved payment: "paid", "lost" (it may have been taken: its index is never
 * reused), or "released" (the vendor answered without a receipt, so it took nothing: the
 * index goes back if it is still the card's last, as the Python wallet does).
 */
export async function settle(ref, state) {
  const names = ["cards", "payments", "settings"];
  return transact(names, "readwrite", async ({ cards, payments, settings }) => {
    const payment = await request(payments.get(ref));
    if (!payment) return;
    payment.state = state;
    await request(payments.put(payment));
    if (state !== "released") return;
    const card = await request(cards.get(payment.card));
    if (card && card.spent === payment.index) {
      card.spent = payment.index - payment.units;
      await request(cards.put(card));
    }
    const row = await request(settings.get("day"));
    if (row && row.day === payment.day) {
      await request(settings.put({ ...row, micros: Math.max(0, row.micros - payment.amount) }));
    }
  });
}

/** Why the shop refused the last payment for ``path`` (shown once by the 402 page). */
export async function noteRefusal(path, words) {
  return transact(["settings"], "readwrite", async ({ settings }) => {
    await request(settings.put({ name: "refusal:" + path, words, at: Date.now() }));
  });
}

export async function takeRefusal(path) {
  return transact(["settings"], "readwrite", async ({ settings }) => {
    const row = await request(settings.get("refusal:" + path));
    if (row) await request(settings.delete("refusal:" + path));
    return row ? row.words : null;
  });
}

export async function recordBought(entry) {
  return transact(["bought"], "readwrite", async ({ bought }) => {
    await request(bought.put(entry));
  });
}

export async function getBought(path) {
  return transact(["bought"], "readonly", async ({ bought }) => (await request(bought.get(path))) || null);
}

export async function listBought() {
  return transact(["bought"], "readonly", async ({ bought }) => request(bought.getAll()));
}

export async function listPayments() {
  return transact(["payments"], "readonly", async ({ payments }) => request(payments.getAll()));
}
