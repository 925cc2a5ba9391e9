"""Per-user contribution bounding, in DuckDB SQL.

These queries turn one release window of validated events into per-user rows whose
contribution to any released aggregate is bounded, which is what every mechanism's
sensitivity rests on:

- `user_profiles`: one row per user, so a user is in exactly one cohort; `sessions` is
  clamped to [0, max_sessions], `mean_duration_s` to the policy range, `converted` is 0/1.
- `user_categories`: a user's weighted category engagement, scaled to L2 norm
  `category_l2_norm` (exactly, or 0 for no engagement).
- `user_items`: the distinct items a user touched, each 1/sqrt(n), scaled to `item_l2_norm`.

Clamping per-user aggregates avoids the window sort of a per-event cap (design §5).
"""

from __future__ import annotations

from datetime import date, timedelta

from cohort_pipeline.policy import Policy


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
    devices AS (
        SELECT user_id, arg_max(device_type, (n, device_type)) AS device_type
        FROM (SELECT user_id, device_type, count(*) AS n FROM sessions GROUP BY ALL)
        GROUP BY user_id
    ),
    per_user AS (
        SELECT user_id,
               count(*) AS n_sessions,
               coalesce(avg(duration_s), {lo}) AS raw_mean_duration
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
               {_device_group(policy, "d.device_type")} AS device,
               least(p.n_sessions, {policy.max_sessions}) AS sessions,
               greatest({lo}, least({hi}, p.raw_mean_duration)) AS mean_duration_s,
               CAST(coalesce(b.converted, false) AS INTEGER) AS converted
        FROM per_user p JOIN devices d USING (user_id) LEFT JOIN purchases b USING (user_id)
    )
    SELECT user_id, engagement || '|' || recency || '|' || device AS cohort_key,
           engagement, recency, device, sessions, mean_duration_s, converted
    FROM banded
    """


def user_categories_sql(policy: Policy, events: str, catalog: str) -> str:
    weights = " ".join(f"WHEN '{k}' THEN {v}" for k, v in policy.category_weights.items())
    return f"""
    WITH w AS (
        SELECT e.user_id, c.category, sum(CASE e.event_type {weights} ELSE 0 END) AS w
        FROM {events} e JOIN {catalog} c USING (item_id) GROUP BY ALL
    ),
    norms AS (SELECT user_id, sqrt(sum(w * w)) AS norm FROM w GROUP BY user_id)
    SELECT user_id, category, {policy.category_l2_norm} * w / norm AS value
    FROM w JOIN norms USING (user_id) WHERE norm > 0
    """


def user_items_sql(policy: Policy, events: str) -> str:
    return f"""
    WITH items AS (SELECT DISTINCT user_id, item_id FROM {events}),
    n AS (SELECT user_id, count(*) AS n FROM items GROUP BY user_id)
    SELECT user_id, item_id, {policy.item_l2_norm} / sqrt(n) AS value
    FROM items JOIN n USING (user_id)
    """
