"""The measurement registry: every DP measurement of a release, once.

An entry says what is measured (`name`, which is also its `budget.split` share, its draws
table `private.draws_<name>` and its key in `mechanisms(policy)`), the Dagster asset charged
for it in the ledger (`asset`), its noise (`kind` under zCDP composition; see `mechanisms`),
its sensitivities (functions of the public policy), the bounded table it reads and its
release function. The budget split's validation, the mechanisms, the ledger's reservation,
the audits, the reports and the governance dependency lists all derive from REGISTRY, so
adding a measurement is one entry here plus its bounding SQL (privacy/bounding.py).

Neighbouring datasets differ by adding or removing one user (all their window events).

| measurement              | L2 sensitivity                      | L1 sensitivity          |
|--------------------------|-------------------------------------|-------------------------|
| cohort_sizes             | 1 (a user is in one cohort)         | 1                       |
| cohort_metrics           | sqrt(3)/2 (3 values in [-1/2, 1/2]) | 3/2                     |
| cohort_category_affinity | bounds.category_l2_norm             | (not used)              |
| item_popularity          | bounds.item_l2_norm                 | (not used)              |
| experiment_report        | 3 (9 values in [-1,1])              | (not used)              |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

import pandas as pd

from cohort_pipeline.policy import Policy, PolicyError
from cohort_pipeline.privacy.accounting import compose, rho_from_epsilon
from cohort_pipeline.privacy.ledger import Ledger, Measurement
from cohort_pipeline.privacy.mechanisms import Mechanism, gaussian, laplace
from cohort_pipeline.privacy.release import (
    EXPERIMENT_SENSITIVITY,
    METRIC_COLUMNS,
    METRICS_SENSITIVITY,
    budget_cap,
    release_cohort_affinity,
    release_cohort_metrics,
    release_cohort_sizes,
    release_item_popularity,
)
from cohort_pipeline.storage.warehouse import (
    COHORT_CATEGORY_TOTALS,
    COHORT_TOTALS,
    ITEM_TOTALS,
    table_name,
)

Mechanisms = Mapping[str, Mechanism]


@dataclass(frozen=True)
class Inputs:
    """What a release function may read besides its bounded table: the bounded tables of the
    release (by name, without `private.`), the coarsening plan released under the same
    reservation, and the public catalog (item_id, category)."""

    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    plan: pd.DataFrame | None = None
    catalog: pd.DataFrame | None = None

    @property
    def categories(self) -> list[str]:
        return sorted(self.catalog["category"].dropna().unique())


# (its bounded table, inputs, policy, mechanisms of the release) -> the noisy frame; the
# function noises with mechanisms[name] and may read others' noise (e.g. sizes' std).
ReleaseFunction = Callable[[pd.DataFrame, Inputs, Policy, Mechanisms], pd.DataFrame]


@dataclass(frozen=True)
class MeasurementSpec:
    name: str
    asset: str
    kind: str  # under zcdp: "laplace" (pure, on the L1 bound) | "gaussian" (on the L2 bound)
    l2: Callable[[Policy], float]
    l1: Callable[[Policy], float] | None  # basic composition uses Laplace where this is set
    what: str  # one line for reports
    source: str | None = None  # the bounded table it reads (storage/warehouse.py's name)
    release: ReleaseFunction | None = None  # None: released by its asset from other inputs

    def mechanism(self, policy: Policy, share: float, gaussian_shares: float) -> Mechanism:
        """Calibrated for `share` of the release's budget (`gaussian_shares`: the shares of
        every Gaussian measurement under basic composition, which split delta)."""
        epsilon, delta = policy.epsilon_per_release, policy.delta
        if policy.composition == "zcdp":
            rho = rho_from_epsilon(epsilon, delta) * share
            if self.kind == "laplace":
                return laplace(self.l1(policy), math.sqrt(2.0 * rho))
            return gaussian(self.l2(policy), rho, delta)
        if self.l1 is not None:  # basic: Gaussian noise per share would cost far more
            return laplace(self.l1(policy), epsilon * share)
        part_delta = delta * share / gaussian_shares
        return gaussian(self.l2(policy), rho_from_epsilon(epsilon * share, part_delta), part_delta)


def _metrics(totals, inputs, policy, mechs):
    return release_cohort_metrics(
        totals, inputs.plan, policy, mechs["cohort_metrics"], mechs["cohort_sizes"]
    )


REGISTRY: dict[str, MeasurementSpec] = {
    spec.name: spec
    for spec in (
        MeasurementSpec(
            "cohort_sizes",
            "cohort_sizes",
            "laplace",
            l2=lambda p: 1.0,
            l1=lambda p: 1.0,
            what="users per cohort (coarsening plan)",
            source=COHORT_TOTALS,
            release=lambda totals, inputs, policy, mechs: release_cohort_sizes(
                totals, policy, mechs["cohort_sizes"]
            ),
        ),
        MeasurementSpec(
            "cohort_metrics",
            "cohort_metrics",
            "gaussian",
            l2=lambda p: METRICS_SENSITIVITY,
            l1=lambda p: 0.5 * len(METRIC_COLUMNS),
            what="per cohort: mean session duration, conversion rate, sessions per user",
            source=COHORT_TOTALS,
            release=_metrics,
        ),
        MeasurementSpec(
            "cohort_category_affinity",
            "cohort_category_affinity",
            "gaussian",
            l2=lambda p: p.category_l2_norm,
            l1=None,
            what="per cohort x category engagement",
            source=COHORT_CATEGORY_TOTALS,
            release=lambda totals, inputs, policy, mechs: release_cohort_affinity(
                totals, inputs.plan, inputs.categories, policy, mechs["cohort_category_affinity"]
            ),
        ),
        MeasurementSpec(
            "item_popularity",
            "cohort_recommendations",
            "gaussian",
            l2=lambda p: p.item_l2_norm,
            l1=None,
            what="global item popularity, ranked per cohort into cohort_recommendations",
            source=ITEM_TOTALS,
            release=lambda totals, inputs, policy, mechs: release_item_popularity(
                totals, inputs.catalog, policy, mechs["item_popularity"]
            ),
        ),
        MeasurementSpec(
            "experiment_report",
            "experiment_report",
            "gaussian",
            l2=lambda p: EXPERIMENT_SENSITIVITY,
            l1=None,
            what="experiment readouts of the ranking released EVAL_DAYS earlier",
        ),
    )
}


def shares(policy: Policy, complete: bool = True) -> dict[str, float]:
    """`budget.split` in registry order; PolicyError naming the key at fault when it names an
    unknown measurement or (if `complete`) lacks one. policy.py checks the shares' values."""
    for key in policy.split:
        if key not in REGISTRY:
            raise PolicyError(
                f"unknown policy key `budget.split.{key}` (measurements: {', '.join(REGISTRY)})"
            )
    missing = [name for name in REGISTRY if name not in policy.split]
    if complete and missing:
        raise PolicyError(
            f"policy key `budget.split` must give a share for each of {', '.join(REGISTRY)};"
            f" missing {', '.join(missing)}"
        )
    return {name: policy.split[name] for name in REGISTRY if name in policy.split}


def mechanisms(policy: Policy) -> dict[str, Mechanism]:
    """The calibrated mechanism of each measurement `budget.split` gives a share (a policy
    may leave some out, e.g. in benchmarks; a reservation needs them all); together they cost
    exactly `epsilon_per_release` at `delta` under the policy's composition:

    - `zcdp`: the release's epsilon becomes a zCDP budget rho, split in shares of rho;
      each measurement gets the noise of its `kind`.
    - `basic`: epsilons and deltas add up, so epsilon (and delta) are split instead;
      measurements with an L1 bound get pure-epsilon Laplace noise, the others Gaussian
      noise at their (epsilon, delta) share."""
    split = shares(policy, complete=False)
    gaussian_shares = sum(s for name, s in split.items() if REGISTRY[name].l1 is None)
    return {
        name: REGISTRY[name].mechanism(policy, share, gaussian_shares)
        for name, share in split.items()
    }


def audited() -> list[str]:
    """Measurements released by a function of a bounded table: the end-to-end audit's."""
    return [s.name for s in REGISTRY.values() if s.release is not None and s.source]


def release_measurement(
    name: str, inputs: Inputs, policy: Policy, mechs: Mechanisms | None = None
) -> pd.DataFrame:
    """Measurement `name`'s release function on its bounded table in `inputs`."""
    spec = REGISTRY[name]
    if spec.release is None or spec.source is None:
        raise ValueError(f"measurement {name} is released by its asset, not from a table")
    totals = inputs.tables[table_name(spec.source)]
    return spec.release(totals, inputs, policy, mechs or mechanisms(policy))


def measurement_of(ledger_asset: str) -> MeasurementSpec | None:
    """The measurement a ledger row (charged to an asset) paid for."""
    return next((s for s in REGISTRY.values() if s.asset == ledger_asset), None)


def planned_measurements(policy: Policy) -> list[Measurement]:
    """The ledger rows one release reserves, before any noise is drawn: one per registered
    measurement, charged to its asset."""
    shares(policy)
    return [
        Measurement(REGISTRY[name].asset, m.name, m.spend, m.sensitivity, m.scale)
        for name, m in mechanisms(policy).items()
    ]


YEAR_DAYS = 365


def release_spend(policy: Policy, releases: int = 1) -> tuple[float, float]:
    """The composed (epsilon, delta) of `releases` releases of this policy, as the ledger's
    accountant composes them."""
    charges = [m.charge for m in planned_measurements(policy)] * releases
    return compose(charges, policy.composition, policy.delta)


def yearly_releases(policy: Policy) -> int:
    """The releases that read a year of a user's daily activity: every release whose window
    overlaps it, i.e. the release dates among YEAR_DAYS + lookback_days - 1 consecutive days,
    one in `release.every_days` (rounded up: the worst alignment)."""
    return math.ceil((YEAR_DAYS + policy.lookback_days - 1) / policy.every_days)


def yearly_spend(policy: Policy) -> tuple[float, float]:
    """Projected before any spend: the loss of a user active every day of a year if this
    policy releases on its schedule (`release.every_days`)."""
    return release_spend(policy, yearly_releases(policy))


def budget_summary(ledger: Ledger, policy: Policy, as_of=None) -> dict:
    """Ledger.summary under the policy's caps (the enforced figures) with the yearly
    projection: the one source of the budget figures the CLI, the ledger asset, the audit
    report and the scorecard show."""
    summary = ledger.summary(budget_cap(policy), as_of=as_of)
    summary["yearly_epsilon"], summary["yearly_delta"] = yearly_spend(policy)
    return summary


def cadence_problem(policy: Policy, day: date) -> str | None:
    """Why `day` is no release date under `release.every_days`, or None. The yearly
    projection counts only the schedule's dates, so a new reservation off it is refused
    (nothing spent); a date already reserved stays final and is reused."""
    if policy.is_release_day(day):
        return None
    ahead = -(day - policy.partitions_start).days % policy.every_days
    return (
        f"{day} is not a release date: release.every_days = {policy.every_days} releases every "
        f"{policy.every_days} days from {policy.partitions_start} (next: "
        f"{day + timedelta(days=ahead)}); the yearly figure assumes that schedule"
    )


def budget_problem(policy: Policy) -> str | None:
    """Why the budget can never admit a release, or None.

    Not a load-time error: the policy is valid, and the blocking check `budget_within_limit`
    reports this reason (nothing is spent), so the refusal is visible where budgets are
    watched. One release alone is measured as the ledger composes it."""
    epsilon, delta = release_spend(policy)
    for key, cap, value, what in (
        ("budget.epsilon_cap", policy.epsilon_cap, epsilon, "epsilon"),
        ("budget.epsilon_horizon_cap", policy.epsilon_horizon_cap, epsilon, "epsilon"),
        ("budget.delta_cap", policy.delta_cap, delta, "delta"),
    ):
        if cap < value * (1 - 1e-9):
            return (
                f"{key} ({cap:g}) is below one release's {what} ({value:.6g} under"
                f" {policy.composition} composition of budget.epsilon_per_release ="
                f" {policy.epsilon_per_release:g}): no release can ever be admitted;"
                " nothing was spent"
            )
    return None
