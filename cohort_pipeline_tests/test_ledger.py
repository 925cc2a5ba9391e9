"""The privacy-budget ledger against real DuckDB files: spend, reuse, caps, tampering,
concurrency across threads and processes, summary."""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import threading
import time
from datetime import date, timedelta
from importlib import metadata
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort_pipeline.privacy.accounting import (
    Charge,
    Spend,
    compose,
    worst_window_spend,
)
from cohort_pipeline.privacy.ledger import (
    COLUMNS,
    GENESIS_HASH,
    BudgetCap,
    BudgetExceeded,
    Ledger,
    LedgerBusy,
    LedgerCorrupt,
    LedgerSchemaError,
    Measurement,
)

DAY0 = date(2024, 3, 1)
DELTA = 1e-7


def pure(epsilon: float, asset: str = "cohort_sizes") -> Measurement:
    return Measurement(asset, "laplace", Spend.pure(epsilon), 1.0, 1.0 / epsilon)


def gauss(rho: float, asset: str = "cohort_metrics") -> Measurement:
    return Measurement(asset, "gaussian", Spend.zcdp(rho, DELTA), 1.0, (1.0 / (2 * rho)) ** 0.5)


def basic_cap(epsilon_cap: float, window_days: int = 30) -> BudgetCap:
    return BudgetCap(epsilon_cap, window_days, DELTA, "basic")


def reserve(ledger, day, measurements, cap, redraw=None, run_id="run", policy_hash="p1"):
    return ledger.reserve(
        day, measurements, policy_hash=policy_hash, run_id=run_id, cap=cap, redraw_reason=redraw
    )


def raw(path, sql: str) -> None:
    con = duckdb.connect(str(path))
    try:
        con.execute(sql)
    finally:
        con.close()


def ledger_spends(ledger) -> list[tuple[date, Charge]]:
    rows = ledger.rows()
    return [
        (r.release_date.date(), Charge.of(r.mechanism, Spend(r.epsilon, r.delta, r.rho),
                                          r.sensitivity, r.noise_scale))
        for r in rows.itertuples()
    ]  # fmt: skip


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "ledger.duckdb"


# -- spending and reuse ------------------------------------------------------------------


def test_reserve_records_every_column_and_is_durable(path):
    ledger = Ledger(path)
    cap = BudgetCap(12.0, 30, DELTA, "zcdp")
    ms = [pure(0.5), gauss(0.02)]
    res = ledger.reserve(DAY0, ms, policy_hash="p1", run_id="r1", cap=cap)

    assert not res.reused and res.release_date == DAY0 and res.epsilon_cap == 12.0
    expected = worst_window_spend([(DAY0, m.charge) for m in ms], 30, "zcdp", DELTA, DAY0)[0]
    assert res.epsilon_spent == pytest.approx(expected)
    rows = res.rows
    assert list(rows.columns) == list(COLUMNS)
    assert rows.seq.tolist() == [1, 2]
    assert rows.prev_hash[0] == GENESIS_HASH and rows.prev_hash[1] == rows.row_hash[0]
    assert rows.asset.tolist() == ["cohort_sizes", "cohort_metrics"]
    assert rows.mechanism.tolist() == ["laplace", "gaussian"]
    assert rows.epsilon.tolist() == [ms[0].spend.epsilon, ms[1].spend.epsilon]
    assert rows.delta.tolist() == [0.0, DELTA]
    assert rows.rho.tolist() == [ms[0].spend.rho, 0.02]
    assert rows.noise_scale.tolist() == [m.noise_scale for m in ms]
    assert set(rows.run_id) == {"r1"} and set(rows.policy_hash) == {"p1"}
    assert set(rows.kind) == {"release"} and set(rows.reason) == {""}
    assert rows.reservation_id.nunique() == 1 and res.reservation_id == rows.reservation_id[0]
    assert len(res.reservation_id) == 32 and int(res.reservation_id, 16) >= 0  # token_hex(16)
    assert rows.recorded_at.notna().all() and str(rows.recorded_at.dt.tz) in ("UTC", "Etc/UTC")
    assert ledger.verify() == []

    # durable and reachable as `ledger.privacy_spend` once attached (main schema, not `ledger`)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{path}' AS ledger (READ_ONLY)")
        assert con.execute("SELECT count(*) FROM ledger.privacy_spend").fetchall() == [(2,)]
    finally:
        con.close()


def test_a_reserved_date_is_final_whatever_the_policy_now(path):
    ledger, cap = Ledger(path), basic_cap(10)
    first = reserve(ledger, DAY0, [pure(1.0)], cap, run_id="r1")
    again = reserve(ledger, DAY0, [pure(1.0)], cap, run_id="r2")
    changed = reserve(ledger, DAY0, [pure(2.0)], cap, run_id="r3", policy_hash="p2")
    for later in (again, changed):
        assert later.reused and later.epsilon_spent == first.epsilon_spent == 1.0
        assert later.rows.row_hash.tolist() == first.rows.row_hash.tolist()
        assert later.reservation_id == first.reservation_id
        assert later.rows.run_id.tolist() == ["r1"] and later.rows.policy_hash.tolist() == ["p1"]
    assert len(ledger.rows()) == 1
    assert ledger.reservation(DAY0).row_hash.tolist() == first.rows.row_hash.tolist()
    assert ledger.reservation(DAY0 + timedelta(days=1)).empty


def test_a_redraw_is_charged_in_full_and_becomes_the_current_reservation(path):
    ledger, cap = Ledger(path), basic_cap(10)
    first = reserve(ledger, DAY0, [pure(1.0)], cap, run_id="r1")
    redraw = reserve(ledger, DAY0, [pure(1.0)], cap, redraw="bad catalog", run_id="r2")
    assert not redraw.reused and redraw.kind == "redraw" and redraw.epsilon_spent == 2.0
    assert redraw.reservation_id != first.reservation_id
    assert redraw.rows.reason.tolist() == ["bad catalog"]
    # a retry of the same run reuses its redraw; another run's redraw is charged again
    retry = reserve(ledger, DAY0, [pure(1.0)], cap, redraw="bad catalog", run_id="r2")
    assert retry.reused and retry.reservation_id == redraw.reservation_id
    assert reserve(ledger, DAY0, [pure(1.0)], cap, run_id="r3").reservation_id == (
        redraw.reservation_id
    )
    current = ledger.reservation(DAY0)
    assert current.reservation_id.tolist() == [redraw.reservation_id]
    again = reserve(ledger, DAY0, [pure(1.0)], cap, redraw="again", run_id="r4")
    assert not again.reused and again.epsilon_spent == 3.0
    assert ledger.rows().kind.tolist() == ["release", "redraw", "redraw"]
    with pytest.raises(ValueError, match="reason"):
        reserve(ledger, DAY0, [pure(1.0)], cap, redraw="  ", run_id="r5")


def test_a_ledger_with_the_old_schema_is_refused_naming_the_column(path):
    raw(
        path,
        "CREATE TABLE privacy_spend (seq BIGINT, release_date DATE, asset VARCHAR,"
        " mechanism VARCHAR, epsilon DOUBLE, delta DOUBLE, rho DOUBLE, sensitivity DOUBLE,"
        " noise_scale DOUBLE, policy_hash VARCHAR, data_version VARCHAR, run_id VARCHAR,"
        " recorded_at TIMESTAMPTZ, prev_hash VARCHAR, row_hash VARCHAR)",
    )
    ledger = Ledger(path)
    for call in (
        ledger.rows,
        ledger.verify,
        lambda: reserve(ledger, DAY0, [pure(1.0)], basic_cap(10)),
    ):
        with pytest.raises(LedgerSchemaError, match=r"ledger\.duckdb.*reservation_id"):
            call()


def test_cap_refusal_writes_nothing_and_says_why(path):
    ledger, cap = Ledger(path), basic_cap(2.5)
    reserve(ledger, DAY0, [pure(1.0)], cap)
    reserve(ledger, DAY0 + timedelta(days=1), [pure(1.0)], cap)
    before = ledger.rows()
    with pytest.raises(BudgetExceeded) as err:
        reserve(ledger, DAY0 + timedelta(days=2), [pure(0.4), pure(0.3, "cohort_metrics")], cap)
    message = str(err.value)
    for part in ("requests epsilon 0.7", "already spent 2", "2.7 > cap 2.5", "30-day", "basic"):
        assert part in message
    after = ledger.rows()
    assert after.row_hash.tolist() == before.row_hash.tolist()
    assert ledger.verify() == []
    # exactly at the cap is admitted (float tolerance)
    assert reserve(ledger, DAY0 + timedelta(days=2), [pure(0.5)], cap).epsilon_spent == 2.5


def test_invalid_inputs_are_refused(path):
    with pytest.raises(ValueError):
        BudgetCap(1.0, 30, DELTA, "advanced")
    with pytest.raises(ValueError):
        pure(-1.0)
    with pytest.raises(ValueError):
        reserve(Ledger(path), DAY0, [], basic_cap(1))


def test_reading_a_missing_ledger_neither_fails_nor_creates_it(path):
    ledger = Ledger(path)
    assert ledger.rows().empty and list(ledger.rows().columns) == list(COLUMNS)
    assert ledger.verify() == [] and ledger.reservation(DAY0).empty
    assert not path.exists()


# -- composition and windows -------------------------------------------------------------


def test_zcdp_admits_more_daily_releases_than_basic(tmp_path):
    rho = 0.01
    charge = gauss(rho).charge
    cap_eps = compose([charge] * 30, "zcdp", DELTA)[0]  # exactly 30 releases' worth under PLD
    expected_basic = max(
        n for n in range(31) if compose([charge] * n, "basic", DELTA)[0] <= cap_eps + 1e-9
    )
    assert expected_basic < 30

    admitted = {}
    for composition in ("zcdp", "basic"):
        ledger = Ledger(tmp_path / f"{composition}.duckdb")
        cap = BudgetCap(cap_eps, 30, DELTA, composition)
        admitted[composition] = 0
        for day in range(30):
            try:
                reserve(ledger, DAY0 + timedelta(days=day), [gauss(rho)], cap)
                admitted[composition] += 1
            except BudgetExceeded:
                pass
    assert admitted == {"zcdp": 30, "basic": expected_basic}


def test_backfill_counts_every_window_containing_its_date(path):
    ledger, cap = Ledger(path), basic_cap(3.0, window_days=7)
    day = lambda n: DAY0 + timedelta(days=n)  # noqa: E731
    for n in (10, 12, 14):
        reserve(ledger, day(n), [pure(1.0)], cap)
    # day 8 shares the window [8, 14] with 10, 12, 14: 4 > 3
    with pytest.raises(BudgetExceeded, match="containing 2024-03-09"):
        reserve(ledger, day(8), [pure(1.0)], cap)
    # day 16 shares [10, 16] with all three
    with pytest.raises(BudgetExceeded):
        reserve(ledger, day(16), [pure(1.0)], cap)
    # day 3's windows end by day 9: nothing else there
    assert reserve(ledger, day(3), [pure(1.0)], cap).epsilon_spent == 1.0
    # day 17: worst window [11, 17] holds 12, 14, 17
    assert reserve(ledger, day(17), [pure(1.0)], cap).epsilon_spent == 3.0
    spends = ledger_spends(ledger)
    for d, _ in spends:
        assert worst_window_spend(spends, 7, "basic", DELTA, d)[0] <= 3.0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    composition=st.sampled_from(["zcdp", "basic"]),
    window=st.integers(1, 10),
    requests=st.lists(
        st.tuples(st.integers(0, 20), st.floats(0.1, 2.0), st.sampled_from(["", "redraw"])),
        min_size=1,
        max_size=12,
    ),
)
def test_no_window_ever_exceeds_the_cap(composition, window, requests):
    cap = BudgetCap(4.0, window, DELTA, composition)
    spends: list[tuple[date, Charge]] = []  # model of the ledger, checked against it at the end
    reserved: set[tuple[date, str]] = set()
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "l.duckdb")
        for n, (offset, epsilon, redraw) in enumerate(requests):
            d = DAY0 + timedelta(days=offset)
            new = [*spends, (d, pure(epsilon).charge)]
            fits = worst_window_spend(new, window, composition, DELTA, d)[0] <= 4.0 + 1e-9
            reuse = d in reserved and not redraw
            try:
                res = reserve(ledger, d, [pure(epsilon)], cap, redraw or None, run_id=f"r{n}")
                assert res.reused == reuse
                assert res.reused or fits
                if not res.reused:
                    spends = new
                    reserved.add(d)
            except BudgetExceeded:
                assert not reuse and not fits
        assert ledger_spends(ledger) == spends
        for d, _ in spends:
            assert worst_window_spend(spends, window, composition, DELTA, d)[0] <= 4.0 + 1e-9
        assert ledger.verify() == []


# -- tampering ---------------------------------------------------------------------------


def three_releases(path) -> Ledger:
    ledger = Ledger(path)
    for n in range(3):
        reserve(ledger, DAY0 + timedelta(days=n), [pure(1.0)], basic_cap(10))
    assert ledger.verify() == []
    return ledger


def test_edited_row_is_detected_and_blocks_spending(path):
    ledger = three_releases(path)
    raw(path, "UPDATE privacy_spend SET epsilon = 0.001 WHERE seq = 2")
    problems = ledger.verify()
    assert len(problems) == 1 and "seq 2" in problems[0] and "edited" in problems[0]
    with pytest.raises(LedgerCorrupt, match="seq 2"):
        reserve(ledger, DAY0 + timedelta(days=5), [pure(1.0)], basic_cap(10))
    assert len(ledger.rows()) == 3
    assert ledger.summary(basic_cap(10))["verified"] is False
    with pytest.raises(LedgerCorrupt):  # DP assets must not draw noise on a forged reservation
        ledger.reservation(DAY0 + timedelta(days=1))


def test_deleted_row_is_detected(path):
    ledger = three_releases(path)
    raw(path, "DELETE FROM privacy_spend WHERE seq = 2")
    problems = ledger.verify()
    assert any("seq 3" in p and "expected seq 2" in p for p in problems)
    assert any("seq 3" in p and "chain broken" in p for p in problems)
    with pytest.raises(LedgerCorrupt):
        reserve(ledger, DAY0 + timedelta(days=5), [pure(1.0)], basic_cap(10))


def test_truncated_tail_is_detected_by_the_head(path):
    ledger = three_releases(path)
    raw(path, "DELETE FROM privacy_spend WHERE seq = 3")
    problems = ledger.verify()
    assert len(problems) == 1 and "seq 3" in problems[0] and "truncated" in problems[0]
    with pytest.raises(LedgerCorrupt):
        reserve(ledger, DAY0 + timedelta(days=5), [pure(1.0)], basic_cap(10))


def test_reordered_rows_are_detected(path):
    ledger = three_releases(path)
    raw(path, "UPDATE privacy_spend SET seq = CASE seq WHEN 1 THEN 2 ELSE 1 END WHERE seq <= 2")
    problems = ledger.verify()
    assert any("seq 1" in p for p in problems) and any("seq 2" in p for p in problems)


# -- concurrency -------------------------------------------------------------------------


def test_threads_reserve_atomically(path):
    cap = basic_cap(3.0)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def worker(n: int) -> None:
        ledger = Ledger(path)  # one instance per thread: the lock is per path, not per object
        barrier.wait()
        try:
            reserve(ledger, DAY0 + timedelta(days=n), [pure(1.0)], cap, run_id=f"t{n}")
            outcomes.append("ok")
        except BudgetExceeded:
            outcomes.append("exceeded")
        except Exception as exc:  # noqa: BLE001 - any other outcome is the failure we test for
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["exceeded"] * 5 + ["ok"] * 3
    ledger = Ledger(path)
    assert ledger.verify() == [] and ledger.rows().epsilon.sum() == 3.0


def _process_worker(path: str, n: int, go, results) -> None:
    go.wait(30)
    try:
        reserve(Ledger(path), DAY0 + timedelta(days=n), [pure(1.0)], basic_cap(3.0), run_id=f"p{n}")
        results.put("ok")
    except BudgetExceeded:
        results.put("exceeded")
    except Exception as exc:  # noqa: BLE001
        results.put(repr(exc))


def _hold_file(path: str, seconds: float, ready, go) -> None:
    con = duckdb.connect(path)  # read-write: DuckDB locks the file for this process
    try:
        ready.set()
        go.wait(30)  # keep holding until the parent has seen a timeout, whatever the load
        time.sleep(seconds)
    finally:
        con.close()


def test_processes_reserve_atomically(path):
    Ledger(path).verify()  # nothing to verify yet; just proves the path is usable
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(str(path), n, go, results)) for n in range(6)
    ]
    for p in procs:
        p.start()
    go.set()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert outcomes == ["exceeded"] * 3 + ["ok"] * 3
    ledger = Ledger(path)
    assert ledger.verify() == [] and ledger.rows().epsilon.sum() == 3.0


def test_reserve_waits_for_another_process_holding_the_file(path):
    reserve(Ledger(path), DAY0, [pure(1.0)], basic_cap(10))
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_file, args=(str(path), 2.0, ready, go))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LedgerBusy, match="locked by another process") as err:
            reserve(
                Ledger(path, lock_timeout_s=0.3), DAY0 + timedelta(days=1), [pure(1)], basic_cap(10)
            )
        assert str(path) in str(err.value)
        go.set()
        started = time.monotonic()
        res = reserve(Ledger(path), DAY0 + timedelta(days=1), [pure(1.0)], basic_cap(10))
        assert not res.reused and time.monotonic() - started > 1.0
    finally:
        go.set()
        holder.join(30)
    assert Ledger(path).rows().seq.tolist() == [1, 2]


# -- summary -----------------------------------------------------------------------------


def test_summary(path):
    ledger, cap = Ledger(path), BudgetCap(12.0, 7, DELTA, "zcdp")
    empty = ledger.summary(cap)
    assert empty["epsilon_spent"] == 0.0 and empty["epsilon_remaining"] == 12.0
    assert empty["releases"] == [] and empty["as_of"] is None

    releases = [
        (DAY0, None, [pure(0.5), gauss(0.02)]),
        (DAY0, "fix", [pure(0.5), gauss(0.02)]),
        (DAY0 + timedelta(days=10), None, [gauss(0.05)]),
    ]
    for n, (day, redraw, ms) in enumerate(releases):
        reserve(ledger, day, ms, cap, redraw, run_id=f"r{n}")

    s = ledger.summary(cap)
    json.dumps(s)  # JSON-serialisable as is
    assert {k: s[k] for k in ("epsilon_cap", "window_days", "composition", "delta")} == {
        "epsilon_cap": 12.0,
        "window_days": 7,
        "composition": "zcdp",
        "delta": DELTA,
    }
    # default as_of is the latest release date; its window holds only the third release
    assert s["as_of"] == "2024-03-11"
    assert s["epsilon_spent"] == pytest.approx(compose([gauss(0.05).charge], "zcdp", DELTA)[0])
    assert s["epsilon_remaining"] == pytest.approx(12.0 - s["epsilon_spent"])
    assert s["verified"] is True and s["problems"] == []

    assert [(r["release_date"], r["kind"], r["reason"]) for r in s["releases"]] == [
        ("2024-03-01", "release", ""),
        ("2024-03-01", "redraw", "fix"),
        ("2024-03-11", "release", ""),
    ]
    assert len({r["reservation_id"] for r in s["releases"]}) == 3
    first = s["releases"][0]
    spends = [m.spend for m in releases[0][2]]
    assert first["measurements"] == 2 and first["policy_hash"] == "p1"
    assert (first["epsilon"], first["delta"]) == pytest.approx(
        compose([m.charge for m in releases[0][2]], "zcdp", DELTA)
    )
    assert first["rho"] == pytest.approx(sum(sp.rho for sp in spends))

    early = ledger.summary(cap, as_of=DAY0 + timedelta(days=3))
    both = [m.charge for _, _, ms in releases[:2] for m in ms]
    assert early["as_of"] == "2024-03-04"
    assert early["epsilon_spent"] == pytest.approx(compose(both, "zcdp", DELTA)[0])

    basic = ledger.summary(BudgetCap(12.0, 7, DELTA, "basic"), as_of=DAY0)
    assert basic["epsilon_spent"] == pytest.approx(sum(c.spend.epsilon for c in both))


# -- per-user horizon and delta caps -----------------------------------------------------


def test_horizon_cap_refuses_a_release_that_pushes_any_span_over_it_and_writes_nothing(path):
    # lookback 3, horizon 4: a span of 6 release dates. Window cap open (30 days, cap 100).
    cap = BudgetCap(100.0, 30, DELTA, "basic", epsilon_horizon_cap=2.0, horizon_days=4,
                    lookback_days=3)  # fmt: skip
    ledger = Ledger(path)
    day = lambda n: DAY0 + timedelta(days=n)  # noqa: E731
    for n in (0, 5, 10):
        reserve(ledger, day(n), [pure(1.0)], cap)
    before = ledger.rows()
    # day 7 would share the span [5, 10] with 5 and 10: 3 > 2
    with pytest.raises(BudgetExceeded) as err:
        reserve(ledger, day(7), [pure(1.0)], cap)
    message = str(err.value)
    assert "budget.epsilon_horizon_cap" in message and "horizon span" in message
    assert "Nothing was recorded" in message
    assert ledger.rows().row_hash.tolist() == before.row_hash.tolist() and ledger.verify() == []
    # day 16's spans [11, 16] .. [16, 21] hold nothing else; its 30-day window holds all
    assert reserve(ledger, day(16), [pure(1.0)], cap).epsilon_spent == 4.0
    summary = ledger.summary(cap, as_of=day(5))
    assert summary["horizon_epsilon"] == 2.0 and summary["horizon_span_days"] == 6
    assert summary["horizon_remaining"] == 0.0 and summary["horizon_days"] == 4


def test_horizon_cap_under_pld_bounds_every_span(path):
    cap = BudgetCap(100.0, 2, DELTA, "zcdp", epsilon_horizon_cap=1.5, horizon_days=5,
                    lookback_days=2)  # fmt: skip
    ledger = Ledger(path)
    admitted = []
    for n in range(12):
        try:
            reserve(ledger, DAY0 + timedelta(days=n), [gauss(0.02)], cap)
            admitted.append(n)
        except BudgetExceeded as exc:
            assert "budget.epsilon_horizon_cap" in str(exc)
    charges = ledger_spends(ledger)
    assert 0 < len(admitted) < 12
    for d, _ in charges:
        assert worst_window_spend(charges, 6, "zcdp", DELTA, d)[0] <= 1.5 + 1e-9
    # the refused ones would have broken it
    for n in set(range(12)) - set(admitted):
        d = DAY0 + timedelta(days=n)
        assert worst_window_spend([*charges, (d, gauss(0.02).charge)], 6, "zcdp", DELTA, d)[0] > 1.5


def test_basic_composition_caps_summed_delta(path):
    cap = BudgetCap(100.0, 7, DELTA, "basic", horizon_days=1, delta_cap=2.5 * DELTA)
    ledger = Ledger(path)
    reserve(ledger, DAY0, [gauss(0.01)], cap)
    reserve(ledger, DAY0 + timedelta(days=1), [gauss(0.01)], cap)
    before = ledger.rows()
    with pytest.raises(BudgetExceeded) as err:
        reserve(ledger, DAY0 + timedelta(days=2), [gauss(0.01)], cap)
    assert "delta 3e-07 > cap 2.5e-07 (`budget.delta_cap`)" in str(err.value)
    assert ledger.rows().row_hash.tolist() == before.row_hash.tolist()
    assert ledger.summary(cap)["delta_spent"] == pytest.approx(2 * DELTA)
    # a week later the window no longer holds them
    reserve(ledger, DAY0 + timedelta(days=8), [gauss(0.01)], cap)
    with pytest.raises(ValueError, match="delta_cap"):
        BudgetCap(1.0, 7, DELTA, "basic", delta_cap=DELTA / 2)


def test_rows_record_the_accountant(path):
    ledger = Ledger(path)
    reserve(ledger, DAY0, [pure(1.0)], BudgetCap(10.0, 7, DELTA, "zcdp"))
    reserve(ledger, DAY0 + timedelta(days=1), [pure(1.0)], basic_cap(10))
    assert ledger.rows()["accountant"].tolist() == [
        f"dp-accounting {metadata.version('dp-accounting')} PLD",
        "basic composition (sums of epsilon and delta)",
    ]
    assert ledger.verify() == []
    raw(path, "UPDATE privacy_spend SET accountant = 'none' WHERE seq = 1")
    assert any("row edited" in p for p in ledger.verify())  # the accountant is hashed too
