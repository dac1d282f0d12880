"""Deposits: the vendor's claims on the bank (HLL batches) and broker (PayWord redemptions).

Two steps, each its own transaction, so nothing is lost if the vendor stops in between:

1. :meth:`Depositor.stage` moves delivered-but-unclaimed payments into a durable outbox: a
   batch of pending deferred HLL purchases (tagged with the merchant key), and one
   redemption per PayWord commitment whose spent count passed what was redeemed.
2. :meth:`Depositor.flush` sends each due outbox item. The bank and broker are idempotent
   (an HLL batch by its id, a redemption by its commitment and index), so an item is simply
   sent again until an answer is recorded. Any answer that does not prove the claim was
   refused before anything was credited (no answer, a timeout, a 5xx, a 409, a 429) schedules
   a retry with exponential backoff, forever: giving up on a batch the bank may have
   credited would leave its purchases "batched", counting against their cards' risk limit.
   Only a refusal the bank makes before writing anything (a bad tag, a malformed claim)
   marks the item failed, for an operator.
3. :meth:`Depositor.reconcile` asks the bank what it did with each failed HLL batch (by
   batch id); a batch the bank settled after all (its answer was lost, or an older bank
   answered a concurrent copy with 409) is closed with the bank's stored report.

The same code runs from the background task of a serving vendor and from
``farthing vendor deposit``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import Final, Protocol

import anyio.to_thread

from farthing.core.clock import Clock, RandomSource
from farthing.core.encoding import Writer, b64url_encode
from farthing.core.errors import (
    AccessDenied,
    Conflict,
    ErrorCode,
    FarthingError,
    InsufficientFunds,
    InvalidPayment,
    LocalProtocolError,
    MalformedMessage,
    PaymentExpired,
    UnsupportedMethod,
)
from farthing.core.primitives import sha256
from farthing.core.schemes import hll, payword
from farthing.store import OutboxKind, OutboxRow, OutboxState, Store

__all__ = ["DepositTarget", "Depositor", "FlushReport"]

log = logging.getLogger("farthing.paywall.deposits")

_TAG_LEN: Final = 32
_BACKOFF_BASE: Final = 5
_BACKOFF_CAP: Final = 3600
_STAGE_TRIES: Final = 5
# Refusals the issuer makes before it writes anything: the claim was not credited, and
# sending it again would be refused again. Anything else (Conflict, NotFound, RateLimited,
# no answer) leaves open whether it was credited, so the claim is sent again.
_FINAL_REFUSALS: Final = (
    AccessDenied,
    InsufficientFunds,
    InvalidPayment,
    MalformedMessage,
    PaymentExpired,
    UnsupportedMethod,
)


class DepositTarget(Protocol):
    """Where claims go (the issuer, over HTTP in production)."""

    async def deposit_hll(self, batch: hll.DepositBatch, tag: bytes) -> hll.DepositReport: ...

    async def redeem_payword(self, redemption: payword.Redemption) -> int: ...

    async def hll_deposit_report(self, batch_id: bytes) -> hll.DepositReport | None:
        """What the bank did with this merchant's batch; None if it never settled it."""
        ...


@dataclass(frozen=True, slots=True)
class FlushReport:
    sent: int = 0
    retry_later: int = 0
    failed: int = 0
    reconciled: int = 0


def backoff(attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failures: 5, 10, 20 ... 1 h."""
    return int(min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** max(0, attempts - 1)))


class Depositor:
    def __init__(
        self,
        store: Store,
        target: DepositTarget,
        *,
        clock: Clock,
        rng: RandomSource,
        merchant_id: str | None = None,
        merchant_key: bytes | None = None,
        batch_size: int = 500,
    ) -> None:
        self._store = store
        self._target = target
        self._clock = clock
        self._rng = rng
        self._merchant = (merchant_id, merchant_key) if merchant_id and merchant_key else None
        self._batch_size = batch_size

    # -- staging ----------------------------------------------------------------------------

    def stage(self) -> int:
        """Move unclaimed payments into the outbox; returns how many items were added."""
        added = 0
        if self._merchant is not None:
            merchant_id, merchant_key = self._merchant
            while (staged := self._stage_hll_batch(merchant_id, merchant_key)) is not None:
                added += 1
                if not staged:
                    break
        added += self._stage_redemptions()
        return added

    def _stage_hll_batch(self, merchant_id: str, merchant_key: bytes) -> bool | None:
        """Stage one batch; None if nothing was pending, else whether more may be."""
        batch_id = self._rng(16)
        with self._store.transaction() as tx:
            rows = tx.vendor.hll_take_pending_for_batch(batch_id, self._batch_size)
            if not rows:
                return None
            items = tuple(
                hll.DepositItem(
                    offer=hll.decode_offer(row.offer), purchase=hll.decode_payment(row.purchase)
                )
                for row in rows
            )
            batch = hll.DepositBatch(batch_id=batch_id, merchant_id=merchant_id, items=items)
            payload = hll.encode_batch(batch) + hll.batch_tag(merchant_key, batch)
            tx.vendor.outbox_add(batch_id, OutboxKind.HLL, payload, self._clock.now())
        return len(rows) == self._batch_size

    def _stage_redemptions(self) -> int:
        """Stage a claim per commitment spent past its redemption. Another stager (a second
        worker's task, the CLI) may add the same claims at the same moment; the loser's
        transaction fails on the unique item id and is run again, skipping what is there."""
        for _ in range(_STAGE_TRIES - 1):
            try:
                return self._stage_redemptions_once()
            except Conflict:
                continue
        return self._stage_redemptions_once()

    def _stage_redemptions_once(self) -> int:
        added = 0
        with self._store.transaction() as tx:
            for row in tx.vendor.payword_unredeemed(self._batch_size):
                item_id = _redemption_id(row.commitment_id, row.spent)
                if tx.vendor.outbox_item(item_id) is not None:
                    continue
                redemption = payword.Redemption(
                    commitment=payword.decode_commitment(row.commitment),
                    index=row.spent,
                    value=row.last_value,
                )
                payload = payword.encode_redemption(redemption)
                tx.vendor.outbox_add(item_id, OutboxKind.PAYWORD, payload, self._clock.now())
                added += 1
        return added

    # -- the background task ---------------------------------------------------------------

    async def run(self, interval: float) -> None:
        """Stage and send every ``interval`` seconds until cancelled (a serving vendor's task).

        Several workers may each run one: staging takes rows atomically, and the issuer is
        idempotent for a batch or redemption sent twice.
        """
        while True:
            try:
                staged = await anyio.to_thread.run_sync(self.stage)
                report = await self.flush_and_reconcile()
                if staged or report.sent or report.failed or report.reconciled:
                    log.info("deposits: %d staged, %s", staged, report)
            except FarthingError as error:
                log.warning("deposits: %s (%s); will try again", error.message, error.code.name)
            except Exception:
                log.exception("deposits: unexpected failure; will try again")
            await asyncio.sleep(interval)

    # -- sending ----------------------------------------------------------------------------

    async def flush(self, limit: int = 100) -> FlushReport:
        """Send every due outbox item once."""
        with self._store.transaction(readonly=True) as tx:
            due = tx.vendor.outbox_due(self._clock.now(), limit)
        sent = retry = failed = 0
        for item in due:
            outcome = await self._send(item)
            sent += outcome == "sent"
            retry += outcome == "retry"
            failed += outcome == "failed"
        return FlushReport(sent=sent, retry_later=retry, failed=failed)

    async def _send(self, item: OutboxRow) -> str:
        try:
            if item.kind is OutboxKind.HLL:
                report = await self._send_hll(item)
            else:
                report = await self._send_redemption(item)
        except _FINAL_REFUSALS as error:  # refused before anything was credited
            self._mark(item, OutboxState.FAILED, {"error": error.code.name}, retry=True)
            return "failed"
        except FarthingError as error:  # unreachable, busy or unsure: send it again later
            log.info("deposit %s not answered (%s); will resend", _item_name(item), error.code.name)
            self._mark(item, OutboxState.PENDING, None, retry=True)
            return "retry"
        self._mark(item, OutboxState.DONE, report)
        return "sent"

    async def _send_hll(self, item: OutboxRow) -> dict[str, object]:
        batch = hll.decode_batch(item.payload[:-_TAG_LEN])
        report = await self._target.deposit_hll(batch, item.payload[-_TAG_LEN:])
        return self._settle_hll(batch.batch_id, report)

    def _settle_hll(self, batch_id: bytes, report: hll.DepositReport) -> dict[str, object]:
        """Close a batch's purchases by the bank's report (settled, or rejected if listed)."""
        refused = hll.refused_items(report)  # they stay charged to their cards
        with self._store.transaction() as tx:
            tx.vendor.hll_settle_batch(batch_id, refused)
        return {
            "credited": report.credited,
            "accepted": len(report.accepted),
            "duplicates": len(report.duplicates),
            "invalid": len(report.invalid),
        }

    async def _send_redemption(self, item: OutboxRow) -> dict[str, object]:
        redemption = payword.decode_redemption(item.payload)
        credited = await self._target.redeem_payword(redemption)
        commitment_id = payword.commitment_id(redemption.commitment)
        with self._store.transaction() as tx:
            tx.vendor.payword_mark_redeemed(commitment_id, redemption.index)
        return {"credited": credited, "commitment": b64url_encode(commitment_id)}

    # -- reconciling -------------------------------------------------------------------------

    async def flush_and_reconcile(self) -> FlushReport:
        """:meth:`flush`, then (for an HLL merchant) :meth:`reconcile`."""
        report = await self.flush()
        if self._merchant is None:
            return report
        return replace(report, reconciled=await self.reconcile())

    async def reconcile(self, limit: int = 100) -> int:
        """Ask the bank about each failed HLL batch that is due; close those it settled.

        Returns how many were closed. A batch the bank never settled stays failed (nothing
        of it was credited) and is asked about again after a backoff.
        """
        with self._store.transaction(readonly=True) as tx:
            failed = tx.vendor.outbox_in_state(OutboxState.FAILED, self._clock.now(), limit)
        closed = 0
        for item in failed:
            if item.kind is not OutboxKind.HLL:
                continue
            try:
                report = await self._target.hll_deposit_report(item.batch_id)
            except FarthingError as error:
                log.info("reconcile %s: %s", _item_name(item), error.code.name)
                continue
            if report is None:
                self._mark(item, OutboxState.FAILED, _failed_report(item), retry=True)
                continue
            outcome = self._settle_hll(item.batch_id, report)
            self._mark(item, OutboxState.DONE, {**outcome, "reconciled": True})
            closed += 1
        return closed

    def _mark(
        self,
        item: OutboxRow,
        state: OutboxState,
        report: dict[str, object] | None,
        *,
        retry: bool = False,
    ) -> None:
        attempts = item.attempts + 1
        next_at = self._clock.now() + (backoff(attempts) if retry else 0)
        text = json.dumps(report, sort_keys=True) if report is not None else None
        with self._store.transaction() as tx:
            if not tx.vendor.outbox_mark(item.batch_id, state, attempts, next_at, text):
                raise LocalProtocolError("outbox item vanished", code=ErrorCode.CONFLICT)


def _item_name(item: OutboxRow) -> str:
    return f"{item.kind.value} {b64url_encode(item.batch_id)}"


def _failed_report(item: OutboxRow) -> dict[str, object] | None:
    """A failed item's report, kept as it was when the bank is asked again."""
    if item.report is None:
        return None
    loaded = json.loads(item.report)
    return loaded if isinstance(loaded, dict) else None


def _redemption_id(commitment_id: bytes, spent: int) -> bytes:
    """One outbox id per (commitment, index): staging twice adds nothing."""
    return sha256(Writer("farthing/vendor/redemption-id").bytes(commitment_id).u64(spent).finish())[
        :16
    ]
