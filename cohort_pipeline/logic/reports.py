"""Governance documents, rendered from public and DP values only (no Dagster).

- the audit report of one release (Markdown): policy, measurements, budget burn-down,
  coarsening, provenance, data minimization;
- the privacy notice (Markdown and a standalone HTML page), generated from the policy;
- the privacy scorecard (Markdown): privacy health beside utility.

Callers pass ledger rows, release tables and run metadata; nothing here reads private tables.
"""

from __future__ import annotations

import html
import io
import math
import re
from datetime import date, timedelta

import pandas as pd
import yaml

from cohort_pipeline.logic.alerts import BUDGET_THRESHOLDS
from cohort_pipeline.policy import ALL, Dimension, Policy
from cohort_pipeline.privacy.accounting import Charge, Spend, compose
from cohort_pipeline.privacy.bounding import bounded_totals
from cohort_pipeline.privacy.ledger import BudgetCap, Enforced
from cohort_pipeline.privacy.measurements import measurement_of, yearly_spend
from cohort_pipeline.schema import EVENT_COLUMNS


def md_table(frame: pd.DataFrame, digits: int = 6) -> str:
    if frame.empty:
        return "_(none)_"
    # Cohort keys hold '|', which would split a Markdown table cell.
    escaped = frame.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    return escaped.to_markdown(index=False, floatfmt=f".{digits}g")


# -- budget -----------------------------------------------------------------------------------


def charges(rows: pd.DataFrame) -> list[tuple[date, Charge]]:
    """Ledger rows (ledger.rows()) as the accountant composes them."""
    return [
        (
            pd.Timestamp(r.release_date).date(),
            Charge.of(r.mechanism, Spend(r.epsilon, r.delta, r.rho), r.sensitivity, r.noise_scale),
        )
        for r in rows.itertuples()
    ]


def burn_down(rows: pd.DataFrame, cap: BudgetCap, as_of: date | str) -> pd.DataFrame:
    """Per day of the cap window ending at `as_of`: the enforced figures of that day over the
    ledger rows (ledger.rows()), as Ledger.summary(cap, as_of=day) gives them: the worst cap
    window and horizon span containing it, and what remains of each cap."""
    as_of = date.fromisoformat(str(as_of))
    days = [as_of - timedelta(days=cap.window_days - 1 - i) for i in range(cap.window_days)]
    composed = charges(rows)
    figures = [Enforced.around(composed, cap, day) for day in days]
    return pd.DataFrame(
        {
            "day": days,
            "epsilon_spent": [f.epsilon for f in figures],
            "epsilon_remaining": [max(0.0, cap.epsilon_cap - f.epsilon) for f in figures],
            "horizon_epsilon": [f.horizon_epsilon for f in figures],
        }
    )


def _cadence(policy: Policy) -> str:
    """How often the policy releases (`release.every_days`), in words."""
    return "every day" if policy.every_days == 1 else f"every {policy.every_days} days"


def horizon_words(summary: dict) -> list[str]:
    """The per-user guarantee in plain words, from budget_summary()."""
    return [
        f"someone active every day for a year: ε = {summary['yearly_epsilon']:.4g} at"
        f" δ = {summary['yearly_delta']:.3g} (if this policy releases on its schedule;"
        f" {summary['accountant']})",
        f"someone active every day of the worst {summary['horizon_days']}-day horizon"
        f" containing {summary['as_of']}, as recorded: ε = {summary['horizon_epsilon']:.4g} of"
        f" cap {summary['epsilon_horizon_cap']:g} (remaining {summary['horizon_remaining']:.4g})",
    ]


def burn_down_figure(frame: pd.DataFrame, cap: BudgetCap):
    """The burn-down chart (a matplotlib Figure, Agg backend: no display needed): spent and
    remaining epsilon per day, and the 80% / 95% alert thresholds drawn where the spent line
    crosses them (a share of the cap spent)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.add_subplot()
    ax.plot(frame["day"], frame["epsilon_remaining"], marker=".", label="epsilon remaining")
    ax.plot(frame["day"], frame["epsilon_spent"], marker=".", label="epsilon spent")
    for share, style in zip(sorted(BUDGET_THRESHOLDS.values()), (":", "--"), strict=True):
        ax.axhline(
            cap.epsilon_cap * share,
            color="tab:red",
            linestyle=style,
            linewidth=0.8,
            label=f"{share:.0%} of the cap spent ({cap.epsilon_cap * share:g})",
        )
    ax.set_ylim(0, cap.epsilon_cap * 1.05)
    ax.set_ylabel("epsilon")
    ax.set_title(
        f"Privacy budget over the {cap.window_days}-day window (cap {cap.epsilon_cap:g},"
        f" {cap.composition})",
        fontsize=10,
    )
    ax.legend(fontsize=7, loc="center left")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def burn_down_png(frame: pd.DataFrame, cap: BudgetCap) -> bytes:
    """The burn-down chart as PNG bytes."""
    buffer = io.BytesIO()
    burn_down_figure(frame, cap).savefig(buffer, format="png")
    return buffer.getvalue()


def measured(rows: pd.DataFrame) -> pd.DataFrame:
    """Ledger rows (charged to assets) with what each measured, from the registry: the
    measurement (its budget.split share), the bounded table it read and a one-line description."""
    specs = [measurement_of(asset) for asset in rows["asset"]]
    return rows.assign(
        measurement=[s.name if s else "" for s in specs],
        reads=[s.source if s and s.source else "" for s in specs],
        what=[s.what if s else "" for s in specs],
    )


# -- coarsening and minimization ----------------------------------------------------------------


def coarsened_cohorts(sizes: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    """Released cohorts that merge several full cohorts (release.cohort_sizes rows), with the
    dimensions dropped and why. Only noisy sizes appear: the merge decision was made on them."""
    merged = sizes[sizes["members"].str.contains(";")]
    names = [d.name for d in policy.dimensions]
    return pd.DataFrame(
        {
            "cohort_key": merged["cohort_key"],
            "merged_cohorts": merged["members"].str.count(";") + 1,
            "dropped": merged["cohort_key"].map(
                lambda key: ", ".join(
                    n for n, label in zip(names, key.split("|"), strict=True) if label == ALL
                )
            ),
            "noisy_users": merged["noisy_users"],
            "reason": f"members' noisy sizes below k = {policy.min_size}",
        }
    )


def columns_read(policy: Policy, release_date: date) -> pd.DataFrame:
    """Event columns available (the canonical schema) against those the per-user bounding SQL
    of a release reads: what any measurement can depend on."""
    sql = " ".join(query for _, query in bounded_totals(policy, release_date, "events", "catalog"))
    return pd.DataFrame(
        {
            "column": list(EVENT_COLUMNS),
            "read_by_measurements": [bool(re.search(rf"\b{c}\b", sql)) for c in EVENT_COLUMNS],
        }
    )


# -- the audit report ---------------------------------------------------------------------------


def audit_markdown(
    *,
    release_date: str,
    policy: Policy,
    measurements: pd.DataFrame,
    summary: dict,
    burn: pd.DataFrame,
    chart_src: str,
    coarsened: pd.DataFrame,
    provenance: pd.DataFrame,
    code_version: str,
    git_commit: str | None,
    columns: pd.DataFrame,
) -> str:
    """The audit report of one release. `measurements` are the release's ledger rows,
    `summary` is Ledger.summary(cap, as_of=release_date), `provenance` one row per upstream
    materialization consumed; `chart_src` is the burn-down image's URL (file or data URI)."""
    release_eps = compose([c for _, c in charges(measurements)], policy.composition, policy.delta)[
        0
    ]
    cols = ["seq", "asset", "measurement", "mechanism", "epsilon", "delta", "rho", "sensitivity"]
    cols += ["noise_scale", "reads", "what"]
    unread = columns.loc[~columns["read_by_measurements"], "column"].tolist()
    return "\n".join(
        [
            f"# Audit report: release {release_date}",
            "",
            "Every figure below is public (policy) or differentially private (noisy); exact "
            "counts, user ids and row counts of private tables are not part of any release.",
            "",
            "## Policy",
            f"- file `{policy.path}`, hash **`{policy.hash}`** (recorded with every ledger row)",
            f"- privacy unit: one user, all events in the {policy.lookback_days} days ending on "
            "the release date",
            f"- epsilon per release {policy.epsilon_per_release:g} at delta {policy.delta:g}; cap "
            f"{policy.epsilon_cap:g} over any {policy.window_days} days and "
            f"{policy.epsilon_horizon_cap:g} for a user active every day of "
            f"{policy.horizon_days} days ({policy.composition} composition, "
            f"{summary['accountant']}); minimum cohort size k = {policy.min_size}",
            "",
            "<details><summary>policy file</summary>",
            "",
            "```yaml",
            yaml.safe_dump(policy.raw, sort_keys=False).strip(),
            "```",
            "</details>",
            "",
            "## Measurements",
            f"The ledger rows of this release ({_first(measurements, 'kind')} reservation "
            f"`{_first(measurements, 'reservation_id')}`, reserved by run "
            f"`{_first(measurements, 'run_id')}`"
            + (
                f", redraw requested: {_first(measurements, 'reason')}"
                if _first(measurements, "kind") == "redraw"
                else ""
            )
            + f"); together epsilon {release_eps:.6g} at delta "
            f"{policy.delta:g}.",
            "",
            md_table(measured(measurements)[cols] if not measurements.empty else measurements),
            "",
            "## Budget",
            f"- spent in the worst {summary['window_days']}-day window containing "
            f"{summary['as_of']} (the figure the cap bounds): "
            f"epsilon **{summary['epsilon_spent']:.6g}** of cap {summary['epsilon_cap']:g} "
            f"({summary['epsilon_spent'] / summary['epsilon_cap']:.1%}); remaining "
            f"**{summary['epsilon_remaining']:.6g}**",
            *(f"- {line}" for line in horizon_words(summary)),
            *(
                [
                    f"- summed delta of that window **{summary['delta_spent']:.3g}** of cap "
                    f"{summary['delta_cap']:g} (basic composition adds deltas)"
                ]
                if summary["composition"] == "basic"
                else []
            ),
            f"- releases on record: {len(summary['releases'])}; ledger rows: {summary['rows']}; "
            f"hash chain verified: **{summary['verified']}**",
            "",
            f"![budget burn-down]({chart_src})",
            "",
            "## Coarsening",
            f"Cohorts whose noisy size was below k = {policy.min_size} were merged into their "
            f"parents by dropping dimensions in the order {', '.join(policy.coarsening_order)} "
            "(post-processing of noisy counts).",
            "",
            md_table(coarsened, 4),
            "",
            "## Provenance",
            f"- code version `{code_version}`, git commit `{git_commit or 'unknown'}`",
            "- upstream materializations consumed (latest for this partition):",
            "",
            md_table(provenance),
            "",
            "## Data minimization",
            f"Event columns available: {len(columns)}; read by measurements: "
            f"{int(columns['read_by_measurements'].sum())}. Validated at ingest but read by no "
            f"measurement: {', '.join(unread) or 'none'}.",
            "",
            md_table(columns),
            "",
        ]
    )


def _first(frame: pd.DataFrame, column: str) -> str:
    return str(frame[column].iloc[0]) if not frame.empty else "none"


# -- the privacy notice -------------------------------------------------------------------------


def _bands(edges, labels, unit: str) -> str:
    bounds = [0, *edges]
    parts = [
        f"{label} (fewer than {edges[0]} {unit})"
        if i == 0
        else f"{label} ({bounds[i]}{'–' + str(edges[i] - 1) if i < len(edges) else '+'} {unit})"
        for i, label in enumerate(labels[: len(edges) + 1])
    ]
    return ", ".join(parts)


# What the notice calls each quantity or event column a dimension reads (policy.QUANTITIES,
# policy.GROUPED_COLUMNS): the trait (`{outcome_days}` from the policy), the bands' unit, and
# what a user without the quantity did not do.
_TRAITS = {
    "session_count": ("how active you were", "sessions", None),
    "days_since_purchase": (
        "how recently you bought something before the last {outcome_days} days",
        "days",
        "no purchase",
    ),
    "mean_duration_s": ("how long your sessions lasted on average", "seconds", None),
    "device_type": ("your main device", None, None),
}
_COUNTS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _traits_count(policy: Policy) -> str:
    n = len(policy.dimensions)
    return f"{_COUNTS[n] if n < len(_COUNTS) else n} trait{'s' * (n != 1)}"


def _trait(policy: Policy, dimension: Dimension) -> str:
    trait, unit, missing = _TRAITS[dimension.source]
    trait = trait.format(outcome_days=policy.outcome_days)
    if dimension.column:
        return f"- {trait}: " + "; ".join(f"{g}: {', '.join(m)}" for g, m in dimension.groups)
    text = f"- {trait}: " + _bands(dimension.edges, dimension.labels, unit)
    return text + (f", or {dimension.none_label} ({missing})" if dimension.none_label else "")


def notice_sections(policy: Policy) -> list[tuple[str, list[str]]]:
    """The notice as (heading, paragraphs) from the policy: one source for Markdown and HTML."""
    factor = math.exp(policy.epsilon_per_release)
    yearly_epsilon, yearly_delta = yearly_spend(policy)
    basic_delta = (
        f" Under the simple accounting used here the small failure probabilities (delta) add "
        f"up too: their sum stays at or below {policy.delta_cap:g} in any {policy.window_days} "
        f"days and for anyone over {policy.horizon_days} days."
        if policy.composition == "basic"
        else ""
    )
    return [
        (
            "What we use",
            [
                f"Your product events from the last {policy.lookback_days} days: which items you "
                "viewed, clicked, added to your cart or bought, when, in which session, how long "
                "the session lasted and on which kind of device.",
                "We never publish anything about you alone. We publish statistics about large "
                "groups of people (cohorts), with random noise added, and use them to rank items "
                "for each cohort.",
            ],
        ),
        (
            "The cohorts",
            [
                f"Each person is placed in exactly one cohort by {_traits_count(policy)}:",
                *(_trait(policy, d) for d in policy.dimensions),
                f"A cohort is published only if it has at least about {policy.min_size} people "
                "(its noisy count); smaller cohorts are merged with similar ones first.",
            ],
        ),
        (
            "What epsilon means here",
            [
                f"Each daily release is differentially private with epsilon = "
                f"{policy.epsilon_per_release:g} (and delta = {policy.delta:g}). In plain words: "
                "whether or not your data is included, the chance of any published result changes "
                f"by at most a factor of about {factor:.2f}, so the results reveal very little "
                "about you in particular.",
                "Releases add up, and each day you are active counts in the releases of the "
                f"{policy.lookback_days} days that follow. Someone active every day for a year: "
                f"epsilon = {yearly_epsilon:.3g} (at delta = {yearly_delta:.3g}) if we release "
                f"{_cadence(policy)}. For anyone active on any days of any {policy.horizon_days} days the "
                f"total stays at or below epsilon = {policy.epsilon_horizon_cap:g}, and across "
                f"all releases in any {policy.window_days} days at or below epsilon = "
                f"{policy.epsilon_cap:g}; a release that would exceed either is not made."
                + basic_delta
                + " Every spend is recorded in a tamper-evident ledger.",
                f"How much one person can count is limited: at most {policy.max_sessions} "
                f"sessions, session length clipped to {policy.session_duration_s[0]:g}–"
                f"{policy.session_duration_s[1]:g} seconds, and a fixed total weight over "
                "categories and items.",
            ],
        ),
        (
            "How to opt out",
            [
                "Ask us to opt you out (privacy team or support). An operator runs "
                "`cohort-pipeline opt-out add <your user id>`; from the next daily release on, "
                "your events are excluded from everything we compute. You can opt back in the same "
                "way (`cohort-pipeline opt-out remove`). Releases already published are not "
                "changed.",
            ],
        ),
        (
            "This notice",
            [
                f"Generated from the release policy (hash `{policy.hash}`), which is public and "
                "recorded with every release.",
            ],
        ),
    ]


NOTICE_TITLE = "How your data is used for cohort recommendations"


def notice_markdown(policy: Policy) -> str:
    lines = [f"# {NOTICE_TITLE}", ""]
    for heading, paragraphs in notice_sections(policy):
        lines += [f"## {heading}", ""]
        for text, after in zip(paragraphs, [*paragraphs[1:], ""], strict=True):
            # consecutive bullets form one list; a blank line closes it and every paragraph
            lines += [text] if text.startswith("- ") and after.startswith("- ") else [text, ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def notice_html(policy: Policy) -> str:
    """A standalone page: no scripts, no external resources."""
    body = [f"<h1>{html.escape(NOTICE_TITLE)}</h1>"]
    for heading, paragraphs in notice_sections(policy):
        body.append(f"<h2>{html.escape(heading)}</h2>")
        items = [p[2:] for p in paragraphs if p.startswith("- ")]
        for text in paragraphs:
            if not text.startswith("- "):
                body.append(f"<p>{_inline_html(text)}</p>")
            elif text[2:] == items[0]:
                body.append(
                    "<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in items) + "</ul>"
                )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:44em;margin:2em auto;padding:0 1em;"
        "line-height:1.5;color:#222}code{background:#f3f3f3;padding:0 .2em}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(NOTICE_TITLE)}</title><style>{style}</style></head>\n"
        f"<body>\n{chr(10).join(body)}\n</body></html>\n"
    )


# -- the scorecard ------------------------------------------------------------------------------


def scorecard_markdown(
    release_date: str, privacy: dict, utility: dict, words: list[str] | None = None
) -> str:
    """Privacy health beside utility, one row per figure, side by side; `words` (such as
    horizon_words) are stated above the table."""

    def rows(figures: dict) -> list[str]:
        return [
            f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in figures.items()
        ]

    left, right = rows(privacy), rows(utility)
    size = max(len(left), len(right))
    left, right = left + [""] * (size - len(left)), right + [""] * (size - len(right))
    table = pd.DataFrame({"privacy health": left, "utility": right})
    said = "".join(f"- {line}\n" for line in words or [])
    return f"# Privacy scorecard: release {release_date}\n\n{said}\n" + table.to_markdown(
        index=False
    )
