"""End-to-end black-box audit: from event windows to released values, against the ledger.

The noise-calibration check (`privacy.calibration`) feeds each OpenDP measurement its
*claimed* sensitivity, so a wrong sensitivity would pass it. This audit takes nothing on
trust between the events and the noise:

1. Neighbouring event windows. A small base population (generate.py) and worst-case users in
   the canonical event schema give pairs (D, D') that differ by one user:
   - `add maximal user`: 10 x `bounds.max_sessions` sessions, durations beyond the clamp, a
     conversion, events on every category and on the top items;
   - `add user to emptied cohort`: D holds no user of the base's least populated cohort
     (they are left out); D' adds one, sitting on an edge of its bands (one session more or
     fewer, or a purchase a day earlier or later, and they would be in the neighbouring
     cohort);
   - `remove heaviest user`: D' is D without the base user with the most events.
2. The real bounding SQL (the DuckDB engine over `privacy/bounding.py`) on D and on D', once
   each: it is deterministic.
3. The real release function of every measurement of `measurements.audited()` (those the
   registry releases from a bounded table) on those sums, each with a `Recorder` in place
   of its mechanism: the exact vector the function hands to OpenDP, for D and D'.
   The coarsening plan of the metrics and the affinity is one real noisy `cohort_sizes`
   release on D, held fixed for D' (a later measurement is private given the earlier ones).
4. Per trial, the noise: the calibrated OpenDP measurement of the release
   (`measurements.mechanisms(policy)`) draws N noisy copies of the exact vector in one call. Only the
   coordinates where D and D' differ (beyond float rounding, 1e-9) are drawn: the noise is
   independent per coordinate and the attack reads nothing else, so this is exact, and it
   keeps a 2,000-item vector cheap.
5. The attack: project each noisy copy on D' - D (the likelihood-ratio statistic for
   Gaussian noise), pick a threshold on half the runs and bound (epsilon, rho) from below on
   the other half with Clopper-Pearson (`calibration.lower_bounds`). The attack reads the
   mechanism's output, of which every released value (coarsened sizes, means, shares) is
   post-processing: the release tables tell an attacker nothing more than it does.
6. The claim: what `measurements.planned_measurements(policy)` reserves in the ledger for the
   measurement (epsilon at the ledger's delta, and rho), and the single measurement's epsilon from
   dp-accounting's PLD accountant, which is tighter for Gaussian noise.

The audit passes when no lower bound exceeds its claim. Another path to the release is one
more `Arm` (any object with `measurement`, `name`, `direction` and `sample`): see
`audit_arm`. The re-run path is `RerunArm`: the release protocol of `privacy/guard.py` (admit, draw_once) run
on D or D', then RERUNS times more after the data changed to the other window, all runs'
outputs side by side, against the claim of one release.
Not a release path: the base population is synthetic and nothing here is stored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

import duckdb
import numpy as np
import pandas as pd
from dp_accounting.pld import privacy_loss_distribution

from cohort_pipeline.engines import DuckDBEngine
from cohort_pipeline.policy import Policy, load_policy
from cohort_pipeline.privacy import guard, measurements
from cohort_pipeline.privacy.bounding import window
from cohort_pipeline.privacy.mechanisms import Mechanism
from cohort_pipeline.settings import DataFolder, Settings
from cohort_pipeline.tools.calibration import ALPHA, closing_columns, lower_bounds, markdown_table
from cohort_pipeline.tools.generate import generate

RELEASE_DATE = date(2026, 11, 28)  # any date: the base population is generated to end on it
MAXIMAL_SESSIONS = 10  # x bounds.max_sessions: a missing clamp moves the metrics ~10x
TOP_ITEMS = 5  # the maximal user's items: these most engaged ones, plus each category's top
PAIRS = ("add maximal user", "add user to emptied cohort", "remove heaviest user")
RERUN_AUDITED = ("cohort_sizes", "cohort_metrics")  # measurements with a re-run arm per pair
RERUNS = 20  # re-runs of a released date after its data changed (a retrying schedule)


# -- neighbouring event windows ------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    """The base window's events and the public catalog."""

    events: pd.DataFrame
    catalog: pd.DataFrame

    @property
    def categories(self) -> list[str]:
        return sorted(self.catalog["category"].dropna().unique())


def base_population(
    policy: Policy, users: int, categories: int = 8, items: int = 200
) -> Population:
    """A generated window of `users` users (seed 0: the population is fixed, the noise is
    OpenDP's) ending on RELEASE_DATE."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(
            tmp,
            users=users,
            days=policy.lookback_days,
            end_date=RELEASE_DATE,
            items=items,
            categories=categories,
        )
        con = duckdb.connect()
        folder = DataFolder(Path(tmp))
        events = con.execute(f"SELECT * FROM read_parquet('{folder.events}/*.parquet')").df()
        catalog = pd.read_csv(folder.catalog, dtype=str)
    return Population(events, catalog)


def user_events(
    user_id: str,
    sessions: list[tuple[date, str, float, list[tuple[str, str]]]],
) -> pd.DataFrame:
    """Canonical event rows of one user: per session (day, device type, duration in seconds,
    [(event type, item id), ...])."""
    rows = []
    for s, (day, device, duration, events) in enumerate(sessions):
        start = datetime.combine(day, datetime.min.time(), UTC) + timedelta(minutes=4 * s)
        for e, (event_type, item) in enumerate(events):
            rows.append(
                {
                    "user_id": user_id,
                    "event_time": start + timedelta(seconds=e),
                    "session_id": f"{user_id}-s{s}",
                    "event_type": event_type,
                    "item_id": item,
                    "device_type": device,
                    "session_duration_s": duration,
                    "revenue": 10.0 if event_type == "purchase" else None,
                }
            )
    return pd.DataFrame(rows)


def maximal_user(policy: Policy, population: Population) -> pd.DataFrame:
    """MAXIMAL_SESSIONS x max_sessions desktop sessions in the outcome period, each twice the
    duration clamp, each a purchase: every per-user value at its upper bound, a category
    vector over every category and an item vector over the top items."""
    _, outcome_start, _ = window(policy, RELEASE_DATE)
    counts = population.events.groupby("item_id").size().rename("n").reset_index()
    ranked = population.catalog.merge(counts, on="item_id", how="left").fillna({"n": 0})
    ranked = ranked.sort_values(["n", "item_id"], ascending=[False, True])
    items = list(
        dict.fromkeys(
            [*ranked["item_id"].head(TOP_ITEMS), *ranked.drop_duplicates("category")["item_id"]]
        )
    )
    duration = 2.0 * policy.session_duration_s[1]
    n = MAXIMAL_SESSIONS * policy.max_sessions
    sessions = [
        (
            outcome_start + timedelta(days=s % policy.outcome_days),
            "desktop",
            duration,
            [("purchase", items[s % len(items)])],
        )
        for s in range(n)
    ]
    return user_events("audit-maximal", sessions)


def band_edge_user(policy: Policy, cohort_key: str, item: str) -> pd.DataFrame:
    """A user of `cohort_key` on an edge of each of its bands (the lower edge, or the upper
    one of a first band): one session more or fewer, or a purchase a day earlier or later,
    would put them in the neighbouring cohort."""
    first, outcome_start, _ = window(policy, RELEASE_DATE)
    # The user's value of each quantity and column its dimensions read (None: lacks it).
    value = {"session_count": 1, "days_since_purchase": None, "mean_duration_s": 60.0}
    for dim, label in zip(policy.dimensions, cohort_key.split("|"), strict=True):
        if dim.column:
            value[dim.column] = dict(dim.groups)[label][0]
        elif label != dim.none_label:
            band = dim.labels.index(label)
            upper = dim.edges[0] - 1 if dim.edges else 1  # of the first band
            value[dim.quantity] = dim.edges[band - 1] if band else upper
    device_type = value.get("device_type", "desktop")
    duration = float(value["mean_duration_s"])
    sessions = [
        (first + timedelta(days=i % policy.lookback_days), device_type, duration, [("view", item)])
        for i in range(max(value["session_count"], 1))
    ]
    if value["days_since_purchase"] is not None:
        purchase_day = outcome_start - timedelta(days=value["days_since_purchase"])
        sessions[0] = (purchase_day, device_type, duration, [("purchase", item)])
    return user_events("audit-band-edge", sessions)


@dataclass(frozen=True)
class Neighbours:
    """Two event windows that differ by one user."""

    name: str
    d: pd.DataFrame
    d1: pd.DataFrame


def neighbour_pairs(policy: Policy, population: Population) -> list[Neighbours]:
    """The audited pairs (module docstring, step 1). D is the base window without the users
    of its least populated cohort, so that the band-edge user is alone in that cohort."""
    profiles = bounded(policy, population, population.events)["user_profiles"]
    sizes = profiles["cohort_key"].value_counts().reindex(policy.cohort_keys(), fill_value=0)
    emptiest = min(policy.cohort_keys(), key=lambda k: (sizes[k], k))
    emptied = profiles.loc[profiles["cohort_key"] == emptiest, "user_id"]
    base = population.events[~population.events["user_id"].isin(emptied)]
    heaviest = base.groupby("user_id").size().sort_values(kind="stable").index[-1]
    edge = band_edge_user(policy, emptiest, population.catalog["item_id"].iloc[0])
    maximal, emptied_cohort, remove = PAIRS
    return [
        Neighbours(maximal, base, _union(base, maximal_user(policy, population))),
        Neighbours(emptied_cohort, base, _union(base, edge)),
        Neighbours(remove, base, base[base["user_id"] != heaviest]),
    ]


def _union(events: pd.DataFrame, user: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([events, user.astype(events.dtypes.to_dict())], ignore_index=True)


# -- the real bounding SQL and release functions ------------------------------------------


def bounded(
    policy: Policy, population: Population, events: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """The bounded tables the DuckDB engine stores for one event window (no `private.`)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events_df", events)
    con.execute(
        "CREATE TABLE events AS SELECT * REPLACE (CAST(event_time AS TIMESTAMPTZ) AS event_time,"
        " CAST(session_duration_s AS DOUBLE) AS session_duration_s) FROM events_df"
    )
    con.register("catalog", population.catalog)
    with DuckDBEngine().bounded_tables(con, policy, RELEASE_DATE, "events", "catalog") as tables:
        return {name.removeprefix("private."): con.execute(sql).df() for name, sql in tables}


class Recorder:
    """Stands in for a mechanism inside a real release function: no noise, returns its input
    and keeps a copy of it, which is exactly the vector the mechanism would noise."""

    def __init__(self, real: Mechanism):
        self.name, self.sensitivity = real.name, real.sensitivity
        self.scale, self.std, self.accuracy95 = real.scale, real.std, real.accuracy95
        self.inputs: list[np.ndarray] = []

    def __call__(self, values) -> np.ndarray:
        exact = np.asarray(values, dtype=float).copy()
        self.inputs.append(exact)
        return exact

    def norm(self, diff: np.ndarray) -> float:
        """The distance in the mechanism's norm (L1 for Laplace, L2 for Gaussian)."""
        return float(np.abs(diff).sum() if self.name == "laplace" else math.sqrt((diff**2).sum()))


def pre_noise_vectors(
    policy: Policy, population: Population, tables: dict[str, pd.DataFrame], plan: pd.DataFrame
) -> dict[str, Recorder]:
    """Each audited measurement's release function run on `tables` with a recorder for its
    mechanism (the other measurements' mechanisms are the real ones)."""
    mechs = measurements.mechanisms(policy)
    inputs = measurements.Inputs(tables, plan, population.catalog)
    rec = {}
    for name in measurements.audited():
        rec[name] = Recorder(mechs[name])
        measurements.release_measurement(name, inputs, policy, {**mechs, name: rec[name]})
    return rec


# -- arms: what is run many times ----------------------------------------------------------


class Arm(Protocol):
    """One released measurement on one neighbouring pair. `sample(world, n)` returns n released
    outputs (rows) on D (world 0) or D' (world 1), each drawn with fresh OpenDP noise;
    `direction` is the attack's projection (None: estimated from the selection half)."""

    measurement: str
    name: str

    @property
    def direction(self) -> np.ndarray | None: ...

    def sample(self, world: int, n: int) -> np.ndarray: ...


@dataclass(frozen=True)
class MechanismArm:
    """The calibrated mechanism of `measurement` on the exact vectors the real release function
    hands it for D and D', restricted to the coordinates where they differ."""

    measurement: str
    name: str
    policy: Policy
    exact: tuple[np.ndarray, np.ndarray]  # (D, D') on the support of D' - D
    distance: float  # |D' - D| in the mechanism's norm: the real pipeline's move

    @property
    def direction(self) -> np.ndarray:
        return self.exact[1] - self.exact[0]

    def sample(self, world: int, n: int) -> np.ndarray:
        # Built here, not pickled: each worker process builds the release's own mechanism.
        mech = measurements.mechanisms(self.policy)[self.measurement]
        x = self.exact[world]
        return mech(np.tile(x, n)).reshape(n, len(x))


class MemoryDraws:
    """The guard's DrawStore in memory: one trial's private storage of draws."""

    def __init__(self) -> None:
        self.frames: dict[tuple[str, str], pd.DataFrame] = {}

    def load(self, measurement: str, reservation_id: str) -> pd.DataFrame | None:
        return self.frames.get((measurement, reservation_id))

    def save(
        self, measurement: str, reservation_id: str, release_date: str, frame: pd.DataFrame
    ) -> None:
        self.frames[measurement, reservation_id] = frame.copy()


@dataclass(frozen=True)
class RerunArm:
    """The re-run path (privacy/guard.py): per trial, a fresh reservation is admitted and the
    date released through `guard.draw_once` on D (world 0) or D' (world 1); then the data
    changes to the other window (D' -> D: the user opts out; D -> D': their events arrive
    late) and the date is run `reruns` more times. The output is every run's released values
    side by side. A released date is final, so all runs return the first draw and the output
    is one release's; a run that drew again would compose, each draw moving the other way.

    The direction is estimated on the selection half: under the protocol every projection is
    a multiple of one draw's, and a redraw's attack needs the runs weighed with opposite signs.
    """

    measurement: str
    name: str
    policy: Policy
    exact: tuple[np.ndarray, np.ndarray]  # (D, D') on the support of D' - D
    reruns: int = RERUNS

    direction = None

    @property
    def redraw_direction(self) -> np.ndarray:
        """The likelihood-ratio direction if every run drew afresh: the first run moves by
        D' - D, each re-run by D - D'. (Under the protocol it sees R - 1 times one draw,
        negated, which a one-sided threshold test cannot use: hence `direction` is None.)"""
        diff = self.exact[1] - self.exact[0]
        return np.concatenate([diff, *[-diff] * self.reruns])

    def sample(self, world: int, n: int) -> np.ndarray:
        mech = measurements.mechanisms(self.policy)[self.measurement]
        pools = {w: _Pool(mech, self.exact[w], n) for w in (0, 1)}
        # The ledger's row of the date's reservation, admitted once: a trial's reservation
        # differs from it only by its random id (admit costs ~1 ms, a trial ~0.5 ms).
        s = mech.spend
        row = {"seq": 1, "asset": self.measurement, "reservation_id": "", "kind": "release"}
        row |= {"policy_hash": self.policy.hash, "epsilon": s.epsilon, "delta": s.delta}
        admitted = guard.admit(
            pd.DataFrame([row | {"rho": s.rho}]), self.measurement, str(RELEASE_DATE)
        )
        out = np.empty((n, (1 + self.reruns) * len(self.exact[0])))
        for i in range(n):
            admission = replace(admitted, reservation_id=secrets.token_hex(16))
            store, runs = MemoryDraws(), []
            for w in (world, *[1 - world] * self.reruns):
                frame, _ = guard.draw_once(
                    store, admission, self.measurement, pools[w].frame,
                    policy_hash=self.policy.hash, mechanism=mech,
                )  # fmt: skip
                runs.append(frame.to_numpy(dtype=float).ravel())
            out[i] = np.concatenate(runs)
        return out


_VALUE = pd.Index(["value"])  # built once: a str Index costs ~150 us a frame


class _Pool:
    """Noisy copies of one exact vector, drawn by the mechanism in batches of n (each copy
    an independent draw: as exact as one call per run, and cheaper)."""

    def __init__(self, mech: Mechanism, exact: np.ndarray, n: int):
        self.mech, self.exact, self.n = mech, exact, n
        self.rows: list[np.ndarray] = []

    def frame(self) -> pd.DataFrame:
        if not self.rows:
            k = len(self.exact)
            self.rows = list(self.mech(np.tile(self.exact, self.n)).reshape(self.n, k))
        return pd.DataFrame(self.rows.pop()[:, None], columns=_VALUE)


def mechanism_arms(policy: Policy, population: Population) -> list[MechanismArm]:
    """An arm per audited measurement and neighbouring pair (module docstring, steps 1-4)."""
    pairs = neighbour_pairs(policy, population)
    base_tables = bounded(policy, population, pairs[0].d)
    inputs = measurements.Inputs(base_tables, catalog=population.catalog)
    plan = measurements.release_measurement("cohort_sizes", inputs, policy)  # real noise
    arms = []
    for pair in pairs:
        d, d1 = (
            pre_noise_vectors(policy, population, bounded(policy, population, events), plan)
            for events in (pair.d, pair.d1)
        )
        for measurement in measurements.audited():
            (x,), (x1,) = d[measurement].inputs, d1[measurement].inputs
            # Sums over other users agree up to float rounding (summation order): not moved.
            support = np.flatnonzero(~np.isclose(x1, x, rtol=1e-9, atol=1e-9))
            arms.append(
                MechanismArm(
                    measurement,
                    pair.name,
                    policy,
                    (x[support], x1[support]),
                    d[measurement].norm(x1 - x),
                )
            )
    return arms


def rerun_arms(arms: list[Arm]) -> list[RerunArm]:
    """A re-run arm beside each mechanism arm of RERUN_AUDITED, on the same exact vectors."""
    return [
        RerunArm(arm.measurement, f"{arm.name}, re-run", arm.policy, arm.exact)
        for arm in arms
        if isinstance(arm, MechanismArm) and arm.measurement in RERUN_AUDITED
    ]


# -- claims and bounds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What the ledger reserves for one measurement, and its PLD epsilon."""

    epsilon: float
    delta: float
    rho: float
    pld_epsilon: float


def claims(policy: Policy) -> dict[str, Claim]:
    """Per measurement, from `measurements.planned_measurements` (the rows the ledger
    reserves, one per registered measurement, in registry order)."""
    out = {}
    rows = measurements.planned_measurements(policy)
    for name, m in zip(measurements.REGISTRY, rows, strict=True):
        s = m.spend
        if m.mechanism == "laplace":
            pld = privacy_loss_distribution.from_laplace_mechanism(
                m.noise_scale, sensitivity=m.sensitivity, value_discretization_interval=1e-4
            )
        else:
            pld = privacy_loss_distribution.from_gaussian_mechanism(
                m.noise_scale, sensitivity=m.sensitivity, value_discretization_interval=1e-4
            )
        out[name] = Claim(s.epsilon, s.delta, s.rho, pld.get_epsilon_for_delta(s.delta))
    return out


@dataclass(frozen=True)
class ArmResult:
    measurement: str
    pair: str
    trials: int  # runs on each of D and D'
    coordinates: int  # noisy coordinates per run (where D and D' differ)
    distance: float | None  # the pipeline's move |D' - D| (None: a black-box arm)
    claimed_epsilon: float
    pld_epsilon: float
    delta: float
    epsilon_lower_bound: float
    claimed_rho: float
    rho_lower_bound: float
    seconds: float
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        ok = (
            self.epsilon_lower_bound <= self.claimed_epsilon
            and self.rho_lower_bound <= self.claimed_rho
        )
        object.__setattr__(self, "passed", ok)


def _sample(arm: Arm, world: int, n: int) -> tuple[np.ndarray, float]:
    start = time.process_time()
    return arm.sample(world, n), time.process_time() - start


def audit_arm(
    arm: Arm,
    claim: Claim,
    trials: int,
    alpha: float = ALPHA,
    outputs: tuple[np.ndarray, np.ndarray] | None = None,
    seconds: float | None = None,
) -> ArmResult:
    """Bound `arm`'s privacy from below from `trials` runs on D and on D' (drawn here unless
    `outputs` are given) and set it against `claim`. Half of the runs choose the projection
    (if the arm has none) and the threshold; the other half give the bound."""
    start = time.process_time()
    d, d1 = outputs if outputs is not None else (arm.sample(0, trials), arm.sample(1, trials))
    direction = arm.direction
    if direction is None:
        half = trials // 2
        direction = d1[:half].mean(axis=0) - d[:half].mean(axis=0)
    if np.any(direction):
        eps_lb, rho_lb = lower_bounds(d @ direction, d1 @ direction, claim.delta, alpha)
    else:  # D and D' give the same input: nothing to distinguish
        eps_lb = rho_lb = 0.0
    return ArmResult(
        measurement=arm.measurement,
        pair=arm.name,
        trials=trials,
        coordinates=d.shape[1],
        distance=getattr(arm, "distance", None),
        claimed_epsilon=claim.epsilon,
        pld_epsilon=claim.pld_epsilon,
        delta=claim.delta,
        epsilon_lower_bound=eps_lb,
        claimed_rho=claim.rho,
        rho_lower_bound=rho_lb,
        seconds=(time.process_time() - start) + (seconds or 0.0),
    )


def run_audit(
    policy: Policy,
    trials: dict[str, int],
    population: Population,
    alpha: float = ALPHA,
    workers: int = 1,
    pair: str | None = None,
) -> list[ArmResult]:
    """Every arm of `mechanism_arms` whose measurement is in `trials` (and, given `pair`, of that
    neighbouring pair only) and its `rerun_arms`, `trials[measurement]` runs on each of D and D',
    drawn in `workers` processes. An arm's `seconds` is the CPU time of its draws and attack."""
    arms: list[Arm] = [
        arm
        for arm in mechanism_arms(policy, population)
        if arm.measurement in trials and pair in (None, arm.name)
    ]
    arms += rerun_arms(arms)
    claimed = claims(policy)
    jobs = [(arm, world, trials[arm.measurement]) for arm in arms for world in (0, 1)]
    if workers <= 1:
        drawn = [_sample(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            drawn = list(pool.map(_sample, *zip(*jobs, strict=True)))
    results = []
    for i, arm in enumerate(arms):
        (d, t0), (d1, t1) = drawn[2 * i], drawn[2 * i + 1]
        n = trials[arm.measurement]
        results.append(audit_arm(arm, claimed[arm.measurement], n, alpha, (d, d1), t0 + t1))
    return results


# -- report ---------------------------------------------------------------------------------


def per_measurement(results: list[ArmResult]) -> list[ArmResult]:
    """Each measurement's arm with the largest epsilon lower bound (ties: the largest rho one)."""
    best: dict[str, ArmResult] = {}
    for r in results:
        key = (r.epsilon_lower_bound, r.rho_lower_bound)
        if r.measurement not in best or key > (
            best[r.measurement].epsilon_lower_bound,
            best[r.measurement].rho_lower_bound,
        ):
            best[r.measurement] = r
    return list(best.values())


def results_table(results: list[ArmResult]) -> str:
    def ratio(claim: float, bound: float) -> float:
        return claim / bound if bound > 0 else math.inf

    return markdown_table(
        [
            {
                "measurement": r.measurement,
                "pair": r.pair,
                "trials": r.trials,
                "coords": r.coordinates,
                "move": r.distance,
                "claimed ε": r.claimed_epsilon,
                "PLD ε": r.pld_epsilon,
                "δ": r.delta,
                "ε lower bound": r.epsilon_lower_bound,
                "claim ÷ bound": ratio(r.claimed_epsilon, r.epsilon_lower_bound),
                "PLD ÷ bound": ratio(r.pld_epsilon, r.epsilon_lower_bound),
                **closing_columns(r),
            }
            for r in results
        ]
    )


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20_000, help="runs on each of D and D'")
    parser.add_argument(
        "--trials-for",
        action="append",
        default=[],
        metavar="MEASUREMENT=N",
        help="runs for one measurement (repeatable), e.g. cohort_sizes=400000",
    )
    parser.add_argument(
        "--policy",
        default=str(settings.policy_path),
        help="the policy whose releases are audited",
    )
    parser.add_argument("--users", type=int, default=2_000, help="base population size")
    parser.add_argument("--pair", choices=PAIRS, help="audit this neighbouring pair only")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="1 - confidence")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", dest="json_path", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    audited = measurements.audited()
    trials = dict.fromkeys(audited, args.trials)
    for item in args.trials_for:
        measurement, _, n = item.partition("=")
        if measurement not in trials or not n.isdigit():
            parser.error(f"--trials-for {item!r}: expected MEASUREMENT=N, one of {audited}")
        trials[measurement] = int(n)
    if min(trials.values()) < 100:
        parser.error("every measurement needs at least 100 trials")
    start = time.perf_counter()
    policy = load_policy(args.policy, settings.partitions_start)
    population = base_population(policy, args.users)
    results = run_audit(policy, trials, population, args.alpha, args.workers, args.pair)
    payload = {
        "policy": args.policy,
        "alpha": args.alpha,
        "users": args.users,
        "seconds": round(time.perf_counter() - start, 1),
        "per_measurement": [asdict(r) for r in per_measurement(results)],
        "results": [asdict(r) for r in results],
    }
    print(results_table(per_measurement(results)))
    print()
    print(results_table(results))
    print(json.dumps(payload, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(payload, f, indent=2)
    failed = [f"{r.measurement} ({r.pair})" for r in results if not r.passed]
    if failed:
        print(
            "END-TO-END AUDIT FAILED: lower bound above the claim: " + "; ".join(failed),
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
