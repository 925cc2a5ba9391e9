"""The release protocol every DP asset follows, without Dagster: reserve → draw → store every
draw keyed by its reservation → read only stored draws.

`admit` decides from the ledger rows of a date's current reservation whether an asset may
release at all; `draw_once` returns the draw stored under (reservation_id, measurement), or
draws, stores and returns what was stored. A retry therefore never draws twice: a draw is
either stored before anything reads it, or lost with the process that made it (never read).

Drawing (not re-reading) also requires the reservation's policy hash to be the policy's now
and the mechanism to cost no more than reserved: a reservation fixes what may be spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from cohort_pipeline.privacy.accounting import Spend
from cohort_pipeline.privacy.mechanisms import Mechanism


class Refused(Exception):
    """A DP asset may not release: nothing was drawn. The message says what to do."""


class NoReservation(Refused):
    """The ledger holds no reservation of this date for this asset."""


class PolicyChanged(Refused):
    """A draw is needed but the reservation was made under another policy file."""


class CostlierThanReserved(Refused):
    """The noise would spend more than the ledger reserved for it."""


@dataclass(frozen=True)
class Admission:
    """An asset's part of a date's current reservation."""

    release_date: str
    asset: str
    reservation_id: str
    kind: str  # "release" | "redraw"
    policy_hash: str  # the policy the reservation was made under
    ledger_seq: int
    reserved: Spend


class DrawStore(Protocol):
    """Private storage of draws, keyed by (reservation_id, measurement)."""

    def load(self, measurement: str, reservation_id: str) -> pd.DataFrame | None: ...

    def save(
        self, measurement: str, reservation_id: str, release_date: str, frame: pd.DataFrame
    ) -> None: ...


def admit(rows: pd.DataFrame, asset: str, release_date: str) -> Admission:
    """`asset`'s row of the date's current reservation (`Ledger.reservation(release_date)`);
    NoReservation when there is none."""
    mine = rows[rows["asset"] == asset] if len(rows) else rows
    if mine.empty:
        raise NoReservation(
            f"refusing to compute {asset} for {release_date}: the privacy ledger holds no "
            "reservation for it. Materialize privacy_budget_ledger for this date; its check "
            "budget_within_limit must pass."
        )
    row = mine.iloc[0]
    return Admission(
        release_date=release_date,
        asset=asset,
        reservation_id=str(row["reservation_id"]),
        kind=str(row["kind"]),
        policy_hash=str(row["policy_hash"]),
        ledger_seq=int(row["seq"]),
        reserved=Spend(float(row["epsilon"]), float(row["delta"]), float(row["rho"])),
    )


def may_draw(admission: Admission, policy_hash: str, mechanism: Mechanism) -> None:
    """Refuse a draw under another policy than the reservation's, or costlier than reserved."""
    a = admission
    if policy_hash != a.policy_hash:
        raise PolicyChanged(
            f"refusing to draw {a.asset} for {a.release_date}: its reservation "
            f"{a.reservation_id} was made under policy {a.policy_hash}, the policy file is now "
            f"{policy_hash}. A released date keeps its reservation; to release it again under "
            "this policy, request a redraw (run tag cohort_pipeline/redraw=<reason>), which is "
            "charged in full. Nothing was drawn."
        )
    if not mechanism.spend.within(a.reserved):
        s, r = mechanism.spend, a.reserved
        raise CostlierThanReserved(
            f"refusing to compute {a.asset} for {a.release_date}: its {mechanism.name} noise "
            f"would spend epsilon={s.epsilon:.6g}, delta={s.delta:.3g}, rho={s.rho:.6g}, more "
            f"than the ledger reserved for it (seq {a.ledger_seq}: epsilon={r.epsilon:.6g}, "
            f"delta={r.delta:.3g}, rho={r.rho:.6g}). Run the version of cohort_pipeline that "
            "made the reservation; nothing was drawn."
        )


def draw_once(
    store: DrawStore,
    admission: Admission,
    measurement: str,
    draw: Callable[[], pd.DataFrame | None],
    *,
    policy_hash: str,
    mechanism: Mechanism,
) -> tuple[pd.DataFrame | None, bool]:
    """The draw stored for (admission.reservation_id, measurement), or a fresh one drawn
    (after may_draw), stored, and read back. Returns (stored frame, whether drawn now);
    (None, False) when `draw` returns None: nothing to release, nothing stored."""
    stored = store.load(measurement, admission.reservation_id)
    if stored is not None:
        return stored, False
    may_draw(admission, policy_hash, mechanism)
    fresh = draw()
    if fresh is None:
        return None, False
    store.save(measurement, admission.reservation_id, admission.release_date, fresh)
    stored = store.load(measurement, admission.reservation_id)
    if stored is None:  # the store lost a write: never return what was not stored
        raise RuntimeError(f"draw {measurement} of {admission.reservation_id} was not stored")
    return stored, True
