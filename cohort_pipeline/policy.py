"""The release policy: schema, validation, hash, and the public cohort key set.

Everything in the policy is public. Validation runs before any data is read and names the
offending key (e.g. `budget.epsilon_cap`), so a bad or dangerous policy never starts a release.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

from cohort_pipeline.privacy.accounting import COMPOSITIONS
from cohort_pipeline.schema import DEVICE_TYPES, EVENT_TYPES

# The measurements of one release, in graph order; `budget.split` must name exactly these.
MEASURED_ASSETS = (
    "cohort_sizes",
    "cohort_metrics",
    "cohort_category_affinity",
    "cohort_recommendations",
    "experiment_report",
)
ALL = "*"  # the label of a dimension dropped by coarsening
MIN_SAFE_K = 10  # below this a "cohort" is close to an individual
# Above this no cohort of any product is that large (a billion people): a typo, not a policy.
MAX_K = 1_000_000_000
MAX_EPSILON_PER_RELEASE = 10  # beyond this a release protects no one


class PolicyError(ValueError):
    """A policy file that is invalid or unsafe; the message names the key at fault."""


@dataclass(frozen=True)
class Dimension:
    name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    raw: dict
    hash: str
    path: str
    partitions_start: date
    lookback_days: int
    outcome_days: int
    engagement_edges: tuple[int, ...]
    engagement_labels: tuple[str, ...]
    recency_edges: tuple[int, ...]
    recency_labels: tuple[str, ...]  # bands in edge order, then the none-label last
    device_groups: dict[str, tuple[str, ...]]
    coarsening_order: tuple[str, ...]
    min_size: int
    max_sessions: int
    session_duration_s: tuple[float, float]
    category_weights: dict[str, float]
    category_l2_norm: float
    item_l2_norm: float
    epsilon_per_release: float
    delta: float
    split: dict[str, float]
    composition: str
    epsilon_cap: float
    window_days: int
    horizon_days: int
    epsilon_horizon_cap: float
    delta_cap: float
    shrinkage: float
    max_change: float
    fairness_floor: float
    top_n: int

    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        return (
            Dimension("engagement", self.engagement_labels),
            Dimension("recency", self.recency_labels),
            Dimension("device", tuple(self.device_groups)),
        )

    def cohort_keys(self) -> list[str]:
        """The public key set: every combination of bands, known before any data is read."""
        return [
            cohort_key(combo) for combo in itertools.product(*(d.labels for d in self.dimensions))
        ]


def cohort_key(labels) -> str:
    return "|".join(labels)


def _get(raw: dict, dotted: str):
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PolicyError(f"policy key `{dotted}` is missing")
        node = node[part]
    return node


def _number(raw, dotted, *, lo=None, hi=None, lo_open=False, integer=False):
    value = _get(raw, dotted)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise PolicyError(
            f"policy key `{dotted}` must be a finite {'integer' if integer else 'number'},"
            f" got {value!r}"
        )
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise PolicyError(
            f"policy key `{dotted}` must be {'>' if lo_open else '>='} {lo}, got {value}"
        )
    if hi is not None and value > hi:
        raise PolicyError(f"policy key `{dotted}` must be <= {hi}, got {value}")
    return value


def _edges(raw, dotted, n_labels):
    edges = _get(raw, dotted)
    if not isinstance(edges, list) or not all(
        isinstance(e, int) and not isinstance(e, bool) for e in edges
    ):
        raise PolicyError(f"policy key `{dotted}` must be a list of integers, got {edges!r}")
    if any(b <= a for a, b in itertools.pairwise(edges)) or (edges and edges[0] <= 0):
        raise PolicyError(
            f"policy key `{dotted}` must be positive and strictly increasing, got {edges}"
        )
    if len(edges) + 1 != n_labels:
        raise PolicyError(
            f"policy key `{dotted}` has {len(edges)} edges, so needs {len(edges) + 1} labels,"
            f" got {n_labels}"
        )
    return tuple(edges)


def _labels(raw, dotted):
    labels = _get(raw, dotted)
    if not isinstance(labels, list) or not all(
        isinstance(x, str) and x and x != ALL and "|" not in x for x in labels
    ):
        raise PolicyError(
            f"policy key `{dotted}` must be a list of non-empty names without '|' or '*'"
        )
    if len(set(labels)) != len(labels):
        raise PolicyError(f"policy key `{dotted}` has duplicate labels: {labels}")
    return tuple(labels)


_KNOWN = {
    "release": {"partitions_start", "lookback_days", "outcome_days"},
    "cohorts": {"dimensions", "coarsening_order", "min_size"},
    "bounds": {
        "max_sessions",
        "session_duration_s",
        "category_weights",
        "category_l2_norm",
        "item_l2_norm",
    },
    "budget": {
        "epsilon_per_release",
        "delta",
        "split",
        "composition",
        "epsilon_cap",
        "window_days",
        "horizon_days",
        "epsilon_horizon_cap",
        "delta_cap",
    },
    "ranking": {"shrinkage", "max_change", "fairness_floor", "top_n"},
}


_DIMENSION_KEYS = {
    "engagement": {"edges", "labels"},
    "recency": {"edges", "labels", "none_label"},
    "device": {"groups"},
}


def _reject_unknown(raw: dict) -> None:
    # A typo in a privacy key must not silently fall back to a default.
    for key in raw:
        if key not in _KNOWN:
            raise PolicyError(f"unknown policy key `{key}` (known: {', '.join(_KNOWN)})")
        if not isinstance(raw[key], dict):
            raise PolicyError(f"policy key `{key}` must be a mapping")
        for sub in raw[key]:
            if sub not in _KNOWN[key]:
                raise PolicyError(
                    f"unknown policy key `{key}.{sub}` (known: {', '.join(sorted(_KNOWN[key]))})"
                )


def parse_policy(raw: dict, path: str = "<memory>", partitions_start: date | None = None) -> Policy:
    """The validated policy; `partitions_start` (COHORT_PIPELINE_PARTITIONS_START) replaces
    release.partitions_start when given."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: the policy must be a YAML mapping")
    _reject_unknown(raw)
    if partitions_start is None:
        start_raw = _get(raw, "release.partitions_start")
        try:
            partitions_start = date.fromisoformat(str(start_raw))
        except ValueError as exc:
            raise PolicyError(
                f"policy key `release.partitions_start` must be YYYY-MM-DD, got {start_raw!r}"
            ) from exc
    lookback = _number(raw, "release.lookback_days", lo=2, hi=366, integer=True)
    outcome = _number(raw, "release.outcome_days", lo=1, integer=True)
    if outcome >= lookback:
        raise PolicyError(
            f"policy key `release.outcome_days` ({outcome}) must be below"
            f" `release.lookback_days` ({lookback})"
        )

    eng_labels = _labels(raw, "cohorts.dimensions.engagement.labels")
    eng_edges = _edges(raw, "cohorts.dimensions.engagement.edges", len(eng_labels))
    rec_labels = _labels(raw, "cohorts.dimensions.recency.labels")
    rec_edges = _edges(raw, "cohorts.dimensions.recency.edges", len(rec_labels))
    none_label = _get(raw, "cohorts.dimensions.recency.none_label")
    if (
        not isinstance(none_label, str)
        or none_label in rec_labels
        or not none_label
        or "|" in none_label
    ):
        raise PolicyError(
            "policy key `cohorts.dimensions.recency.none_label` must be a new, non-empty name"
        )
    groups = _get(raw, "cohorts.dimensions.device.groups")
    if not isinstance(groups, dict) or not groups:
        raise PolicyError(
            "policy key `cohorts.dimensions.device.groups` must map group names to device types"
        )
    _labels({"g": list(groups)}, "g")
    seen = [d for members in groups.values() for d in (members or [])]
    if sorted(seen) != sorted(DEVICE_TYPES):
        raise PolicyError(
            "policy key `cohorts.dimensions.device.groups` must place each of"
            f" {', '.join(DEVICE_TYPES)} in exactly one group, got {seen}"
        )
    dims = _get(raw, "cohorts.dimensions")
    extra_dims = set(dims) - set(_DIMENSION_KEYS)
    if extra_dims:
        raise PolicyError(f"unknown policy key `cohorts.dimensions.{sorted(extra_dims)[0]}`")
    for dim, known in _DIMENSION_KEYS.items():
        extra = set(dims[dim]) - known
        if extra:
            raise PolicyError(
                f"unknown policy key `cohorts.dimensions.{dim}.{sorted(extra)[0]}`"
                f" (known: {', '.join(sorted(known))})"
            )
    order = _get(raw, "cohorts.coarsening_order")
    if not isinstance(order, list) or sorted(order) != ["device", "engagement", "recency"]:
        raise PolicyError(
            "policy key `cohorts.coarsening_order` must list engagement, recency and device"
            f" once each, got {order!r}"
        )
    min_size = _number(raw, "cohorts.min_size", lo=MIN_SAFE_K, hi=MAX_K, integer=True)

    dur = _get(raw, "bounds.session_duration_s")
    if not (
        isinstance(dur, list)
        and len(dur) == 2
        and all(isinstance(x, (int, float)) for x in dur)
        and 0 <= dur[0] < dur[1]
    ):
        raise PolicyError(
            "policy key `bounds.session_duration_s` must be [low, high] with 0 <= low < high,"
            f" got {dur!r}"
        )
    weights = _get(raw, "bounds.category_weights")
    if not isinstance(weights, dict) or set(weights) != set(EVENT_TYPES):
        raise PolicyError(
            "policy key `bounds.category_weights` must give a weight for each of"
            f" {', '.join(EVENT_TYPES)}"
        )
    for name in EVENT_TYPES:
        _number(raw, f"bounds.category_weights.{name}", lo=0)

    split = _get(raw, "budget.split")
    if not isinstance(split, dict) or set(split) != set(MEASURED_ASSETS):
        raise PolicyError(
            f"policy key `budget.split` must give a share for each of {', '.join(MEASURED_ASSETS)}"
        )
    for name in MEASURED_ASSETS:
        _number(raw, f"budget.split.{name}", lo=0, lo_open=True)
    if abs(sum(split.values()) - 1.0) > 1e-9:
        raise PolicyError(
            f"policy key `budget.split` shares must sum to 1, got {sum(split.values())}"
        )
    composition = _get(raw, "budget.composition")
    if composition not in COMPOSITIONS:
        raise PolicyError(
            f"policy key `budget.composition` must be one of {COMPOSITIONS}, got {composition!r}"
        )
    eps = _number(raw, "budget.epsilon_per_release", lo=0, lo_open=True, hi=MAX_EPSILON_PER_RELEASE)
    delta = _number(raw, "budget.delta", lo=0, lo_open=True, hi=1e-4)
    cap = _number(raw, "budget.epsilon_cap", lo=0, lo_open=True)
    delta_cap = _number(raw, "budget.delta_cap", lo=0, lo_open=True, hi=1e-4)
    if delta_cap < delta:
        raise PolicyError(
            f"policy key `budget.delta_cap` ({delta_cap:g}) must be at least `budget.delta`"
            f" ({delta:g}): one release alone composes to delta"
        )

    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return Policy(
        raw=raw,
        hash=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        path=path,
        partitions_start=partitions_start,
        lookback_days=lookback,
        outcome_days=outcome,
        engagement_edges=eng_edges,
        engagement_labels=eng_labels,
        recency_edges=rec_edges,
        recency_labels=(*rec_labels, none_label),
        device_groups={g: tuple(m) for g, m in groups.items()},
        coarsening_order=tuple(order),
        min_size=min_size,
        max_sessions=_number(raw, "bounds.max_sessions", lo=1, integer=True),
        session_duration_s=(float(dur[0]), float(dur[1])),
        category_weights={k: float(v) for k, v in weights.items()},
        category_l2_norm=_number(raw, "bounds.category_l2_norm", lo=0, lo_open=True),
        item_l2_norm=_number(raw, "bounds.item_l2_norm", lo=0, lo_open=True),
        epsilon_per_release=eps,
        delta=delta,
        split={k: float(v) for k, v in split.items()},
        composition=composition,
        epsilon_cap=cap,
        window_days=_number(raw, "budget.window_days", lo=1, integer=True),
        horizon_days=_number(raw, "budget.horizon_days", lo=1, hi=3660, integer=True),
        epsilon_horizon_cap=_number(raw, "budget.epsilon_horizon_cap", lo=0, lo_open=True),
        delta_cap=delta_cap,
        shrinkage=_number(raw, "ranking.shrinkage", lo=0),
        max_change=_number(raw, "ranking.max_change", lo=0, lo_open=True, hi=1),
        fairness_floor=_number(raw, "ranking.fairness_floor", lo=0, hi=1),
        top_n=_number(raw, "ranking.top_n", lo=1, integer=True),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently; a policy a reviewer reads one way and
    the pipeline another is unsafe, so a repeated key is an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise PolicyError(
                    f"policy key `{key}` appears twice (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def budget_problem(policy: Policy) -> str | None:
    """Why the budget can never admit a release, or None.

    Not a load-time error: the policy is valid, and the blocking check `budget_within_limit`
    reports this reason (nothing is spent), so the refusal is visible where budgets are
    watched. One release alone is measured as the ledger composes it."""
    from cohort_pipeline.privacy.release import release_spend  # release.py imports this module

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


def load_policy(path: str | Path, partitions_start: date | None = None) -> Policy:
    """The policy file at `path`, validated (see parse_policy)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror}") from exc
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    try:
        return parse_policy(raw, str(path), partitions_start)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None
