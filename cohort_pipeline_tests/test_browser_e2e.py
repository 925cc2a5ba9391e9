"""End to end in a real browser: `dagster dev` on a free port of 127.0.0.1 with a temporary
DAGSTER_HOME and data folder, driven through the UI by headless Debian Chromium (never a
downloaded browser). A release launched from the lineage page succeeds with both blocking
checks passed; under a policy whose cap one release cannot fit, a launch from the
`daily_release` job's page is blocked by `budget_within_limit`. A reviewer's path after two releases of the `daily_release` job reads
a per-cohort table cell, the budget left, the schedule's state, the job's runs, the freshness
and a release table's columns, each checked against the warehouse, the ledger or the
definitions. Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

from cohort_pipeline.logic.calendar import first_release_date
from cohort_pipeline.logic.display import round_half_width, round_to_accuracy
from cohort_pipeline.policy import load_policy
from cohort_pipeline.tools.cli import main as cli_main
from cohort_pipeline_tests.conftest import RELEASE_DATE, REPO, make_data_dir, write_policy

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
LOCATION = "cohort_pipeline"  # workspace.yaml's location_name
K = 50  # a small sample (2k users) keeps cohorts above k with a lowered k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dagster_env(tmp_path: Path, data: Path) -> dict:
    """What `make run` sets: DAGSTER_HOME with the instance settings, the data folder, and
    partitions from the data's first release-able date."""
    home = tmp_path / "dagster_home"
    if not home.exists():
        home.mkdir()
        shutil.copy(REPO / "dagster_instance.yaml", home / "dagster.yaml")
    start = first_release_date(data, load_policy(data / "policy.yaml"))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "COHORT_PIPELINE_DATA_DIR": str(data),
        "COHORT_PIPELINE_PARTITIONS_START": start.isoformat(),
    }
    env.pop("COHORT_PIPELINE_ALERT_WEBHOOK", None)
    return env


@contextlib.contextmanager
def dagster_dev(tmp_path: Path, data: Path):
    """`dagster dev` in its own process group; yields the UI's URL, then stops the whole
    group (webserver, daemon, code servers, runs) and waits for it."""
    env = dagster_env(tmp_path, data)
    port = _free_port()
    dagster = Path(sys.executable).with_name("dagster")
    log = open(tmp_path / "dagster_dev.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            str(dagster),
            "dev",
            "-w",
            str(REPO / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"dagster dev exited: {(tmp_path / 'dagster_dev.log').read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/server_info", timeout=2).close()
                break
            if time.monotonic() > deadline:
                pytest.fail("dagster dev did not serve its UI within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # dagster dev shuts its children down on TERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group still left
        log.close()


@contextlib.contextmanager
def ui_page(tmp_path: Path, data: Path):
    """`dagster dev` over `data` and a headless Chromium page on it: yields (url, page)."""
    with dagster_dev(tmp_path, data) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # Dismissed up front (as its Skip button would) so no modal covers a dialog mid-test.
        page.add_init_script("localStorage.setItem('communityNux', JSON.stringify('1'))")
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # a loaded CI machine renders slowly
        try:
            yield url, page
        finally:
            browser.close()


def launch_release(page, url: str, graph: str = "asset-groups") -> None:
    """A graph's page (the whole lineage, or a job's) -> Materialize all -> the release
    date's partition -> launch; then open the new run and wait until it has finished."""
    page.goto(f"{url}/{graph}")
    page.get_by_role("button", name="Materialize all…").click()
    dialog = page.get_by_role("dialog")
    with contextlib.suppress(PlaywrightTimeout):  # only offered past 90 days of partitions
        dialog.get_by_text("Show all partitions").click(timeout=3000)
    partitions = dialog.locator("input[type=text]").first
    partitions.fill(RELEASE_DATE)
    partitions.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    dialog.get_by_role("button", name="Launch 1 run").click()
    expect(dialog).to_be_hidden()
    page.goto(f"{url}/runs")
    page.locator("a[href^='/runs/']").first.click()
    expect(page.get_by_text(f"partition: {RELEASE_DATE}").first).to_be_visible()
    finished = page.get_by_text(re.compile(r"^RUN_(SUCCESS|FAILURE)$")).first  # in the event log
    expect(finished).to_be_visible(timeout=180_000)


def check_status(page, url: str, asset: str, check: str) -> str:
    page.goto(f"{url}/assets/{asset}?view=checks")
    page.get_by_text(check, exact=True).first.click()
    result = page.get_by_text(re.compile(r"^(Passed|Failed)$")).first
    expect(result).to_be_visible()
    return result.inner_text()


def test_release_from_the_ui_then_blocked_by_budget(tmp_path):
    data = make_data_dir(tmp_path / "data", users=2_000, **{"cohorts.min_size": K})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with ui_page(tmp_path, data) as (url, page):
        launch_release(page, url)
        shot(page, "1-release-run")
        expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()  # the run's status
        for asset, check in (
            ("privacy_budget_ledger", "budget_within_limit"),
            ("cohort_sizes", "min_cohort_size"),
        ):
            assert check_status(page, url, asset, check) == "Passed"
            shot(page, f"2-{check}-passed")

        page.goto(f"{url}/locations/{LOCATION}/asset-groups/privacy")
        for node in ("privacy_budget_ledger", "cohort_sizes"):
            expect(page.get_by_text(node, exact=True).first).to_be_visible()
        expect(page.get_by_text("3 / 3 Passed")).to_be_visible()  # the ledger's checks
        expect(page.get_by_text("1 / 1 Passed")).to_be_visible()  # min_cohort_size
        shot(page, "3-lineage")

        # The release's audit report renders in the UI, burn-down chart included.
        page.goto(f"{url}/assets/audit_report?view=partitions&partition={RELEASE_DATE}")
        page.get_by_text("[Show Markdown]").first.click()
        chart = page.get_by_role("dialog").get_by_role("img", name="budget burn-down")
        chart.scroll_into_view_if_needed()
        expect(chart).to_be_visible()
        assert chart.evaluate("img => img.naturalWidth") > 0  # the PNG decoded
        shot(page, "3-audit-report")

        # A new policy whose cap is below one release: the next launch must be refused. It
        # is launched from the daily_release job's graph, which leaves out the risk report
        # (~25 s of CPU that runs before the ledger step and is not under test here).
        write_policy(data, **{"cohorts.min_size": K, "budget.epsilon_cap": 0.5})
        launch_release(page, url, f"locations/{LOCATION}/jobs/daily_release")
        shot(page, "4-blocked-run")
        expect(page.get_by_text("RUN_FAILURE", exact=True)).to_be_visible()
        expect(page.get_by_text("Failure", exact=True).first).to_be_visible()
        # The run's failure event names the check that blocked it.
        expect(page.get_by_text("privacy_budget_ledger: budget_within_limit").first).to_be_visible()
        assert check_status(page, url, "privacy_budget_ledger", "budget_within_limit") == "Failed"
        shot(page, "5-budget_within_limit-failed")


def release_with_the_job(tmp_path: Path, data: Path, day: str) -> None:
    """`make release`'s command: a run of the daily_release job, filed under the location's
    job page."""
    tags = {"dagster/partition": day, ".dagster/repository": f"__repository__@{LOCATION}"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m",
         "cohort_pipeline.definitions", "-j", "daily_release", "--tags", json.dumps(tags)],
        cwd=REPO, env=dagster_env(tmp_path, data), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def shot(page, name: str) -> None:
    """A screenshot of the whole page once its queries have settled (the UI polls, so the
    wait is bounded; the assertions before it already hold)."""
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_load_state("networkidle", timeout=5_000)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def _rows(page) -> list[list[str]]:
    """Every table row on the page, as its cells' text."""
    return page.locator("tr").evaluate_all(
        "rows => rows.map(r => Array.from(r.cells).map(c => c.innerText.trim()))"
    )


def test_a_reviewer_reads_the_release_the_budget_and_the_automation(tmp_path, capsys):
    data = make_data_dir(tmp_path / "data", users=2_000, **{"cohorts.min_size": K})
    previous = (dt.date.fromisoformat(RELEASE_DATE) - dt.timedelta(days=1)).isoformat()
    # The latest date, then a backfill of the day before: the budget view must show the
    # ledger's figure, not the window ending on whichever date ran last.
    release_with_the_job(tmp_path, data, RELEASE_DATE)
    release_with_the_job(tmp_path, data, previous)
    with duckdb.connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        sizes = con.execute(
            "SELECT cohort_key, members, noisy_users, accuracy_95 FROM release.cohort_sizes "
            "WHERE release_date = ? ORDER BY cohort_key",
            [RELEASE_DATE],
        ).fetchall()
    capsys.readouterr()
    assert cli_main(["--data-dir", str(data), "ledger", "show", "--json"]) == 0  # in process
    ledger = json.loads(capsys.readouterr().out)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with ui_page(tmp_path, data) as (url, page):
        # Catalog -> cohort_sizes -> the release date: the per-cohort table keeps each cohort
        # key (which holds `|`) in its own cell, the size rounded to its accuracy.
        page.goto(f"{url}/assets/cohort_sizes?view=partitions&partition={RELEASE_DATE}")
        expect(page.get_by_text("Show schema").first).to_be_visible()
        key, members, noisy, accuracy = sizes[0]
        expected = [
            key,
            members,
            f"{round_to_accuracy(noisy, accuracy):g}",
            f"{round_half_width(accuracy):g}",
        ]
        cells = [r for r in _rows(page) if len(r) == 4 and r[0] == key]
        assert expected in cells, cells
        assert len({tuple(r) for r in _rows(page) if len(r) == 4}) >= len(sizes)
        shot(page, "6-catalog-cohort_sizes-table")

        # The asset's overview: freshness of the daily release and the described columns,
        # there before any materialization too (definition-time metadata).
        page.goto(f"{url}/assets/cohort_sizes")
        # the overview may show the policy both in its health panel and in its own section
        freshness = page.get_by_text("Freshness policy", exact=True).first
        expect(freshness).to_be_visible()
        expect(page.get_by_text("Passing", exact=True).first).to_be_visible()
        expect(page.get_by_text("DP count of users in the cohort (Laplace noise).")).to_be_visible()
        expect(page.get_by_text("warehouse.release.cohort_sizes").first).to_be_visible()
        shot(page, "7-catalog-cohort_sizes-columns-freshness")

        # The budget now, after the backfill: the ledger's own figure.
        page.goto(f"{url}/assets/privacy_budget_status")
        left = f"epsilon {ledger['epsilon_remaining']:.4f} left of"
        expect(page.get_by_text(left)).to_be_visible()
        expect(page.get_by_text(f"containing {ledger['as_of']})")).to_be_visible()
        shot(page, "8-catalog-privacy_budget_status")

        # Automation: the schedule and the automation-condition sensor are running.
        page.goto(f"{url}/automation")
        for name in ("daily_release_schedule", "default_automation_condition_sensor"):
            link = page.get_by_role("link", name=re.compile(rf"\b{name}\b"))
            # its row: a selection box first, the running toggle last
            row = link.locator("xpath=ancestor::*[.//input[@type='checkbox']][1]")
            expect(row.get_by_role("checkbox").last).to_be_checked()
        shot(page, "9-automation")

        # Jobs -> daily_release: both releases are its runs.
        page.goto(f"{url}/locations/{LOCATION}/jobs/daily_release/runs")
        for day in (RELEASE_DATE, previous):
            expect(page.get_by_text(f"partition: {day}").first).to_be_visible()
        expect(page.get_by_text("Success", exact=True)).to_have_count(2)
        shot(page, "10-jobs-daily_release-runs")
