"""Every claimed sensitivity, checked by removing one user.

Hypothesis generates small event sets (heavy users above `bounds.max_sessions`, empty cohorts,
durations at and beyond the clamp bounds, items outside the catalog); the real DuckDB engine
runs the bounding SQL (privacy/bounding.py) into the per-key sums the assets store, and the
real release functions aggregate those. Both compositions are checked: their mechanisms
differ (Laplace with L1 sensitivities for counts and metrics under `basic`). A recording mechanism stands in for the noise, so we see exactly the vector
each OpenDP measurement would receive, for D and for D minus each user in turn. The distance,
in the mechanism's norm, must stay within the sensitivity it is calibrated with.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort_pipeline.engines import DuckDBEngine
from cohort_pipeline.logic.experiments import METRICS, release_readouts
from cohort_pipeline.policy import Policy, parse_policy
from cohort_pipeline.privacy import measurements
from cohort_pipeline.privacy.bounding import HASHES, IDS, bounded_totals, unique_hashes_sql, window
from cohort_pipeline.privacy.release import release_cohort_sizes
from cohort_pipeline.schema import DEVICE_TYPES, EVENT_TYPES
from cohort_pipeline.tools.end_to_end_audit import Recorder
from cohort_pipeline_tests.conftest import END, POLICY

CATALOG = pd.DataFrame(
    {
        "item_id": [f"i{n}" for n in range(6)],
        "category": ["books", "toys", "toys", "games", "pets", "pets"],
    }
)
CATEGORIES = sorted(CATALOG["category"].unique())
ITEMS = [*CATALOG["item_id"], "i-unknown"]  # an item outside the catalog joins no category
MAX_SESSIONS = 5  # low, so heavy users are cheap to generate


def small_policy() -> Policy:
    raw = yaml.safe_load(POLICY.read_text())
    raw["bounds"]["max_sessions"] = MAX_SESSIONS
    raw["cohorts"]["min_size"] = 10
    return parse_policy(raw)


POL = small_policy()
HI = POL.session_duration_s[1]
MECHANISMS = {c: measurements.mechanisms(replace(POL, composition=c)) for c in ("zcdp", "basic")}
SQL_BOUNDED = measurements.audited()  # every measurement released from a bounded table


durations = st.one_of(
    st.none(), st.sampled_from([0.0, HI, HI + 1.0, 4 * 3600.0]), st.floats(0.0, 2 * HI)
)
session = st.tuples(
    st.integers(0, POL.lookback_days - 1),  # day in the window
    st.sampled_from(DEVICE_TYPES),
    durations,
    st.lists(
        st.tuples(st.sampled_from(EVENT_TYPES), st.sampled_from(ITEMS)), min_size=1, max_size=4
    ),
)
user = st.one_of(
    st.lists(session, min_size=1, max_size=3),
    st.lists(session, min_size=MAX_SESSIONS + 1, max_size=MAX_SESSIONS + 4),  # heavy
)
datasets = st.lists(user, min_size=1, max_size=5)


def events_frame(users: list) -> pd.DataFrame:
    first, _, _ = window(POL, END)
    rows = []
    for u, sessions in enumerate(users):
        for s, (day, device, duration, events) in enumerate(sessions):
            start = datetime.combine(first + timedelta(days=day), datetime.min.time(), UTC)
            for e, (event_type, item) in enumerate(events):
                rows.append(
                    {
                        "user_id": f"u{u}",
                        "event_time": start + timedelta(minutes=s * 10 + e),
                        "session_id": f"u{u}-{s}",
                        "event_type": event_type,
                        "item_id": item,
                        "device_type": device,
                        "session_duration_s": duration,
                    }
                )
    return pd.DataFrame(rows)


class Warehouse:
    """The real bounding SQL over generated events, in an in-memory DuckDB."""

    def __init__(self, events: pd.DataFrame):
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.register("events_df", events)
        self.con.execute(
            "CREATE TABLE all_events AS SELECT * REPLACE (CAST(event_time AS TIMESTAMPTZ)"
            " AS event_time, CAST(session_duration_s AS DOUBLE) AS session_duration_s)"
            " FROM events_df"
        )
        self.con.register("catalog", CATALOG)

    def bounded(self, without: str | None = None) -> dict[str, pd.DataFrame]:
        """The bounded tables the engine stores for D, or for D minus user `without`."""
        self.con.execute(
            "CREATE OR REPLACE TEMP TABLE events AS SELECT * FROM all_events"
            " WHERE user_id IS DISTINCT FROM ?",
            [without],
        )
        with DuckDBEngine().bounded_tables(self.con, POL, END, "events", "catalog") as tables:
            return {table: self.con.execute(sql).df() for table, sql in tables}


def pre_noise_vectors(
    tables: dict[str, pd.DataFrame], plan: pd.DataFrame, composition: str = "zcdp"
) -> dict[str, Recorder]:
    """Run every SQL-bounded measurement's release function (measurements.REGISTRY) with a
    recorder for its mechanism; each keeps the exact vector its mechanism would have noised."""
    mechs = MECHANISMS[composition]
    bounded = {name.removeprefix("private."): frame for name, frame in tables.items()}
    inputs = measurements.Inputs(bounded, plan, CATALOG)
    rec = {}
    for name in SQL_BOUNDED:
        rec[name] = Recorder(mechs[name])
        measurements.release_measurement(name, inputs, POL, {**mechs, name: rec[name]})
    return rec


def plan_for(tables: dict[str, pd.DataFrame], min_size: int) -> pd.DataFrame:
    """A coarsening plan (public, fixed for D and its neighbours): from exact counts here,
    with k chosen by hypothesis so that some cohorts are merged and some are not."""
    sizes_only = Recorder(MECHANISMS["zcdp"]["cohort_sizes"])
    return release_cohort_sizes(
        tables["private.cohort_totals"], replace(POL, min_size=min_size), sizes_only
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=datasets, k=st.integers(0, 4), composition=st.sampled_from(sorted(MECHANISMS)))
def test_removing_any_user_moves_every_pre_noise_vector_within_its_sensitivity(
    users, k, composition
):
    events = events_frame(users)
    warehouse = Warehouse(events)
    full = warehouse.bounded()
    plan = plan_for(full, k)
    before = pre_noise_vectors(full, plan, composition)
    for u in events["user_id"].unique():
        after = pre_noise_vectors(warehouse.bounded(without=u), plan, composition)
        for asset, rec in before.items():
            (x,), (y,) = rec.inputs, after[asset].inputs
            assert x.shape == y.shape, f"{asset}: the released key set depends on the data"
            distance = rec.norm(x - y)
            assert distance <= rec.sensitivity * (1 + 1e-9), (
                f"{asset}: removing {u} moved the {rec.name} input by {distance} "
                f"> sensitivity {rec.sensitivity}"
            )


@pytest.mark.parametrize("composition", sorted(MECHANISMS))
def test_a_maximal_user_reaches_the_sensitivity(composition):
    """The bound is tight (so the tests above would see an off-by-2x): a heavy user with
    long sessions who converts, with one category and one item, moves every vector by exactly
    the sensitivity, in the norm of either composition's mechanism."""
    day_in_outcome = POL.lookback_days - 1
    heavy = [
        (day_in_outcome, "desktop", 2 * HI, [("purchase", "i0")]) for _ in range(MAX_SESSIONS + 2)
    ]
    light = [[(0, "mobile", 10.0, [("view", "i3")])] for _ in range(3)]
    warehouse = Warehouse(events_frame([*light, heavy]))
    full = warehouse.bounded()
    plan = plan_for(full, 0)
    before = pre_noise_vectors(full, plan, composition)
    after = pre_noise_vectors(warehouse.bounded(without="u3"), plan, composition)
    for asset, rec in before.items():
        distance = rec.norm(rec.inputs[0] - after[asset].inputs[0])
        assert math.isclose(distance, rec.sensitivity, rel_tol=1e-9), (asset, distance)


def test_the_recorder_sees_what_the_mechanism_would_noise():
    """Guard for the method: the recorded vector has one entry per public key (sizes) and per
    released cohort x metric, so a mechanism never sees a data-dependent shape."""
    tables = Warehouse(events_frame([[(0, "tablet", 30.0, [("click", "i1")])]])).bounded()
    plan = plan_for(tables, 0)
    rec = pre_noise_vectors(tables, plan)
    assert rec["cohort_sizes"].inputs[0].shape == (len(POL.cohort_keys()),)
    assert rec["cohort_sizes"].inputs[0].sum() == 1.0
    assert rec["cohort_metrics"].inputs[0].shape == (len(plan) * 3,)
    assert rec["cohort_category_affinity"].inputs[0].shape == (len(plan) * len(CATEGORIES),)
    assert rec["item_popularity"].inputs[0].shape == (len(CATALOG),)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=datasets)
def test_hash_keys_give_the_same_sums_as_ids(users):
    """The engine keys users and items by hash when unique (speed); the sums must not move."""
    con = Warehouse(events_frame(users)).con
    con.execute("CREATE TEMP TABLE events AS SELECT * FROM all_events")
    sums = {}
    for keys in (IDS, HASHES):
        for name, sql in bounded_totals(POL, END, "events", "catalog", keys):
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
        sums[keys] = [
            con.execute(f"SELECT * FROM {name} ORDER BY ALL").df()
            for name in ("cohort_totals", "cohort_category_totals", "item_totals")
        ]
    assert len(sums[IDS][0]) > 0  # every user is in one cohort
    for by_id, by_hash in zip(sums[IDS], sums[HASHES], strict=True):
        pd.testing.assert_frame_equal(by_id, by_hash, check_dtype=False, rtol=1e-12)


def test_a_shared_hash_is_detected():
    """Two users behind one hash would be bounded as one user: the engine must see it."""
    con = duckdb.connect()
    con.register("catalog", CATALOG)
    con.execute("CREATE TABLE profiles AS SELECT * FROM (VALUES ('u1'), ('u2')) t(user_id)")
    assert con.execute(unique_hashes_sql("profiles", "catalog")).fetchone()[0]
    con.execute("INSERT INTO profiles VALUES ('u1')")  # two rows, one hash
    assert not con.execute(unique_hashes_sql("profiles", "catalog")).fetchone()[0]


unit = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
readout_user = st.tuples(st.integers(0, 2), *(unit for _ in range(2 * len(METRICS))))


@settings(max_examples=40, deadline=None)
@given(users=st.lists(readout_user, min_size=1, max_size=6))
def test_removing_any_user_moves_the_experiment_readouts_within_their_sensitivity(users):
    """experiment_report: per-user metrics in [0, 1] (extremes included) summed by the real
    release_readouts; its input is pandas, not SQL (the metrics come from public lists)."""
    keys = ["low|*|*", "mid|*|*", "high|*|*"]
    per_user = pd.DataFrame(
        [
            {
                "user_id": f"u{i}",
                "cohort_key": keys[cohort],
                **{f"cohort_{m}": v for m, v in zip(METRICS, values[:3], strict=True)},
                **{f"popularity_{m}": v for m, v in zip(METRICS, values[3:], strict=True)},
            }
            for i, (cohort, *values) in enumerate(users)
        ]
    )

    def readout_input(frame: pd.DataFrame) -> tuple[np.ndarray, Recorder]:
        rec = Recorder(MECHANISMS["zcdp"]["experiment_report"])
        release_readouts(frame, keys, rec)
        return rec.inputs[0], rec

    full, rec = readout_input(per_user)
    for u in per_user["user_id"]:
        reduced, _ = readout_input(per_user[per_user["user_id"] != u])
        assert rec.norm(full - reduced) <= rec.sensitivity * (1 + 1e-9)
