"""Alerts on released values: budget use, cohort density near k, drift between releases.

Pure (no Dagster). Everything here reads DP releases and public policy values only, so an
alert, its record and its webhook payload are releases too and hold nothing private.

Alerts are appended to `alerts.jsonl` in the data folder (a file, not the warehouse, so a
sensor or the CLI never contends for DuckDB's write lock) and POSTed as JSON to
$COHORT_PIPELINE_ALERT_WEBHOOK when set. An alert already recorded is not sent again, so
re-running an unchanged release does not page anyone twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cohort_pipeline.settings import DataFolder

# Shares of the window cap at which the budget WARN checks fail and an alert fires, measured on
# the enforced figure: the worst cap window containing the release date (Ledger.summary).
BUDGET_THRESHOLDS = {"budget_below_80_percent": 0.80, "budget_below_95_percent": 0.95}
# Population stability index: < 0.1 stable, 0.1-0.25 worth a look, >= 0.25 a real shift.
PSI_WARN, PSI_BREACH = 0.10, 0.25
# A released cohort whose noisy size is below k * (1 + margin) may be coarsened next time.
DENSITY_MARGIN = 0.25
# Shares below 1% are floored before the log in PSI: DP noise on a near-empty bin (clamped
# to 0) must not read as drift, nor an empty bin as infinite.
PSI_FLOOR = 0.01


@dataclass(frozen=True)
class Alert:
    kind: str  # "budget" | "density" | "drift"
    level: str  # "warn" | "critical"
    release_date: str
    subject: str  # what it is about: a threshold, a cohort key, "release"
    message: str
    value: float
    threshold: float

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.level}:{self.release_date}:{self.subject}"


# -- budget -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetUse:
    """An enforced spend against its cap: the worst window containing a release, or the worst
    horizon span containing it (a user active every day of it)."""

    span: str  # "window" | "horizon"
    spent: float
    cap: float

    @property
    def used(self) -> float:
        return self.spent / self.cap

    def words(self, release_date: str) -> str:
        where = (
            "the worst window"
            if self.span == "window"
            else "the worst horizon span (someone active every day of it)"
        )
        return f"epsilon {self.spent:.4g} of {self.span} cap {self.cap:g} in {where} containing {release_date}"


def worst_use(
    epsilon_spent: float, epsilon_cap: float, horizon: tuple[float, float] | None = None
) -> BudgetUse:
    """The more used of the window cap and (given as (spent, cap)) the horizon cap."""
    uses = [BudgetUse("window", epsilon_spent, epsilon_cap)]
    if horizon is not None:
        uses.append(BudgetUse("horizon", *horizon))
    return max(uses, key=lambda use: use.used)


def budget_checks(
    epsilon_spent: float, epsilon_cap: float, horizon: tuple[float, float] | None = None
) -> list[tuple[str, bool, dict]]:
    """(check name, passed, metadata) per budget threshold: passes while the enforced spend
    (worst window, and worst horizon span, containing the release) stays below that share of
    its cap."""
    use = worst_use(epsilon_spent, epsilon_cap, horizon)
    return [
        (
            name,
            use.used < share,
            {
                "budget_used": use.used,
                "threshold": share,
                "span": use.span,
                "epsilon_spent": use.spent,
                "epsilon_cap": use.cap,
            },
        )
        for name, share in BUDGET_THRESHOLDS.items()
    ]


def budget_alerts(
    release_date: str,
    epsilon_spent: float,
    epsilon_cap: float,
    blocked: str | None = None,
    horizon: tuple[float, float] | None = None,
) -> list[Alert]:
    """The highest budget threshold crossed by the more used cap (one alert), plus one when a
    release was refused."""
    use = worst_use(epsilon_spent, epsilon_cap, horizon)
    alerts = []
    crossed = [share for share in BUDGET_THRESHOLDS.values() if use.used >= share]
    if crossed:
        share = max(crossed)
        level = "critical" if share == max(BUDGET_THRESHOLDS.values()) else "warn"
        alerts.append(
            Alert(
                "budget",
                level,
                release_date,
                f"{share:.0%} of {use.span} cap",
                f"privacy budget {use.used:.0%} used: {use.words(release_date)}",
                use.used,
                share,
            )
        )
    if blocked:
        alerts.append(
            Alert(
                "budget",
                "critical",
                release_date,
                "release blocked",
                f"release {release_date} blocked by budget_within_limit: {blocked}",
                use.used,
                1.0,
            )
        )
    return alerts


# -- cohort density ---------------------------------------------------------------------------


def cohorts_near_k(sizes: pd.DataFrame, k: int, margin: float = DENSITY_MARGIN) -> pd.DataFrame:
    """Released cohorts (release.cohort_sizes rows) whose noisy size is below k * (1 + margin)."""
    return sizes[sizes["noisy_users"] < k * (1 + margin)]


def density_alerts(release_date: str, sizes: pd.DataFrame, k: int) -> list[Alert]:
    near = cohorts_near_k(sizes, k)
    return [
        Alert(
            "density",
            "warn",
            release_date,
            row.cohort_key,
            f"cohort {row.cohort_key} has noisy size {row.noisy_users:.0f}, near k = {k}: it may "
            "be coarsened in the next release",
            float(row.noisy_users),
            float(k),
        )
        for row in near.itertuples()
    ]


# -- drift ------------------------------------------------------------------------------------


def psi(expected, actual, floor: float = PSI_FLOOR) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of two distributions over the same
    bins. Inputs are non-negative weights (normalised here); bins are floored at `floor`."""
    e, a = (np.clip(np.asarray(x, dtype=float), 0.0, None) for x in (expected, actual))
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs two non-empty distributions over the same bins")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_level(value: float) -> str:
    return "breach" if value >= PSI_BREACH else "warn" if value >= PSI_WARN else "stable"


def common_groups(previous: pd.DataFrame, current: pd.DataFrame) -> dict[str, int]:
    """Full cohort key -> group id, the finest grouping both releases' coarsening plans agree
    on: released cohorts that share a member fall in one group, so each group is a union of
    released cohorts in both releases and their noisy sizes compare like for like."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for plan in (previous, current):
        for members in plan["members"]:
            first, *rest = members.split(";")
            find(first)
            for other in rest:
                parent[find(other)] = find(first)
    roots = sorted({find(m) for m in parent})
    return {m: roots.index(find(m)) for m in parent}


def _by_group(frame: pd.DataFrame, groups: dict[str, int], value: str, by=()) -> pd.Series:
    group = frame["members"].str.split(";").str[0].map(groups)
    return frame.assign(group=group).groupby(["group", *by])[value].sum().clip(lower=0.0)


def _profiles(
    sizes: pd.DataFrame, affinity: pd.DataFrame, groups: dict[str, int], shrinkage: float
) -> pd.DataFrame:
    """Category shares per group, shrunk toward the release's global profile with `shrinkage`
    pseudo-users (as ranking does): a small cohort's noisy profile is mostly noise."""
    with_members = affinity.merge(sizes[["cohort_key", "members"]], on="cohort_key")
    sums = _by_group(with_members, groups, "noisy_sum", ["category"]).unstack(fill_value=0.0)
    overall = sums.sum() / sums.to_numpy().sum()
    shares = sums.div(sums.sum(axis=1).where(lambda t: t > 0, 1.0), axis=0)
    users = _by_group(sizes, groups, "noisy_users").reindex(sums.index, fill_value=0.0)
    lam = (shrinkage / (users + shrinkage)).fillna(1.0) if shrinkage > 0 else users * 0.0
    return shares.mul(1 - lam, axis=0) + np.outer(lam, overall)


def release_drift(
    previous_sizes: pd.DataFrame,
    current_sizes: pd.DataFrame,
    previous_affinity: pd.DataFrame,
    current_affinity: pd.DataFrame,
    shrinkage: float = 0.0,
) -> dict[str, float]:
    """PSI between two consecutive releases of cohort shares (noisy_users) and of category
    affinity profiles (mean PSI over cohorts, weighted by current cohort share).

    Inputs are release.cohort_sizes and release.cohort_category_affinity rows of one date
    each; `shrinkage` is ranking.shrinkage. Post-processing of DP values only."""
    groups = common_groups(previous_sizes, current_sizes)
    before = _by_group(previous_sizes, groups, "noisy_users")
    after = _by_group(current_sizes, groups, "noisy_users").reindex(before.index, fill_value=0.0)
    old = _profiles(previous_sizes, previous_affinity, groups, shrinkage)
    new = _profiles(current_sizes, current_affinity, groups, shrinkage)
    new = new.reindex(index=old.index, columns=old.columns, fill_value=0.0)
    per_group = [psi(old.loc[g], new.loc[g]) if new.loc[g].sum() > 0 else 0.0 for g in old.index]
    weights = after.reindex(old.index, fill_value=0.0)
    affinity = float(np.average(per_group, weights=weights)) if weights.sum() > 0 else 0.0
    share = psi(before, after)
    return {"cohort_share_psi": share, "affinity_psi": affinity, "drift_psi": max(share, affinity)}


def drift_alerts(release_date: str, drift: dict[str, float]) -> list[Alert]:
    level = drift_level(drift["drift_psi"])
    if level == "stable":
        return []
    return [
        Alert(
            "drift",
            "critical" if level == "breach" else "warn",
            release_date,
            "cohort shares and affinities",
            f"release {release_date} drifted from the previous release: PSI of cohort shares "
            f"{drift['cohort_share_psi']:.3f}, of category affinities "
            f"{drift['affinity_psi']:.3f} (warn {PSI_WARN}, breach {PSI_BREACH})",
            drift["drift_psi"],
            PSI_BREACH if level == "breach" else PSI_WARN,
        )
    ]


# -- delivery ---------------------------------------------------------------------------------


def post_webhook(url: str, payload: dict, timeout_s: float = 5.0) -> None:
    """POST `payload` as JSON; raises on a non-2xx answer or a connection error."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "cohort-pipeline-alerts"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()


def read_alerts(data_dir: Path | str) -> list[dict]:
    path = DataFolder(Path(data_dir)).alerts
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def send_alerts(
    alerts: Iterable[Alert], data_dir: Path | str, webhook: str = ""
) -> tuple[list[Alert], list[str]]:
    """Record alerts not recorded before and POST each new one to `webhook` (if given:
    $COHORT_PIPELINE_ALERT_WEBHOOK in a run). Returns (new alerts, delivery errors): a webhook
    that is down must not fail a release, but the caller should log it."""
    path = DataFolder(Path(data_dir)).alerts
    path.parent.mkdir(parents=True, exist_ok=True)
    new: list[Alert] = []
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # concurrent runs append whole lines, no duplicates
        handle.seek(0)
        seen = {json.loads(line)["key"] for line in handle if line.strip()}
        for alert in alerts:
            if alert.key in seen:
                continue
            seen.add(alert.key)
            new.append(alert)
            record = {
                **asdict(alert),
                "key": alert.key,
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    errors = []
    for alert in new if webhook else []:
        try:
            post_webhook(webhook, {**asdict(alert), "key": alert.key, "source": "cohort_pipeline"})
        except Exception as exc:  # noqa: BLE001 - any delivery failure is reported, not raised
            errors.append(f"webhook {webhook} failed for alert {alert.key}: {exc}")
    return new, errors
