"""The privacy-budget ledger: an append-only, hash-chained record of every measurement's spend.

Pure Python + DuckDB, no Dagster. The ledger lives in its own DuckDB file with two tables in
the main schema (so `ATTACH 'ledger.duckdb'` names them `ledger.privacy_spend`):

- `privacy_spend`: one row per measurement. `row_hash` is
  sha256_hex(prev_hash + canonical_json(every other column)), where canonical_json is
  `json.dumps(..., sort_keys=True, separators=(",", ":"))` with floats as Python floats,
  `release_date` as ISO date and `recorded_at` as UTC ISO with microseconds and a trailing Z.
  The first row's prev_hash is 64 zeros. An auditor can recompute the chain in a few lines.
- `ledger_head`: the last seq and its row_hash, written in the same transaction as the rows,
  because a chain alone cannot reveal a truncated tail.

Every reservation has a random `reservation_id` (nothing derived from the data is recorded) and
a `kind`: `release` (the first reservation of a date) or `redraw` (an operator's explicit
request, with its `reason`). A date that has a reservation is final: `Ledger.reserve` returns
it, spending nothing, whatever the data holds now; only a redraw appends a new one, charged in
full. The current reservation of a date is its latest (highest seq).

`Ledger.reserve` is the admission decision: in one transaction it verifies the chain, reuses the
date's reservation, or checks the caps (`BudgetCap`: every cap window and per-user horizon span
containing the date, composed by the policy's accountant, recorded per row in `accountant`) and
appends. DuckDB lets one process at a time
open the file read-write, so that transaction is atomic across processes; connections are
short-lived so other processes (sensors, the CLI, parallel steps) get their turn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

from cohort_pipeline.privacy.accounting import (
    ACCOUNTANTS,
    COMPOSITIONS,
    Charge,
    Spend,
    compose,
    worst_window_spend,
)
from cohort_pipeline.storage.locking import FileBusy, connect_with_retry

GENESIS_HASH = "0" * 64
TOLERANCE = 1e-9  # float slack when comparing a composed spend with its cap

COLUMNS = (
    "seq",
    "release_date",
    "asset",
    "mechanism",
    "epsilon",
    "delta",
    "rho",
    "sensitivity",
    "noise_scale",
    "policy_hash",
    "reservation_id",
    "kind",
    "reason",
    "run_id",
    "accountant",
    "recorded_at",
    "prev_hash",
    "row_hash",
)
_FLOATS = ("epsilon", "delta", "rho", "sensitivity", "noise_scale")
# Hashed as text: every other column but the chain's own (seq, date, time, hashes).
_STRINGS = tuple(
    c
    for c in COLUMNS
    if c not in (*_FLOATS, "seq", "release_date", "recorded_at", "prev_hash", "row_hash")
)
KINDS = ("release", "redraw")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_spend (
    seq BIGINT PRIMARY KEY,
    release_date DATE NOT NULL,
    asset VARCHAR NOT NULL,
    mechanism VARCHAR NOT NULL,
    epsilon DOUBLE NOT NULL,
    delta DOUBLE NOT NULL,
    rho DOUBLE NOT NULL,
    sensitivity DOUBLE NOT NULL,
    noise_scale DOUBLE NOT NULL,
    policy_hash VARCHAR NOT NULL,
    reservation_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    accountant VARCHAR NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    prev_hash VARCHAR NOT NULL,
    row_hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger_head (
    last_seq BIGINT NOT NULL,
    last_hash VARCHAR NOT NULL
);
"""

# recorded_at is read as epoch microseconds so hashing never depends on the session time zone.
_SELECT_FOR_HASH = (
    "SELECT seq, release_date, asset, mechanism, epsilon, delta, rho, sensitivity, noise_scale,"
    " policy_hash, reservation_id, kind, reason, run_id, accountant, epoch_us(recorded_at),"
    " prev_hash, row_hash"
    " FROM privacy_spend ORDER BY seq"
)


@dataclass(frozen=True)
class Measurement:
    """One planned measurement of a release."""

    asset: str
    mechanism: str
    spend: Spend
    sensitivity: float
    noise_scale: float

    def __post_init__(self) -> None:
        if not self.asset or not self.mechanism:
            raise ValueError("a measurement needs an asset and a mechanism")
        for name, value in (
            ("epsilon", self.spend.epsilon),
            ("delta", self.spend.delta),
            ("rho", self.spend.rho),
            ("sensitivity", self.sensitivity),
            ("noise_scale", self.noise_scale),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{self.asset}: {name} must be finite and >= 0, got {value}")

    @property
    def charge(self) -> Charge:
        return Charge.of(self.mechanism, self.spend, self.sensitivity, self.noise_scale)


@dataclass(frozen=True)
class BudgetCap:
    """The caps `reserve` enforces (policy keys `budget.*`). Composed figures are stated at
    `delta`; under basic composition deltas add up and `delta_cap` bounds their sum.

    A user active every day of `horizon_days` is in every release whose window of
    `lookback_days` overlaps them: a span of horizon_days + lookback_days - 1 release dates.
    The defaults leave the horizon and delta caps open (for tests of the window alone);
    `release.budget_cap(policy)` sets every field."""

    epsilon_cap: float
    window_days: int
    delta: float
    composition: str  # "zcdp" | "basic"
    epsilon_horizon_cap: float = math.inf
    horizon_days: int = 365
    lookback_days: int = 1
    delta_cap: float = 1.0

    def __post_init__(self) -> None:
        if self.composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {self.composition!r}")
        if not self.epsilon_cap > 0 or self.window_days < 1 or not 0 < self.delta < 1:
            raise ValueError(f"need epsilon_cap > 0, window_days >= 1, 0 < delta < 1: {self}")
        if not self.epsilon_horizon_cap > 0 or self.horizon_days < 1 or self.lookback_days < 1:
            raise ValueError(
                f"need epsilon_horizon_cap > 0, horizon_days >= 1, lookback_days >= 1: {self}"
            )
        if not self.delta <= self.delta_cap <= 1:
            raise ValueError(f"need delta <= delta_cap <= 1: {self}")

    @property
    def horizon_span(self) -> int:
        return self.horizon_days + self.lookback_days - 1

    @property
    def accountant(self) -> str:
        """Which accountant (and version) composes spends under this cap."""
        return ACCOUNTANTS[self.composition]


@dataclass(frozen=True)
class Enforced:
    """The composed figures the caps bound around one release date: the worst cap window and
    the worst horizon span containing it (the figures every report shows)."""

    epsilon: float
    delta: float
    horizon_epsilon: float
    horizon_delta: float

    @classmethod
    def around(cls, charges: list[tuple[date, Charge]], cap: BudgetCap, day: date) -> Enforced:
        window = worst_window_spend(charges, cap.window_days, cap.composition, cap.delta, day)
        horizon = worst_window_spend(charges, cap.horizon_span, cap.composition, cap.delta, day)
        return cls(*window, *horizon)

    def breaches(self, cap: BudgetCap, day: date) -> list[str]:
        """Each cap this exceeds, in words naming its policy key; [] when within every cap."""
        window = f"the worst {cap.window_days}-day window containing {day.isoformat()}"
        horizon = (
            f"the worst {cap.horizon_span}-date horizon span containing {day.isoformat()}"
            f" (a user active every day of {cap.horizon_days} days)"
        )
        checks = [
            (window, "epsilon", self.epsilon, cap.epsilon_cap, "budget.epsilon_cap"),
            (horizon, "epsilon", self.horizon_epsilon, cap.epsilon_horizon_cap,
             "budget.epsilon_horizon_cap"),
            (window, "delta", self.delta, cap.delta_cap, "budget.delta_cap"),
            (horizon, "delta", self.horizon_delta, cap.delta_cap, "budget.delta_cap"),
        ]  # fmt: skip
        return [
            f"{where} would reach {what} {value:.6g} > cap {limit:.6g} (`{key}`)"
            for where, what, value, limit, key in checks
            if value > limit * (1 + TOLERANCE) + TOLERANCE
        ]


@dataclass(frozen=True)
class Reservation:
    release_date: date
    reservation_id: str  # random (secrets.token_hex(16)): nothing derived from the data
    kind: str  # "release" | "redraw"
    rows: pd.DataFrame  # the ledger rows of this reservation, one per measurement
    reused: bool  # True: the date's reservation already existed; nothing spent now
    epsilon_spent: float  # composed spend of the worst window containing release_date, after
    epsilon_cap: float


class BudgetExceeded(Exception):
    """The release would push some window over the cap; nothing was written."""


class LedgerCorrupt(Exception):
    """Chain verification failed; the ledger refuses to spend."""


class LedgerSchemaError(Exception):
    """The ledger file was written by an incompatible version; it is refused, not migrated."""


class LedgerBusy(FileBusy):
    """Another process kept the ledger file locked for longer than the timeout."""


def _as_date(value: date | str) -> date:
    if isinstance(value, datetime):  # a datetime is a date too; refuse the ambiguity
        raise TypeError(f"release_date must be a date, got datetime {value!r}")
    if isinstance(value, str):
        return date.fromisoformat(value)
    return value


def _iso_utc(epoch_us: int) -> str:
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=epoch_us)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_hash(prev_hash: str, row: dict) -> str:
    """sha256 hex over prev_hash + the canonical serialization of the row's other columns.

    `row` holds the columns of COLUMNS except prev_hash/row_hash; recorded_at in epoch us."""
    canonical = {
        "seq": int(row["seq"]),
        "release_date": _as_date(row["release_date"]).isoformat(),
        "recorded_at": _iso_utc(int(row["recorded_at"])),
        **{k: float(row[k]) for k in _FLOATS},
        **{k: str(row[k]) for k in _STRINGS},
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest()


def _check_chain(records: list[tuple], head: list[tuple]) -> list[str]:
    """Problems found in `records` (rows of _SELECT_FOR_HASH, in seq order) and the head."""
    problems = []
    prev_hash, prev_seq = GENESIS_HASH, 0
    for rec in records:
        row = dict(zip(COLUMNS, rec, strict=True))
        seq = row["seq"]
        if seq != prev_seq + 1:
            problems.append(f"seq {seq}: expected seq {prev_seq + 1} (rows deleted or reordered)")
        if row["prev_hash"] != prev_hash:
            problems.append(
                f"seq {seq}: prev_hash does not match the row_hash of "
                f"{'the genesis' if prev_seq == 0 else f'seq {prev_seq}'} (chain broken)"
            )
        if row_hash(row["prev_hash"], row) != row["row_hash"]:
            problems.append(f"seq {seq}: row_hash does not match the row's contents (row edited)")
        prev_hash, prev_seq = row["row_hash"], seq
    if len(head) > 1:
        problems.append(f"ledger_head has {len(head)} rows, expected one")
    elif not head:
        if records:
            problems.append(f"ledger_head is missing while the ledger ends at seq {prev_seq}")
    elif head[0] != (prev_seq, prev_hash):
        problems.append(
            f"ledger_head records seq {head[0][0]} (hash {head[0][1][:12]}…) but the ledger ends"
            f" at seq {prev_seq} (hash {prev_hash[:12]}…): tail truncated or head altered"
        )
    return problems


def _charges(records: list[tuple]) -> list[tuple[date, Charge]]:
    # positions follow _SELECT_FOR_HASH: release_date, mechanism, epsilon, delta, rho,
    # sensitivity, noise_scale
    return [(r[1], Charge.of(r[3], Spend(r[4], r[5], r[6]), r[7], r[8])) for r in records]


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _path_lock(path: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, threading.Lock())


class Ledger:
    def __init__(self, path: str | os.PathLike, lock_timeout_s: float = 120.0):
        self.path = str(Path(path).resolve())
        self.lock_timeout_s = lock_timeout_s

    # -- connections -----------------------------------------------------------------------

    def _run(self, work, *, create: bool):
        """Run work(con) on a fresh read-write connection, holding this process's lock on the
        path; retry while another process holds the file, up to lock_timeout_s."""
        deadline = time.monotonic() + self.lock_timeout_s
        lock = _path_lock(self.path)
        if not lock.acquire(timeout=max(self.lock_timeout_s, 0.0)):
            raise LedgerBusy(
                f"ledger {self.path}: another thread held it for over {self.lock_timeout_s}s"
            )
        try:
            if not create and not os.path.exists(self.path):
                return work(None)
            if not os.path.exists(self.path):
                self._create()
            remaining = max(0.0, deadline - time.monotonic())
            con = connect_with_retry(self.path, remaining, "ledger", LedgerBusy)
            try:
                self._check_schema(con)  # before _SCHEMA: an old file is left as it is
                con.execute(_SCHEMA)
                return work(con)
            finally:
                con.close()
        finally:
            lock.release()

    def _create(self) -> None:
        """Create the ledger file atomically. Processes racing to create it with plain
        duckdb.connect can open each other's half-written file ("not a valid DuckDB database
        file"), so build it aside and hard-link it into place; link fails if it already exists."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{self.path}.init-{os.getpid()}-{threading.get_ident()}"
        try:
            con = duckdb.connect(tmp)
            try:
                con.execute(_SCHEMA)
            finally:
                con.close()
            with contextlib.suppress(FileExistsError):
                os.link(tmp, self.path)
        finally:
            for leftover in (tmp, f"{tmp}.wal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(leftover)

    def _check_schema(self, con) -> None:
        found = {
            row[0]
            for row in con.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'main' AND table_name = 'privacy_spend'"
            ).fetchall()
        }
        missing = [c for c in COLUMNS if c not in found]
        if found and missing:
            raise LedgerSchemaError(
                f"ledger {self.path}: table privacy_spend lacks column(s) {', '.join(missing)}"
                " (written by an older cohort_pipeline, which keyed reservations by a data"
                " version). It is not migrated: keep it as the record of past spend and point"
                " the pipeline at a new ledger file."
            )

    @staticmethod
    def _read_chain(con) -> tuple[list[tuple], list[tuple]]:
        records = con.execute(_SELECT_FOR_HASH).fetchall()
        head = con.execute("SELECT last_seq, last_hash FROM ledger_head").fetchall()
        return records, head

    @staticmethod
    def _rows_df(con, where: str = "", params: list | None = None) -> pd.DataFrame:
        sql = f"SELECT {', '.join(COLUMNS)} FROM privacy_spend {where} ORDER BY seq"
        return con.execute(sql, params or []).df()

    # -- API -------------------------------------------------------------------------------

    def reserve(
        self,
        release_date: date | str,
        measurements: list[Measurement],
        *,
        policy_hash: str,
        run_id: str,
        cap: BudgetCap,
        redraw_reason: str | None = None,
    ) -> Reservation:
        """Atomically check the cap and record the spend of one release, before any noise.

        A date that has a reservation is final: without `redraw_reason` its current (latest)
        reservation is returned and nothing is spent, whatever the policy or data hold now.
        With `redraw_reason` (an operator's explicit request) a new reservation of kind
        `redraw` is appended and charged in full; a retry of the same run reuses it. Raises
        LedgerCorrupt on a tampered ledger and BudgetExceeded when some cap window or horizon
        span containing release_date would exceed its cap (epsilon, or summed delta under
        basic composition); in both cases nothing is written."""
        release_date = _as_date(release_date)
        measurements = list(measurements)
        if not measurements:
            raise ValueError("a reservation needs at least one measurement")
        if redraw_reason is not None and not redraw_reason.strip():
            raise ValueError("a redraw needs a reason (the operator's, non-empty)")

        def decide(con) -> Reservation:
            records = self._require_verified(con)
            charges = _charges(records)
            existing = self._current(con, release_date)
            if len(existing) and (
                redraw_reason is None
                or (existing["kind"].iloc[0] == "redraw" and existing["run_id"].iloc[0] == run_id)
            ):
                epsilon = Enforced.around(charges, cap, release_date).epsilon
                return self._reservation(existing, True, epsilon, cap)

            new = [(release_date, m.charge) for m in measurements]
            after = Enforced.around(charges + new, cap, release_date)
            what = "redraw of" if redraw_reason is not None else "release"
            if breaches := after.breaches(cap, release_date):
                before = Enforced.around(charges, cap, release_date)
                requested, _ = compose([c for _, c in new], cap.composition, cap.delta)
                raise BudgetExceeded(
                    f"{what} {release_date.isoformat()} requests epsilon {requested:.6g}"
                    f" ({cap.accountant}); already spent {before.epsilon:.6g} in the worst"
                    f" {cap.window_days}-day window and {before.horizon_epsilon:.6g} in the worst"
                    f" horizon span containing it; with it {'; '.join(breaches)}."
                    " Nothing was recorded."
                )
            reservation_id = secrets.token_hex(16)
            kind, reason = ("release", "") if redraw_reason is None else ("redraw", redraw_reason)
            self._append(
                con, records, release_date, measurements, policy_hash, reservation_id, kind,
                reason, run_id, cap.accountant,
            )  # fmt: skip
            rows = self._rows_df(con, "WHERE reservation_id = ?", [reservation_id])
            return self._reservation(rows, False, after.epsilon, cap)

        def work(con) -> Reservation:
            con.execute("BEGIN TRANSACTION")
            try:
                result = decide(con)
                con.execute("COMMIT")  # durable before we return: callers draw noise next
            except BaseException:
                with contextlib.suppress(duckdb.Error):  # a failed COMMIT already rolled back
                    con.execute("ROLLBACK")
                raise
            return result

        return self._run(work, create=True)

    @staticmethod
    def _reservation(rows: pd.DataFrame, reused: bool, epsilon: float, cap: BudgetCap):
        first = rows.iloc[0]
        return Reservation(
            pd.Timestamp(first["release_date"]).date(),
            str(first["reservation_id"]),
            str(first["kind"]),
            rows,
            reused,
            epsilon,
            cap.epsilon_cap,
        )

    def _current(self, con, release_date: date) -> pd.DataFrame:
        """The rows of the date's latest reservation (empty if it has none)."""
        return self._rows_df(
            con,
            "WHERE reservation_id = (SELECT reservation_id FROM privacy_spend"
            " WHERE release_date = ? ORDER BY seq DESC LIMIT 1)",
            [release_date],
        )

    @staticmethod
    def _append(
        con,
        records,
        release_date,
        measurements,
        policy_hash,
        reservation_id,
        kind,
        reason,
        run_id,
        accountant,
    ):
        prev_seq, prev_hash = (records[-1][0], records[-1][-1]) if records else (0, GENESIS_HASH)
        now = datetime.now(UTC)
        recorded_us = (now - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        params = []
        for i, m in enumerate(measurements, start=1):
            row = {
                "seq": prev_seq + i,
                "release_date": release_date,
                "asset": m.asset,
                "mechanism": m.mechanism,
                "epsilon": float(m.spend.epsilon),
                "delta": float(m.spend.delta),
                "rho": float(m.spend.rho),
                "sensitivity": float(m.sensitivity),
                "noise_scale": float(m.noise_scale),
                "policy_hash": str(policy_hash),
                "reservation_id": reservation_id,
                "kind": kind,
                "reason": str(reason),
                "run_id": str(run_id),
                "accountant": accountant,
                "recorded_at": recorded_us,
            }
            this_hash = row_hash(prev_hash, row)
            # the datetime itself goes to TIMESTAMPTZ; the hash used its epoch microseconds
            params.append([*(row[c] for c in COLUMNS[:-3]), now, prev_hash, this_hash])
            prev_hash = this_hash
        con.executemany(
            f"INSERT INTO privacy_spend ({', '.join(COLUMNS)})"
            f" VALUES ({', '.join('?' * len(COLUMNS))})",
            params,
        )
        con.execute("DELETE FROM ledger_head")
        last_seq = prev_seq + len(measurements)
        con.execute("INSERT INTO ledger_head VALUES (?, ?)", [last_seq, prev_hash])

    def reservation(self, release_date: date | str) -> pd.DataFrame:
        """The ledger rows of the date's current (latest) reservation; empty if it has none.

        DP assets draw noise on the strength of these rows, so a ledger that fails
        verification raises LedgerCorrupt here too: a forged or edited row admits nothing."""
        day = _as_date(release_date)

        def work(con) -> pd.DataFrame:
            if con is None:
                return self._empty()
            self._require_verified(con)
            return self._current(con, day)

        return self._run(work, create=False)

    def _require_verified(self, con) -> list[tuple]:
        """The chain's records; LedgerCorrupt, saying what was found, if it does not verify."""
        records, head = self._read_chain(con)
        problems = _check_chain(records, head)
        if problems:
            raise LedgerCorrupt(
                f"ledger {self.path} failed verification, refusing to spend: {'; '.join(problems)}"
                " (run `cohort-pipeline ledger verify`; restore the ledger from a verified copy)"
            )
        return records

    def rows(self) -> pd.DataFrame:
        """The whole ledger in seq order."""
        return self._run(
            lambda con: self._empty() if con is None else self._rows_df(con), create=False
        )

    def verify(self) -> list[str]:
        """Recompute the hash chain and head; human-readable problems, [] when sound."""
        return self._run(
            lambda con: [] if con is None else _check_chain(*self._read_chain(con)), create=False
        )

    def summary(self, cap: BudgetCap, as_of: date | str | None = None) -> dict:
        """JSON-serialisable budget status as of a date (default: the latest release date):
        the enforced figures (the worst cap window and horizon span containing as_of, what
        `reserve` bounds), and every release."""

        def work(con):
            return ([], []) if con is None else self._read_chain(con)

        records, head = self._run(work, create=False)
        charges = _charges(records)
        if as_of is not None:
            as_of = _as_date(as_of)
        elif charges:
            as_of = max(d for d, _ in charges)
        figures = Enforced(0.0, 0.0, 0.0, 0.0)
        if as_of is not None:
            figures = Enforced.around(charges, cap, as_of)

        groups: dict[tuple, list[tuple]] = {}
        for rec in records:  # dicts keep first-seen (seq) order
            groups.setdefault(rec[10], []).append(rec)  # by reservation_id
        releases = []
        for reservation_id, recs in groups.items():
            composed = compose([c for _, c in _charges(recs)], cap.composition, cap.delta)
            releases.append(
                {
                    "release_date": recs[0][1].isoformat(),
                    "epsilon": composed[0],
                    "delta": composed[1],
                    "rho": sum(r[6] for r in recs),
                    "measurements": len(recs),
                    "policy_hash": recs[0][9],
                    "reservation_id": reservation_id,
                    "kind": recs[0][11],
                    "reason": recs[0][12],
                    "run_id": recs[0][13],
                    "accountant": recs[0][14],
                    "first_seq": recs[0][0],
                }
            )
        problems = _check_chain(records, head)
        return {
            "ledger": self.path,
            "accountant": cap.accountant,
            "composition": cap.composition,
            "delta": cap.delta,
            "delta_cap": cap.delta_cap,
            "as_of": None if as_of is None else as_of.isoformat(),
            "epsilon_cap": cap.epsilon_cap,
            "window_days": cap.window_days,
            "epsilon_spent": figures.epsilon,
            "delta_spent": figures.delta,
            "epsilon_remaining": max(0.0, cap.epsilon_cap - figures.epsilon),
            "epsilon_horizon_cap": cap.epsilon_horizon_cap,
            "horizon_days": cap.horizon_days,
            "horizon_span_days": cap.horizon_span,
            "horizon_epsilon": figures.horizon_epsilon,
            "horizon_delta": figures.horizon_delta,
            "horizon_remaining": max(0.0, cap.epsilon_horizon_cap - figures.horizon_epsilon),
            "rows": len(records),
            "verified": not problems,
            "problems": problems,
            "releases": releases,
        }

    @staticmethod
    def _empty() -> pd.DataFrame:
        return pd.DataFrame(columns=list(COLUMNS))
