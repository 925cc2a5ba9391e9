"""Alerts: thresholds, PSI drift, alert records and webhook delivery to a local HTTP server,
and budget alerts fired by real releases."""

from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from cohort_pipeline.logic import alerts
from cohort_pipeline.policy import load_policy
from cohort_pipeline.privacy.measurements import release_spend
from cohort_pipeline_tests.conftest import BOUNDED, check_results, run_release, write_policy


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204 if self.server.accept else 500)
        self.end_headers()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received, server.accept = [], True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    yield server
    server.shutdown()
    server.server_close()


def test_psi_matches_its_formula_and_is_zero_for_equal_distributions():
    e, a = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    assert alerts.psi(e, e) == 0.0
    assert alerts.psi(e * 7, a * 3) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert alerts.psi(e, a) == pytest.approx(alerts.psi(a, e))  # symmetric
    # An empty bin is floored, not infinite; negative noisy values are clamped to 0 first.
    assert math.isfinite(alerts.psi([1, 1, 0], [1, 1, 1]))
    assert alerts.psi([1, 1, -5], [1, 1, 0]) == 0.0
    with pytest.raises(ValueError):
        alerts.psi([1, 2], [1, 2, 3])


def test_drift_levels_at_the_thresholds():
    assert [alerts.drift_level(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [
        "stable",
        "stable",
        "warn",
        "warn",
        "breach",
        "breach",
    ]


def _sizes(rows):
    return pd.DataFrame(rows, columns=["cohort_key", "members", "noisy_users"])


def _affinity(shares):
    return pd.DataFrame(
        [(key, cat, value) for key, cats in shares.items() for cat, value in cats.items()],
        columns=["cohort_key", "category", "noisy_sum"],
    )


def test_drift_compares_releases_with_different_coarsening_like_for_like():
    # Yesterday a|x and a|y were merged; today they are released apart. Same people, same
    # tastes: no drift, even though the released keys differ.
    before = _sizes([("a|*", "a|x;a|y", 300.0), ("b|x", "b|x", 300.0)])
    after = _sizes([("a|x", "a|x", 100.0), ("a|y", "a|y", 200.0), ("b|x", "b|x", 300.0)])
    taste = {"c1": 0.5, "c2": 0.5}
    same = alerts.release_drift(
        before,
        after,
        _affinity({"a|*": {k: v * 300 for k, v in taste.items()}, "b|x": {"c1": 90, "c2": 210}}),
        _affinity(
            {
                "a|x": {"c1": 50, "c2": 50},
                "a|y": {"c1": 100, "c2": 100},
                "b|x": {"c1": 90, "c2": 210},
            }
        ),
    )
    assert same == {"cohort_share_psi": 0.0, "affinity_psi": 0.0, "drift_psi": 0.0}
    # Half of b's taste flips from c2 to c1: the affinity PSI moves, cohort shares do not.
    moved = alerts.release_drift(
        before,
        after,
        _affinity({"a|*": {"c1": 150, "c2": 150}, "b|x": {"c1": 90, "c2": 210}}),
        _affinity(
            {
                "a|x": {"c1": 50, "c2": 50},
                "a|y": {"c1": 100, "c2": 100},
                "b|x": {"c1": 210, "c2": 90},
            }
        ),
    )
    assert moved["cohort_share_psi"] == 0.0
    # b is half of today's population, so its PSI counts half.
    assert moved["affinity_psi"] == pytest.approx(0.5 * alerts.psi([90, 210], [210, 90]))
    assert alerts.drift_level(moved["drift_psi"]) == "breach"
    assert alerts.drift_alerts("2026-11-28", moved)[0].level == "critical"
    assert alerts.drift_alerts("2026-11-28", same) == []


def test_budget_checks_and_alerts_at_80_and_95_percent():
    def failed(spent):
        return [name for name, ok, _ in alerts.budget_checks(spent, 10.0) if not ok]

    assert failed(7.99) == []
    assert failed(8.0) == ["budget_below_80_percent"]
    assert failed(9.5) == ["budget_below_80_percent", "budget_below_95_percent"]
    assert alerts.budget_alerts("d", 7.9, 10.0) == []
    assert [a.level for a in alerts.budget_alerts("d", 8.5, 10.0)] == ["warn"]
    assert [a.level for a in alerts.budget_alerts("d", 9.6, 10.0)] == ["critical"]
    blocked = alerts.budget_alerts("d", 1.0, 10.0, blocked="over cap")
    assert [a.subject for a in blocked] == ["release blocked"]


def test_the_horizon_cap_warns_and_alerts_as_the_window_cap_does():
    """A quiet month late in a long year: the window is far from its cap, the horizon is not."""
    horizon = (23.0, 24.0)  # 96% of the horizon cap
    checks = {name: (ok, meta) for name, ok, meta in alerts.budget_checks(1.0, 8.0, horizon)}
    assert [name for name, (ok, _) in checks.items() if not ok] == list(alerts.BUDGET_THRESHOLDS)
    assert checks["budget_below_95_percent"][1]["span"] == "horizon"
    (alert,) = alerts.budget_alerts("2026-11-28", 1.0, 8.0, horizon=horizon)
    assert (alert.level, alert.subject) == ("critical", "95% of horizon cap")
    assert "epsilon 23 of horizon cap 24" in alert.message and "2026-11-28" in alert.message
    # Below both thresholds on both caps: nothing.
    assert alerts.budget_alerts("2026-11-28", 1.0, 8.0, horizon=(10.0, 24.0)) == []
    assert all(ok for _, ok, _ in alerts.budget_checks(1.0, 8.0, (10.0, 24.0)))


def test_density_alerts_name_cohorts_near_k():
    sizes = _sizes([("a", "a", 249.0), ("b", "b", 250.0), ("c", "c", 900.0)])
    assert [a.subject for a in alerts.density_alerts("d", sizes, k=200)] == ["a"]


def test_alerts_are_recorded_posted_once_and_survive_a_failing_webhook(tmp_path, webhook):
    fired = alerts.budget_alerts("2026-11-28", 9.0, 10.0)
    new, errors = alerts.send_alerts(fired, tmp_path, webhook.url)
    assert (len(new), errors) == (1, [])
    content_type, payload = webhook.received[0]
    assert content_type == "application/json"
    assert payload["kind"] == "budget" and payload["level"] == "warn" and payload["value"] == 0.9
    # Re-running an unchanged release does not page twice.
    assert alerts.send_alerts(fired, tmp_path, webhook.url) == ([], [])
    assert len(webhook.received) == 1 and len(alerts.read_alerts(tmp_path)) == 1
    # A webhook that fails or is gone is reported, never raised; the record is still kept.
    webhook.accept = False
    other = alerts.budget_alerts("2026-11-29", 9.0, 10.0)
    new, errors = alerts.send_alerts(other, tmp_path, webhook.url)
    assert len(new) == 1 and "HTTP Error 500" in errors[0]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{free.getsockname()[1]}/"
    new, errors = alerts.send_alerts(
        alerts.budget_alerts("2026-11-30", 9.0, 10.0), tmp_path, closed
    )
    assert len(new) == 1 and "Connection refused" in errors[0]
    assert len(alerts.read_alerts(tmp_path)) == 3


def test_releases_near_and_over_the_cap_alert_the_webhook(small_dir, webhook, monkeypatch):
    monkeypatch.setenv("COHORT_PIPELINE_ALERT_WEBHOOK", webhook.url)
    # One release (PLD epsilon 0.76 at epsilon_per_release 1) against a cap it fills to 85%.
    one = {"cohorts.min_size": 50, "budget.epsilon_per_release": 1.0}
    spent = release_spend(load_policy(write_policy(small_dir, **one)))[0]
    write_policy(small_dir, **one, **{"budget.epsilon_cap": spent / 0.85})
    result = run_release(
        small_dir,
        selection=[
            "catalog",
            "opt_outs",
            "raw_events",
            *BOUNDED,
            "cohort_assignments",
            "privacy_budget_ledger",
        ],
    )
    checks = check_results(result)
    assert checks["budget_within_limit"] is True
    assert checks["budget_below_80_percent"] is False and checks["budget_below_95_percent"] is True
    assert [(p["kind"], p["level"]) for _, p in webhook.received] == [("budget", "warn")]
    # A policy whose cap one release cannot fit: blocked, and the block is alerted.
    write_policy(small_dir, **one, **{"budget.epsilon_cap": 0.5})
    blocked = run_release(small_dir, selection=["privacy_budget_ledger"])
    assert check_results(blocked)["budget_within_limit"] is False
    last = webhook.received[-1][1]
    assert last["level"] == "critical" and last["subject"] == "release blocked"
    assert "budget_within_limit" in last["message"]
    recorded = {(a["kind"], a["subject"]) for a in alerts.read_alerts(small_dir)}
    assert ("budget", "release blocked") in recorded
