"""End to end in a real browser: `dagster dev` on a free port with a temporary DAGSTER_HOME
and data folder, driven through the UI by headless Debian Chromium (never a downloaded
browser). A release launched from the lineage page succeeds with both blocking checks
passed; under a policy whose cap one release cannot fit, the same launch is blocked by
`budget_within_limit`. Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import contextlib
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

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

from cohort_pipeline.alerts import WEBHOOK_ENV
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
LOCATION = "cohort_pipeline.definitions"
K = 50  # a small sample (2k users) keeps cohorts above k with a lowered k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dagster_dev(tmp_path: Path, data: Path):
    """`dagster dev` in its own process group; yields the UI's URL, then stops the whole
    group (webserver, daemon, code servers, runs) and waits for it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_instance.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "COHORT_PIPELINE_DATA_DIR": str(data)}
    env.pop(WEBHOOK_ENV, None)
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


def launch_release(page, url: str) -> None:
    """Lineage page -> Materialize all -> the release date's partition -> launch; then open
    the new run and wait until it has finished."""
    page.goto(f"{url}/asset-groups")
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
    shot = lambda page, name: page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)  # noqa: E731
    with dagster_dev(tmp_path, data) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # Dismissed up front (as its Skip button would) so no modal covers a dialog mid-test.
        page.add_init_script("localStorage.setItem('communityNux', JSON.stringify('1'))")
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)  # a loaded CI machine renders slowly

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

        # A new policy whose cap is below one release: the next launch must be refused.
        write_policy(data, **{"cohorts.min_size": K, "budget.epsilon_cap": 0.5})
        launch_release(page, url)
        shot(page, "4-blocked-run")
        expect(page.get_by_text("RUN_FAILURE", exact=True)).to_be_visible()
        expect(page.get_by_text("Failure", exact=True).first).to_be_visible()
        # The run's failure event names the check that blocked it.
        expect(page.get_by_text("privacy_budget_ledger: budget_within_limit").first).to_be_visible()
        assert check_status(page, url, "privacy_budget_ledger", "budget_within_limit") == "Failed"
        shot(page, "5-budget_within_limit-failed")
        browser.close()
