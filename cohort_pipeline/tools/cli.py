"""`cohort-pipeline`: what is not a Dagster run (sample data, the ledger, opt-outs, import).

Each subcommand is a small function registered in COMMANDS; all errors end in one clear
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import json
import sys
from pathlib import Path

from cohort_pipeline.settings import DataFolder, Settings, SettingsError
from cohort_pipeline.storage.private_files import too_open


class DataDirError(ValueError):
    """A --data-dir that is not a data folder; the message names it and the likely fix."""


def _is_data_dir(path: Path) -> bool:
    folder = DataFolder(path)
    return folder.events.is_dir() or folder.policy.is_file()


def existing_data_dir(path: Path | str) -> Path:
    """`path` if it is a data folder (it holds events/ or policy.yaml), else DataDirError.

    Every subcommand but `generate` and `import` (which create one) reads an existing data
    folder: a mistyped one must be refused, not created, or an opt-out recorded there would
    be read by no release."""
    path = Path(path)
    if _is_data_dir(path):
        return path
    state = "does not exist" if not path.exists() else "holds neither events/ nor policy.yaml"
    parent = path.absolute().parent
    try:
        siblings = [p.name for p in parent.iterdir() if p.is_dir() and _is_data_dir(p)]
    except OSError:  # no parent, or not ours to list: no suggestion
        siblings = []
    close = difflib.get_close_matches(path.name, siblings, n=1)
    hint = f"did you mean {parent / close[0]}? " if close else ""
    raise DataDirError(
        f"data folder {path} {state}; a data folder holds events/ and policy.yaml (from "
        f"`cohort-pipeline generate`, `cohort-pipeline import` or `make data`). {hint}Check "
        "--data-dir or COHORT_PIPELINE_DATA_DIR; nothing was read or written"
    )


CREATES_DATA_DIR = ("generate", "import")


def _policy(args):
    """--policy, with COHORT_PIPELINE_PARTITIONS_START applied as in a run."""
    from cohort_pipeline.policy import load_policy

    return load_policy(args.policy, args.settings.partitions_start)


def _ledger_and_cap(args):
    from cohort_pipeline.privacy.ledger import Ledger
    from cohort_pipeline.privacy.release import budget_cap

    return Ledger(args.settings.folder.ledger), budget_cap(_policy(args))


def cmd_generate(args) -> int:
    from cohort_pipeline.tools.generate import generate

    summary = generate(
        args.data_dir, users=args.users, days=args.days, seed=args.seed, end_date=args.end_date,
        items=args.items, categories=args.categories, progress=lambda msg: print(msg, file=sys.stderr),
    )  # fmt: skip
    print(
        f"wrote {summary.events:,} events for {summary.users:,} users, {summary.first_date}..{summary.last_date}, "
        f"{summary.items:,} items into {args.data_dir}"
    )
    return 0


def cmd_latest_date(args) -> int:
    """The newest event date on file: the release `make run` materializes."""
    from cohort_pipeline.logic.calendar import latest_event_date

    print(latest_event_date(args.data_dir).isoformat())
    return 0


def cmd_first_date(args) -> int:
    """The first release date whose whole lookback window is on file (`make run` starts the
    daily partitions there)."""
    from cohort_pipeline.logic.calendar import first_release_date

    print(first_release_date(args.data_dir, _policy(args)).isoformat())
    return 0


def cmd_ledger_show(args) -> int:
    from cohort_pipeline.privacy.measurements import budget_summary

    ledger, _ = _ledger_and_cap(args)
    s = budget_summary(ledger, _policy(args), as_of=args.as_of)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    delta = (
        f"delta {s['delta_spent']:.3g} of cap {s['delta_cap']:g}, "
        if s["composition"] == "basic"
        else ""
    )
    print(
        f"composition {s['composition']} ({s['accountant']}), epsilon at delta={s['delta']:g}\n"
        f"worst {s['window_days']}-day window containing {s['as_of']}: epsilon spent "
        f"{s['epsilon_spent']:.4f} of cap {s['epsilon_cap']:g}, {delta}remaining {s['epsilon_remaining']:.4f}\n"
        f"someone active every day of the {s['horizon_days']} days around {s['as_of']}: epsilon "
        f"{s['horizon_epsilon']:.4f} of cap {s['epsilon_horizon_cap']:g} (remaining {s['horizon_remaining']:.4f})\n"
        f"someone active every day for a year: ε = {s['yearly_epsilon']:.4g} at δ = {s['yearly_delta']:.3g}"
        " (if this policy releases on its schedule)"
    )  # fmt: skip
    rows = ledger.rows()
    if rows.empty:
        print("(ledger is empty)")
        return 0
    from cohort_pipeline.privacy.ledger import COLUMNS

    cols = [c for c in COLUMNS if c not in ("prev_hash", "row_hash")]  # hashes: `ledger verify`
    print(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
    return 0


def cmd_ledger_verify(args) -> int:
    ledger, _ = _ledger_and_cap(args)
    problems = ledger.verify()
    for problem in problems:
        print(f"ledger {ledger.path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"ledger {ledger.path}: {len(ledger.rows())} rows, hash chain verified")
    return 1 if problems else 0


def cmd_import(args) -> int:
    from cohort_pipeline.tools.importer import import_interactions, parse_mapping

    summary = import_interactions(
        args.file, parse_mapping(args.map), args.items, args.data_dir,
        item_map=parse_mapping(args.item_map, ("item_id", "category"), ("item_id", "category")),
        event_type=args.event_type, min_rating=args.min_rating, overwrite=args.overwrite,
    )  # fmt: skip
    print(
        f"read {summary.rows_read:,} rows; wrote {summary.rows_written:,} events in "
        f"{summary.files} daily file(s) {summary.first_date}..{summary.last_date} and "
        f"{summary.catalog_items:,} catalog items into {args.data_dir}"
    )
    for reason, count in summary.rejected.items():
        print(f"  rejected {count:,} row(s): {reason}")
    if summary.first_date:
        print(
            f"release dates need partitions from {summary.first_date}: set "
            "release.partitions_start or COHORT_PIPELINE_PARTITIONS_START"
        )
    return 0


def cmd_opt_out(args) -> int:
    """Opt-outs apply from the next release: the opt_outs asset re-reads the list each run."""
    from cohort_pipeline.storage import optouts

    path = args.settings.folder.opt_outs
    if args.opt_out_command == "list":
        frame = optouts.read(path)
        print(frame.to_csv(index=False), end="")
        return 0
    change = optouts.add if args.opt_out_command == "add" else optouts.remove
    changed = change(path, args.user_ids)
    verb = "opted out" if args.opt_out_command == "add" else "opted back in"
    print(f"{len(changed)} user(s) {verb} in {path}; effective from the next release")
    return 0


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cohort-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=str(settings.data_dir),
        help="default: $COHORT_PIPELINE_DATA_DIR or data/",
    )
    parser.add_argument(
        "--policy", default=None, help="default: $COHORT_PIPELINE_POLICY or <data dir>/policy.yaml"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate", help="write synthetic sample events and catalog into the data folder"
    )
    gen.add_argument("--users", type=int, default=20_000)
    gen.add_argument("--days", type=int, default=30)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--end-date", type=dt.date.fromisoformat, default=None, help="default: yesterday (UTC)"
    )
    gen.add_argument("--items", type=int, default=2_000)
    gen.add_argument("--categories", type=int, default=20)
    gen.set_defaults(func=cmd_generate)

    latest = sub.add_parser("latest-date", help="print the newest event date on file")
    latest.set_defaults(func=cmd_latest_date)
    first = sub.add_parser(
        "first-date", help="print the first release date whose lookback window is on file"
    )
    first.set_defaults(func=cmd_first_date)

    imp = sub.add_parser("import", help="turn an interactions file into canonical events")
    imp.add_argument("file", help="interactions: ratings, clicks or purchases")
    imp.add_argument(
        "--map",
        required=True,
        help="user_id=COL,item_id=COL,event_time=COL[,event_type=COL,session_id=COL,"
        "device_type=COL,session_duration_s=COL,revenue=COL,rating=COL]",
    )
    imp.add_argument("--items", required=True, help="item file with each item's category")
    imp.add_argument(
        "--item-map",
        default="item_id=item_id,category=category",
        help="item_id=COL,category=COL of the item file",
    )
    imp.add_argument("--event-type", default="click", help="event type when none is mapped")
    imp.add_argument("--min-rating", type=float, default=None, help="drop rows rated below this")
    imp.add_argument("--overwrite", action="store_true", help="replace catalog and daily files")
    imp.set_defaults(func=cmd_import)

    ledger = sub.add_parser("ledger", help="show or verify the privacy-budget ledger")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    show = ledger_sub.add_parser("show", help="budget summary and every spend")
    show.add_argument("--json", action="store_true", help="machine-readable summary")
    show.add_argument("--as-of", type=dt.date.fromisoformat, default=None)
    show.set_defaults(func=cmd_ledger_show)
    verify = ledger_sub.add_parser(
        "verify", help="check the hash chain; exit 1 on any inconsistency"
    )
    verify.set_defaults(func=cmd_ledger_verify)

    opt_out = sub.add_parser("opt-out", help="manage opt-outs (excluded from the next release on)")
    opt_sub = opt_out.add_subparsers(dest="opt_out_command", required=True)
    for name, help_text in (
        ("add", "exclude users from every release from the next one on"),
        ("remove", "include users again from the next release on"),
    ):
        cmd = opt_sub.add_parser(name, help=help_text)
        cmd.add_argument("user_ids", nargs="+", metavar="USER_ID")
        cmd.set_defaults(func=cmd_opt_out)
    opt_sub.add_parser("list", help="print the opt-out list as CSV").set_defaults(func=cmd_opt_out)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"cohort-pipeline: SettingsError: {exc}", file=sys.stderr)
        return 2
    args = build_parser(settings).parse_args(argv)
    args.settings = settings.with_data_dir(args.data_dir)
    args.policy = args.policy or str(args.settings.policy_path)
    try:
        if args.command not in CREATES_DATA_DIR:
            existing_data_dir(args.data_dir)
        if warning := too_open(args.data_dir):
            print(f"cohort-pipeline: warning: {warning}", file=sys.stderr)
        return args.func(args)
    except Exception as exc:  # one clear line, not a traceback, for operators
        print(f"cohort-pipeline {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
