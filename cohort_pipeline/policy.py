"""The release policy: schema, validation, hash, and the public cohort key set.

Everything in the policy is public. Validation runs before any data is read and names the
offending key (e.g. `budget.epsilon_cap`), so a bad or dangerous policy never starts a release.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

from cohort_pipeline.schema import DEVICE_TYPES, EVENT_TYPES

# How many releases compose (privacy/accounting.py implements both).
COMPOSITIONS = ("zcdp", "basic")
# Keys of earlier policy files and their names now: a policy using one is refused, naming both.
RENAMED = {"budget.split.cohort_recommendations": "budget.split.item_popularity"}
ALL = "*"  # the label of a dimension dropped by coarsening
MIN_SAFE_K = 10  # below this a "cohort" is close to an individual
# Above this no cohort of any product is that large (a billion people): a typo, not a policy.
MAX_K = 1_000_000_000
MAX_EPSILON_PER_RELEASE = 10  # beyond this a release protects no one


class PolicyError(ValueError):
    """A policy file that is invalid or unsafe; the message names the key at fault."""


# What a cohort dimension reads. A banded dimension cuts a per-user quantity (computed by
# privacy/bounding.py) at its edges; a quantity a user can lack (True here) also needs a
# `none_label`. A grouped dimension maps an event column (the value of most of a user's
# sessions) to groups that place every value the column can hold.
QUANTITIES = {"session_count": False, "days_since_purchase": True, "mean_duration_s": False}
GROUPED_COLUMNS = {"device_type": DEVICE_TYPES}
# Columns beside the dimensions' in private.user_profiles and release.cohort_sizes.
_TAKEN_NAMES = {
    "user_id", "cohort_key", "sessions", "mean_duration_s", "converted", "release_date",
    "members", "noisy_users", "noise_scale", "accuracy_95", "policy_hash", "reservation_id",
    "ledger_seq",
}  # fmt: skip


@dataclass(frozen=True)
class Dimension:
    """One part of the cohort key: `labels` in key order. Banded: `quantity` cut at `edges`
    (label i below edges[i], the last from the last edge up), then `none_label` for a user
    without the quantity. Grouped: `column`'s value mapped to the group holding it."""

    name: str
    labels: tuple[str, ...]
    quantity: str | None = None
    edges: tuple[int, ...] = ()
    none_label: str | None = None
    column: str | None = None
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def source(self) -> str:
        """The quantity or event column the dimension reads."""
        return self.quantity or self.column


@dataclass(frozen=True)
class Policy:
    raw: dict
    hash: str
    path: str
    partitions_start: date
    lookback_days: int
    outcome_days: int
    dimensions: tuple[Dimension, ...]  # in key order
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
    # release.every_days (optional, default 1): a release is drawn every this many days
    # from partitions_start; benchmarks/year.py measures the cadence (docs/year.md).
    every_days: int = 1

    def is_release_day(self, day: date) -> bool:
        """True when `day` is a release date under `release.every_days` (counted from
        partitions_start; every day at the default of 1)."""
        return (day - self.partitions_start).days % self.every_days == 0

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
    return _names(_get(raw, dotted), dotted)


def _names(labels, dotted):
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
    "release": {"partitions_start", "lookback_days", "outcome_days", "every_days"},
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


_BANDED_KEYS = {"quantity", "edges", "labels", "none_label"}
_GROUPED_KEYS = {"column", "groups"}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _dimension(raw: dict, name: str) -> Dimension:
    key = f"cohorts.dimensions.{name}"
    spec = _get(raw, key)
    if not isinstance(spec, dict) or ("quantity" in spec) == ("column" in spec):
        raise PolicyError(
            f"policy key `{key}` must give either a `quantity` (with edges and labels) or a"
            " `column` (with groups)"
        )
    known = _BANDED_KEYS if "quantity" in spec else _GROUPED_KEYS
    extra = set(spec) - known
    if extra:
        raise PolicyError(
            f"unknown policy key `{key}.{sorted(extra)[0]}` (known: {', '.join(sorted(known))})"
        )
    if "column" in spec:
        column = spec["column"]
        if not isinstance(column, str) or column not in GROUPED_COLUMNS:
            raise PolicyError(
                f"policy key `{key}.column` must be one of {', '.join(GROUPED_COLUMNS)},"
                f" got {column!r}"
            )
        groups = _get(raw, f"{key}.groups")
        if not isinstance(groups, dict) or not all(isinstance(m, list) for m in groups.values()):
            raise PolicyError(
                f"policy key `{key}.groups` must map group names to lists of {column} values"
            )
        labels = _names(list(groups), f"{key}.groups")
        seen = [v for members in groups.values() for v in members]
        if sorted(seen) != sorted(GROUPED_COLUMNS[column]):
            raise PolicyError(
                f"policy key `{key}.groups` must place each of"
                f" {', '.join(GROUPED_COLUMNS[column])} in exactly one group, got {seen}"
            )
        groups = tuple((g, tuple(m)) for g, m in groups.items())
        return Dimension(name, labels, column=column, groups=groups)
    quantity = spec["quantity"]
    if not isinstance(quantity, str) or quantity not in QUANTITIES:
        raise PolicyError(
            f"policy key `{key}.quantity` must be one of {', '.join(QUANTITIES)}, got {quantity!r}"
        )
    labels = _labels(raw, f"{key}.labels")
    edges = _edges(raw, f"{key}.edges", len(labels))
    none_label = spec.get("none_label")
    if QUANTITIES[quantity] != (none_label is not None):
        raise PolicyError(
            f"policy key `{key}.none_label` is "
            + (
                "required: a user can lack"
                if QUANTITIES[quantity]
                else "not allowed: every user has"
            )
            + f" {quantity}"
        )
    if none_label is not None:
        labels = _names([*labels, none_label], f"{key}.none_label")
    return Dimension(name, labels, quantity=quantity, edges=edges, none_label=none_label)


def _dimensions(raw: dict) -> tuple[Dimension, ...]:
    dims = _get(raw, "cohorts.dimensions")
    if not isinstance(dims, dict) or not dims:
        raise PolicyError("policy key `cohorts.dimensions` must map dimension names to dimensions")
    for name in dims:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _TAKEN_NAMES:
            raise PolicyError(
                f"policy key `cohorts.dimensions.{name}`: a dimension name is lower case letters,"
                f" digits and _, and none of {', '.join(sorted(_TAKEN_NAMES))}"
            )
    return tuple(_dimension(raw, name) for name in dims)


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
    # At most one window apart, so that every day of events is read by some release.
    every = (
        _number(raw, "release.every_days", lo=1, hi=lookback, integer=True)
        if "every_days" in raw.get("release", {})
        else 1
    )
    if outcome >= lookback:
        raise PolicyError(
            f"policy key `release.outcome_days` ({outcome}) must be below"
            f" `release.lookback_days` ({lookback})"
        )

    dimensions = _dimensions(raw)
    names = [d.name for d in dimensions]
    order = _get(raw, "cohorts.coarsening_order")
    if not isinstance(order, list) or sorted(order) != sorted(names):
        raise PolicyError(
            f"policy key `cohorts.coarsening_order` must list {', '.join(names)} once each,"
            f" got {order!r}"
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

    # Which measurements it names is checked against their registry, which imports this
    # module (privacy/measurements.shares); here, that each share is a fraction of one.
    split = _get(raw, "budget.split")
    if not isinstance(split, dict) or not split:
        raise PolicyError("policy key `budget.split` must map each measurement to its share")
    for name in split:
        key = f"budget.split.{name}"
        if key in RENAMED:
            raise PolicyError(f"policy key `{key}` is now `{RENAMED[key]}`: rename it")
        _number(raw, key, lo=0, lo_open=True)
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

    # Keys sorted, but the dimensions' order is the cohort keys' order, so it is hashed too.
    canonical = json.dumps(
        {"policy": raw, "dimension_order": names},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return Policy(
        raw=raw,
        hash=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        path=path,
        partitions_start=partitions_start,
        lookback_days=lookback,
        outcome_days=outcome,
        dimensions=dimensions,
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
        every_days=every,
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
