"""Per-user contribution bounding, in DuckDB SQL.

These queries turn one release window of validated events into per-user rows whose
contribution to any released aggregate is bounded, which is what every mechanism's
sensitivity rests on:

- `user_profiles`: one row per user, so a user is in exactly one cohort; `sessions` is
  clamped to [0, max_sessions], `mean_duration_s` to the policy range, `converted` is 0/1.
- `user_categories`: a user's weighted category engagement, scaled to L2 norm
  `category_l2_norm` (exactly, or 0 for no engagement).
- `user_items`: the distinct items a user touched, each 1/sqrt(n), scaled to `item_l2_norm`.
  Both start from `user_pairs`, the user's distinct items with their summed weights.

Clamping per-user aggregates avoids the window sort of a per-event cap (design §5).

The release sums these per-user rows per full cohort key (or per item) before any noise:
`bounded_totals` gives those sums. They are all the mechanisms need (a released cohort's sum
is the sum of its members' sums), a user still moves them by at most the per-user bound, and
they are a few hundred rows where the per-user vectors are tens of millions (storing
per-user vectors was most of the DP step's time; docs/scale.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from cohort_pipeline.policy import Policy
from cohort_pipeline.schema import DEVICE_TYPES


def window(policy: Policy, release_date: date) -> tuple[date, date, date]:
    """(first day, first day of the outcome period, last day) of a release's window."""
    first = release_date - timedelta(days=policy.lookback_days - 1)
    outcome_start = release_date - timedelta(days=policy.outcome_days - 1)
    return first, outcome_start, release_date


def _band(expr: str, edges, labels) -> str:
    whens = " ".join(
        f"WHEN {expr} < {edge} THEN '{label}'" for edge, label in zip(edges, labels, strict=False)
    )
    return f"CASE {whens} ELSE '{labels[len(edges)]}' END"


def _device_group(policy: Policy, expr: str) -> str:
    whens = " ".join(
        f"WHEN {expr} IN ({', '.join(repr(m) for m in members)}) THEN '{group}'"
        for group, members in policy.device_groups.items()
    )
    return f"CASE {whens} END"


def _most_sessions_device(expr: str) -> str:
    # The device of most of a user's sessions, ties to the last name: counted per device type
    # inside the per-user aggregate (validated events only carry DEVICE_TYPES), which is ~1 s
    # less at 100M events than a (user, device) aggregate and a join.
    counts = ", ".join(f"{{'n': count_if({expr} = '{d}'), 'd': '{d}'}}" for d in DEVICE_TYPES)
    return f"greatest({counts}).d"


def user_profiles_sql(policy: Policy, release_date: date, events: str) -> str:
    _, outcome_start, _ = window(policy, release_date)
    lo, hi = policy.session_duration_s
    recency_bands = _band("b.days_since_purchase", policy.recency_edges, policy.recency_labels[:-1])
    return f"""
    WITH sessions AS (
        SELECT user_id, session_id,
               max(session_duration_s) AS duration_s,
               arg_min(device_type, event_time) AS device_type
        FROM {events} GROUP BY user_id, session_id
    ),
    per_user AS (
        SELECT user_id,
               count(*) AS n_sessions,
               coalesce(avg(duration_s), {lo}) AS raw_mean_duration,
               {_most_sessions_device("device_type")} AS device_type
        FROM sessions GROUP BY user_id
    ),
    purchases AS (
        SELECT user_id,
               DATE '{outcome_start}' - max(CASE WHEN event_time < TIMESTAMPTZ '{outcome_start} 00:00:00+00'
                   THEN CAST(timezone('UTC', event_time) AS DATE) END) AS days_since_purchase,
               bool_or(event_time >= TIMESTAMPTZ '{outcome_start} 00:00:00+00') AS converted
        FROM {events} WHERE event_type = 'purchase' GROUP BY user_id
    ),
    banded AS (
        SELECT p.user_id,
               {_band("p.n_sessions", policy.engagement_edges, policy.engagement_labels)} AS engagement,
               CASE WHEN b.days_since_purchase IS NULL THEN '{policy.recency_labels[-1]}'
                    ELSE {recency_bands} END AS recency,
               {_device_group(policy, "p.device_type")} AS device,
               least(p.n_sessions, {policy.max_sessions}) AS sessions,
               greatest({lo}, least({hi}, p.raw_mean_duration)) AS mean_duration_s,
               CAST(coalesce(b.converted, false) AS INTEGER) AS converted
        FROM per_user p LEFT JOIN purchases b USING (user_id)
    )
    SELECT user_id, engagement || '|' || recency || '|' || device AS cohort_key,
           engagement, recency, device, sessions, mean_duration_s, converted
    FROM banded
    """


@dataclass(frozen=True)
class Keys:
    """How the per-user vectors key a user and an item: by the id itself, or by its 64-bit
    hash. Hash keys make the (user, item) grouping and the joins after it ~25% faster at 100M
    events (docs/scale.md), but are only correct when no two of a window's users (or catalog
    items) share a hash: two users merged under one key would be bounded as one user.
    `unique_hashes_sql` checks that for every release; the DuckDB engine falls back to IDS
    otherwise. The Spark engine keeps IDS (its `hash` is 32-bit)."""

    user: str
    item: str


IDS = Keys(user="user_id", item="item_id")
HASHES = Keys(user="hash(user_id)", item="hash(item_id)")


def unique_hashes_sql(profiles: str, catalog: str) -> str:
    """True when HASHES are safe: every user of `profiles` (one row per user) and every item
    of `catalog` has a hash of its own."""
    return (
        f"SELECT (SELECT count(DISTINCT {HASHES.user}) = count(*) FROM {profiles})"
        f" AND (SELECT count(DISTINCT {HASHES.item}) = count(DISTINCT item_id) FROM {catalog})"
    )


def user_pairs_sql(policy: Policy, events: str, keys: Keys = IDS) -> str:
    """One row per user x distinct item the user touched, with `w`, the summed category
    weight of the user's events on it. Both vectors below start from it, so the events are
    grouped by (user, item) once (`user_id` and `item_id` hold `keys`)."""
    weights = " ".join(f"WHEN '{k}' THEN {v}" for k, v in policy.category_weights.items())
    return (
        f"SELECT {keys.user} AS user_id, {keys.item} AS item_id,"
        f" sum(CASE event_type {weights} ELSE 0 END) AS w FROM {events} GROUP BY ALL"
    )


def item_categories_sql(catalog: str, keys: Keys = IDS) -> str:
    """The catalog keyed for the vectors: item key, category, and `category_no`, the
    category's rank by name. The per-user rows are grouped by that small integer rather than
    the name (~10% faster at 100M events); the sums get their names back at the end."""
    return (
        f"SELECT {keys.item} AS item_id, category,"
        f" CAST(dense_rank() OVER (ORDER BY category) AS INTEGER) AS category_no FROM {catalog}"
    )


def _category_weights_sql(pairs: str, catalog: str, keys: Keys) -> str:
    """(user_id, category_no, w): a user's summed weight per category, from `pairs` (the rows
    of user_pairs_sql). Items outside the catalog have no category and count for nothing."""
    return (
        f"SELECT p.user_id, c.category_no, sum(p.w) AS w FROM {pairs} p"
        f" JOIN ({item_categories_sql(catalog, keys)}) c USING (item_id) GROUP BY ALL"
    )


def _category_scales_sql(policy: Policy, weights: str) -> str:
    """(user_id, scale): the factor that scales a user's `weights` to L2 norm
    `category_l2_norm`; a user without engagement has no row (and no vector)."""
    return (
        f"SELECT user_id, {policy.category_l2_norm} / sqrt(sum(w * w)) AS scale FROM {weights}"
        " GROUP BY user_id HAVING sum(w * w) > 0"
    )


def user_categories_sql(policy: Policy, pairs: str, catalog: str, keys: Keys = IDS) -> str:
    """One row per user x category (`category_no`, see item_categories_sql): the user's
    weighted engagement scaled to L2 norm `category_l2_norm`."""
    return f"""
    WITH w AS ({_category_weights_sql(pairs, catalog, keys)}),
    s AS ({_category_scales_sql(policy, "w")})
    SELECT user_id, category_no, w * scale AS value FROM w JOIN s USING (user_id)
    """


def cohort_category_totals_sql(
    policy: Policy, pairs: str, catalog: str, profiles: str, keys: Keys = IDS
) -> str:
    """Per full cohort key x category, the sum of the members' user_categories_sql vectors.
    A user's scale and cohort are joined first, so that the (user, category) weights (11M
    rows at 100M events) are joined once, not twice (4.0-4.2 s against 4.6 s at 100M events)."""
    return f"""
    WITH w AS ({_category_weights_sql(pairs, catalog, keys)}),
    u AS (
        SELECT s.user_id, s.scale, p.cohort_key FROM ({_category_scales_sql(policy, "w")}) s
        JOIN (SELECT {keys.user} AS user_id, cohort_key FROM {profiles}) p USING (user_id)
    ),
    sums AS (
        SELECT u.cohort_key, w.category_no, sum(w.w * u.scale) AS value
        FROM w JOIN u USING (user_id) GROUP BY u.cohort_key, w.category_no
    )
    SELECT sums.cohort_key, n.category, sums.value FROM sums
    JOIN (SELECT DISTINCT category_no, category FROM ({item_categories_sql(catalog, keys)})) n
    USING (category_no)
    """


def user_items_sql(policy: Policy, pairs: str) -> str:
    """One row per user x distinct item (the rows of `pairs`), each 1/sqrt(n) of
    `item_l2_norm`, n the user's distinct items."""
    return f"""
    WITH n AS (SELECT user_id, count(*) AS n FROM {pairs} GROUP BY user_id)
    SELECT user_id, item_id, {policy.item_l2_norm} / sqrt(n) AS value
    FROM {pairs} JOIN n USING (user_id)
    """


def bounded_totals(
    policy: Policy, release_date: date, events: str, catalog: str, keys: Keys = IDS
) -> list[tuple[str, str]]:
    """(name, query) of a release's bounded tables, in order: `user_profiles` (one row per
    user), then the exact per-key sums of the bounded per-user values that the mechanisms
    noise. A query reads the earlier tables by their name; the engine provides them, and
    stores all but the working tables (named `_...`). `keys` changes how the sums are
    computed, never what they are.

    - `cohort_totals`: per full cohort key, `users` and the sums of the three bounded values;
    - `_pairs`: user_pairs_sql, read by the two vectors (57M rows at 100M events: computed
      once, ~1.4 s less than grouping the events for each vector);
    - `cohort_category_totals`: per full cohort key x category, the sum of user_categories;
    - `item_totals`: per catalog item, the sum of user_items.
    """
    return [
        ("user_profiles", user_profiles_sql(policy, release_date, events)),
        (
            "cohort_totals",
            "SELECT cohort_key, CAST(count(*) AS DOUBLE) AS users,"
            " CAST(sum(mean_duration_s) AS DOUBLE) AS mean_duration_s,"
            " CAST(sum(converted) AS DOUBLE) AS converted,"
            " CAST(sum(sessions) AS DOUBLE) AS sessions FROM user_profiles GROUP BY cohort_key",
        ),
        ("_pairs", user_pairs_sql(policy, events, keys)),
        (
            "cohort_category_totals",
            cohort_category_totals_sql(policy, "_pairs", catalog, "user_profiles", keys),
        ),
        (
            "item_totals",
            # Summed by key, then named: a join of the 2,000-odd sums, not of every pair.
            f"SELECT c.item_id, s.value FROM (SELECT item_id AS item_key, sum(value) AS value"
            f" FROM ({user_items_sql(policy, '_pairs')}) GROUP BY item_id) s"
            f" JOIN (SELECT DISTINCT item_id, {keys.item} AS item_key FROM {catalog}) c"
            " USING (item_key)",
        ),
    ]


def working(name: str) -> bool:
    """A table only the later queries read: temporary, never stored."""
    return name.startswith("_")
