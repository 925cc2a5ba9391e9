"""Nothing private leaves the private zone: after a real `dagster asset materialize` of the
whole graph into an on-disk instance (DAGSTER_HOME with SQLite run/event storage and compute
logs), no file of the instance, no release table and no export holds a user id or an exact
count from the private tables.

Exact counts are matched as whole numeric literals whose value is that integer ("412" or
"1412.0", never the "1412" inside the noisy "1412.37" or a hex id), and only counts >= 1000
on the default 20k-user sample: smaller integers (cohorts, days, k, ranks, check counts, the
number of distinct recommended items) occur for public reasons and collide with some exact
count by chance (seen in CI at 100), while a count >= 1000 showing up verbatim is a leak
until proven otherwise. Public numbers (policy values, run config) are
excluded for the same reason. A literal that is a rounding of a released noisy cohort size,
or of an end of its released 95% interval, at the literal's own precision (the metadata
shows the noisy 1407.3 ± 43.6 as "1407 ± 44 (95%: 1364 to 1451)") is post-processing of a
release, not a leak, and is not reported: such roundings meet an exact count by chance.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np

from cohort_pipeline_tests.conftest import RELEASE_DATE, REPO

MIN_SCANNED_COUNT = 1000
# Dagster's own versions (tags dagster/data_version, dagster/input_data_version/<key>, and
# the audit report's provenance column): logical versions from code versions, not data.
DAGSTER_VERSIONS = (b"dagster/", b"dagster/input_", b"dagster_")
RISK_TRIALS = 2000  # keeps privacy_risk_report quick inside the release run
_WORDS = re.compile(rb"[A-Za-z0-9_]+")
# A whole numeric literal: not part of a word, a decimal, a date (2026-11-28) or a time.
_NUMBERS = re.compile(rb"(?<![\w.:-])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.:-])")
# Process ids in Dagster's event records are public facts about this machine, not data;
# on a fresh CI machine they are small enough to collide with a cohort count.
_PIDS = re.compile(rb'"pid": ?\d+|pid: \d+|\(pid: \d+\)')


def exact_secrets(warehouse: Path) -> tuple[set[str], dict[int, str]]:
    """User ids and exact counts (value -> what it counts) of the release date's private
    tables: users and converters per full cohort and per released cohort, sessions per
    cohort, and every private table's row count."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        day = f"DATE '{RELEASE_DATE}'"
        ids = {
            r[0] for r in con.execute("SELECT DISTINCT user_id FROM private.raw_events").fetchall()
        }
        counts: dict[int, str] = {}
        per_cohort = f"""
            SELECT cohort_key, count(*), sum(converted), sum(sessions)
            FROM private.user_profiles WHERE release_date = {day} GROUP BY ALL"""
        per_released = f"""
            WITH m AS (SELECT cohort_key AS released, unnest(string_split(members, ';')) AS key
                       FROM release.cohort_sizes WHERE release_date = {day})
            SELECT m.released, count(*), sum(p.converted), sum(p.sessions)
            FROM m JOIN private.user_profiles p ON p.cohort_key = m.key
            WHERE p.release_date = {day} GROUP BY ALL"""
        for sql, what in ((per_cohort, "cohort"), (per_released, "released cohort")):
            for key, users, converters, sessions in con.execute(sql).fetchall():
                counts[int(users)] = f"users of {what} {key}"
                counts[int(converters)] = f"converters of {what} {key}"
                counts[int(sessions)] = f"sessions of {what} {key}"
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'private'"
        ).fetchall()
        for (table,) in tables:
            (n,) = con.execute(f"SELECT count(*) FROM private.{table}").fetchall()[0]
            counts[int(n)] = f"rows of private.{table}"
        return ids, counts
    finally:
        con.close()


def public_numbers(policy: Path) -> set[int]:
    """Integers the policy and this run's config publish."""
    text = policy.read_text()
    return {int(float(m)) for m in re.findall(r"\b\d+(?:\.\d+)?\b", text)} | {RISK_TRIALS}


def find_leaks(
    blob: bytes, ids: set[str], counts: dict[int, str], released: np.ndarray
) -> list[str]:
    """User ids in `blob`, and numeric literals equal to an exact count that no released
    value rounds to."""
    found = {w.decode() for w in _WORDS.findall(blob)} & ids
    leaks = [f"user id {i}" for i in sorted(found)[:5]]
    for match in _NUMBERS.finditer(_PIDS.sub(b'"pid": -', blob)):
        literal = match.group()
        value = float(literal)
        if value.is_integer() and int(value) in counts:
            decimals = len(literal.split(b".")[1]) if b"." in literal else 0
            if not np.any(np.abs(released - value) <= 0.5 * 10.0**-decimals):
                context = match.string[max(0, match.start() - 60) : match.end() + 20]
                leaks.append(f"{literal.decode()} = {counts[int(value)]} in {context!r}")
    return leaks


def released_sizes(warehouse: Path) -> np.ndarray:
    """The noisy cohort sizes of the release and the ends of their 95% intervals (DP outputs
    and their post-processing; previews, interval texts and logs round them)."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        sql = (
            "SELECT noisy_users, noisy_users - accuracy_95, noisy_users + accuracy_95"
            " FROM release.cohort_sizes WHERE release_date = ?"
        )
        rows = con.execute(sql, [RELEASE_DATE]).fetchall()
        return np.array([value for row in rows for value in row], dtype=float)
    finally:
        con.close()


def release_tables_csv(warehouse: Path) -> dict[str, bytes]:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        tables = con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'release'"
        ).fetchall()
        return {
            f"release.{t}": con.execute(f"SELECT * FROM release.{t}")
            .df()
            .to_csv(index=False)
            .encode()
            for (t,) in tables
        }
    finally:
        con.close()


def test_no_user_id_or_exact_count_in_dagster_storage_release_tables_or_exports(
    sample_dir, tmp_path
):
    data_dir = sample_dir  # the default sample: its exact counts are large and distinctive
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_instance.yaml").read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "COHORT_PIPELINE_DATA_DIR": str(data_dir)}
    env.pop("COHORT_PIPELINE_POLICY", None)
    config = {"ops": {"privacy_risk_report": {"config": {"trials": RISK_TRIALS}}}}
    run = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "asset", "materialize",
         "-m", "cohort_pipeline.definitions", "--select", "*", "--partition", RELEASE_DATE,
         "--config-json", json.dumps(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]

    ids, counts = exact_secrets(data_dir / "warehouse.duckdb")
    for value in public_numbers(data_dir / "policy.yaml"):
        counts.pop(value, None)
    counts = {v: what for v, what in counts.items() if v >= MIN_SCANNED_COUNT}
    assert len(ids) > 1000 and len(counts) > 20  # the scan has something to look for

    storage = [p for p in home.rglob("*") if p.is_file()]
    names = {p.suffix for p in storage}
    assert ".db" in names, "no SQLite run/event storage found"
    assert any("compute_logs" in p.parts for p in storage), "no compute logs captured"
    scanned = {str(p.relative_to(tmp_path)): p.read_bytes() for p in storage}
    scanned |= release_tables_csv(data_dir / "warehouse.duckdb")
    scanned |= {str(p): p.read_bytes() for p in (data_dir / "exports").rglob("*") if p.is_file()}
    scanned["dagster CLI output"] = (run.stdout + run.stderr).encode()

    con = duckdb.connect(str(data_dir / "ledger.duckdb"), read_only=True)
    ledger = con.execute("SELECT * FROM privacy_spend").df()
    con.close()
    scanned["ledger.privacy_spend"] = ledger.to_csv(index=False).encode()
    # No version derived from the data anywhere: the only "data version" is Dagster's own
    # (its logical version, from code versions), and releases name their random reservation.
    versions = {
        name: blob[max(0, m.start() - 40) : m.end() + 10]
        for name, blob in scanned.items()
        for m in re.finditer(rb"data[_ ]version", blob, re.IGNORECASE)
        if not blob[max(0, m.start() - 14) : m.start()].endswith(DAGSTER_VERSIONS)
    }
    assert not versions, f"a data version is published: {versions}"
    for table, blob in release_tables_csv(data_dir / "warehouse.duckdb").items():
        header = blob.split(b"\n", 1)[0].decode().split(",")
        if "reservation_id" in header:
            assert set(re.findall(rb"\b[0-9a-f]{32}\b", blob)) <= set(
                ledger["reservation_id"].str.encode("ascii")
            ), table
    assert ledger["reservation_id"].nunique() == 1

    released = released_sizes(data_dir / "warehouse.duckdb")
    leaks = {
        name: found
        for name, blob in scanned.items()
        if (found := find_leaks(blob, ids, counts, released))
    }
    assert not leaks, f"private values outside the private zone: {leaks}"

    # The scanner itself finds what it looks for: the private tables do hold them.
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    private = (
        con.execute(
            "SELECT cohort_key, count(*) AS n, min(user_id) FROM private.user_profiles GROUP BY ALL"
        )
        .df()
        .to_csv(index=False)
        .encode()
    )
    con.close()
    control = find_leaks(private, ids, counts, released)
    assert any(x.startswith("user id") for x in control)
    assert any(" = " in x for x in control)  # an exact count, whatever else it also counts
