"""Issuer-side PayWord (the broker): users, certificates, redemptions.

A redemption is credited once: ``payword_redemptions.redeemed_index`` only moves up, by a
compare-and-set UPDATE, and :meth:`PaywordArea.redeem` returns the units newly credited (the caller
posts that many units from the user's account to the vendor's in the same transaction).
Redeeming the same or a lower index again credits 0.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final, final

from sqlalchemy import Select, func, insert, select, update
from sqlalchemy.engine import RowMapping

from farthing.core.errors import Conflict, ErrorCode
from farthing.core.schemes.payword import OpenCommitment
from farthing.store._errors import unique_violation_as
from farthing.store._rows import PaywordCertificateRow, PaywordRedemptionRow, PaywordUserRow
from farthing.store._schema import (
    payword_admitted,
    payword_certificates,
    payword_redemptions,
    payword_users,
)
from farthing.store._sql import Area, build, insert_if_absent, require_positive, total

__all__ = [
    "PaywordArea",
]

# A compare-and-set only loses to a concurrent commit on PostgreSQL; re-reading then wins.
_CAS_ATTEMPTS: Final = 5


# --- admitted commitments (the broker's bound on each user's open commitments) -------------


def _admitted_query() -> Select[tuple[object, ...]]:
    a, r = payword_admitted.c, payword_redemptions.c
    redeemed = func.coalesce(r.redeemed_index, 0).label("redeemed")
    return select(
        a.commitment_id, a.user_id, a.vendor_id, a.length, a.unit_micros, a.expires_at, redeemed
    ).select_from(
        payword_admitted.outerjoin(
            payword_redemptions, payword_redemptions.c.commitment_id == a.commitment_id
        )
    )


def _open(row: RowMapping) -> OpenCommitment:
    return OpenCommitment(
        commitment_id=row["commitment_id"],
        user_id=row["user_id"],
        vendor_id=row["vendor_id"],
        length=row["length"],
        unit_micros=row["unit_micros"],
        expires_at=row["expires_at"],
        redeemed=row["redeemed"],
    )


@final
class PaywordArea(Area):
    """The broker's PayWord users, certificates, admissions and redemptions, in one transaction."""

    __slots__ = ()

    def add_user(
        self,
        *,
        user_id: str,
        account_id: int,
        public_key: bytes,
        credit_limit_units: int,
        currency: str,
        unit_micros: int,
    ) -> None:
        values = {
            "user_id": user_id,
            "account_id": account_id,
            "public_key": public_key,
            "credit_limit_units": credit_limit_units,
            "currency": currency,
            "unit_micros": unit_micros,
            "created_at": self._ctx.clock.now(),
        }
        with unique_violation_as(ErrorCode.CONFLICT, "this user exists"):
            self._ctx.conn.execute(insert(payword_users).values(values))

    def user(self, user_id: str) -> PaywordUserRow | None:
        stmt = select(payword_users).where(payword_users.c.user_id == user_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(PaywordUserRow, row)

    def add_certificate(
        self, *, cert_id: bytes, user_id: str, cert: bytes, expires_at: int
    ) -> None:
        values = {"cert_id": cert_id, "user_id": user_id, "cert": cert, "expires_at": expires_at}
        with unique_violation_as(ErrorCode.CONFLICT, "this certificate exists"):
            self._ctx.conn.execute(insert(payword_certificates).values(values))

    def users_of(self, user_ids: Collection[str]) -> dict[str, PaywordUserRow]:
        """:meth:`user` for several users in one query (those that exist)."""
        if not user_ids:
            return {}
        stmt = select(payword_users).where(payword_users.c.user_id.in_(sorted(user_ids)))
        rows = self._ctx.conn.execute(stmt).mappings()
        return {row["user_id"]: build(PaywordUserRow, row) for row in rows}

    def certificates_of(self, cert_ids: Collection[bytes]) -> dict[bytes, PaywordCertificateRow]:
        """:meth:`certificate` for several ids in one query (those that exist)."""
        if not cert_ids:
            return {}
        c = payword_certificates.c
        stmt = select(payword_certificates).where(c.cert_id.in_(sorted(cert_ids)))
        rows = self._ctx.conn.execute(stmt).mappings()
        return {row["cert_id"]: build(PaywordCertificateRow, row) for row in rows}

    def certificate(self, cert_id: bytes) -> PaywordCertificateRow | None:
        stmt = select(payword_certificates).where(payword_certificates.c.cert_id == cert_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(PaywordCertificateRow, row)

    def redemption(self, commitment_id: bytes) -> PaywordRedemptionRow | None:
        stmt = select(payword_redemptions).where(
            payword_redemptions.c.commitment_id == commitment_id
        )
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else build(PaywordRedemptionRow, row)

    def redeemed_units(self, user_id: str) -> int:
        """Units credited to vendors from this user's commitments so far."""
        stmt = select(total(payword_redemptions.c.credited_units)).where(
            payword_redemptions.c.user_id == user_id
        )
        return int(self._ctx.conn.execute(stmt).scalar_one())

    def redeem(
        self, commitment_id: bytes, vendor_id: str, user_id: str, new_index: int, at: int
    ) -> int:
        """Raise the commitment's redeemed index to ``new_index``; return the units newly credited.

        Conflict if the commitment was redeemed before by another vendor or for another user.
        """
        require_positive(new_index, "new_index")
        for _ in range(_CAS_ATTEMPTS):
            current = self.redemption(commitment_id)
            if current is None:
                if self._insert_first(commitment_id, vendor_id, user_id, new_index, at):
                    return new_index
                continue
            if (current.vendor_id, current.user_id) != (vendor_id, user_id):
                raise Conflict("this commitment belongs to another party")
            if new_index <= current.redeemed_index:
                return 0
            if self._raise_index(commitment_id, current.redeemed_index, new_index, at):
                return new_index - current.redeemed_index
        raise Conflict("the redemption kept losing races; try again")

    def _insert_first(
        self, commitment_id: bytes, vendor_id: str, user_id: str, index: int, at: int
    ) -> bool:
        values = {
            "commitment_id": commitment_id,
            "vendor_id": vendor_id,
            "user_id": user_id,
            "redeemed_index": index,
            "credited_units": index,
            "at": at,
        }
        return insert_if_absent(self._ctx, payword_redemptions, values)

    def _raise_index(self, commitment_id: bytes, old: int, new: int, at: int) -> bool:
        c = payword_redemptions.c
        stmt = (
            update(payword_redemptions)
            .where(c.commitment_id == commitment_id, c.redeemed_index == old)
            .values(redeemed_index=new, credited_units=c.credited_units + (new - old), at=at)
        )
        return self._ctx.conn.execute(stmt).rowcount == 1

    def admit(self, commitment: OpenCommitment) -> bool:
        """Record an admitted commitment; False if its id was recorded already (by a
        concurrent admission of the same commitment: admitting is idempotent)."""
        values = {
            "commitment_id": commitment.commitment_id,
            "user_id": commitment.user_id,
            "vendor_id": commitment.vendor_id,
            "length": commitment.length,
            "unit_micros": commitment.unit_micros,
            "expires_at": commitment.expires_at,
            "admitted_at": self._ctx.clock.now(),
        }
        return insert_if_absent(self._ctx, payword_admitted, values)

    def admit_many(self, commitments: Sequence[OpenCommitment]) -> None:
        """Record several admitted commitments in one statement. For a caller that holds
        each one's user lock and has read that the ids are new (the broker's batches): an
        id recorded already is a Conflict, and the transaction ends with it."""
        if not commitments:
            return
        at = self._ctx.clock.now()
        rows = [
            {
                "commitment_id": c.commitment_id,
                "user_id": c.user_id,
                "vendor_id": c.vendor_id,
                "length": c.length,
                "unit_micros": c.unit_micros,
                "expires_at": c.expires_at,
                "admitted_at": at,
            }
            for c in commitments
        ]
        with unique_violation_as(ErrorCode.CONFLICT, "a commitment was admitted twice"):
            self._ctx.conn.execute(insert(payword_admitted), rows)

    def admitted(self, commitment_id: bytes) -> OpenCommitment | None:
        stmt = _admitted_query().where(payword_admitted.c.commitment_id == commitment_id)
        row = self._ctx.conn.execute(stmt).mappings().one_or_none()
        return None if row is None else _open(row)

    def open_commitments(self, user_id: str, *, expired_before: int) -> list[OpenCommitment]:
        """The user's admitted commitments that expire at or after ``expired_before`` (older
        ones can no longer be redeemed, so they bind nothing)."""
        return self.open_commitments_of([user_id], expired_before=expired_before)[user_id]

    def open_commitments_of(
        self, user_ids: Collection[str], *, expired_before: int
    ) -> dict[str, list[OpenCommitment]]:
        """:meth:`open_commitments` of several users in one query, by user (every user
        asked for is a key, with an empty list if it has none)."""
        a = payword_admitted.c
        found: dict[str, list[OpenCommitment]] = {user_id: [] for user_id in user_ids}
        if not found:
            return found
        stmt = _admitted_query().where(a.user_id.in_(sorted(found)), a.expires_at >= expired_before)
        for row in self._ctx.conn.execute(stmt).mappings():
            found[row["user_id"]].append(_open(row))
        return found

    # --- the operator's views (dashboard) ------------------------------------------------

    def users_list(self, *, limit: int = 100) -> list[PaywordUserRow]:
        stmt = select(payword_users).order_by(payword_users.c.created_at.desc()).limit(limit)
        return [build(PaywordUserRow, row) for row in self._ctx.conn.execute(stmt).mappings()]

    def redemptions_list(self, *, limit: int = 100) -> list[PaywordRedemptionRow]:
        stmt = select(payword_redemptions).order_by(payword_redemptions.c.at.desc()).limit(limit)
        return [build(PaywordRedemptionRow, row) for row in self._ctx.conn.execute(stmt).mappings()]
