"""The UI in a real browser: headless Chromium (Debian's package) driven by Playwright.

After a tiny ``ml-assets demo`` (classifier only: ``ML_ASSETS_KINDS=classifier`` for the demo and
the UI alike), `dagster dev` serves the instance; the browser finds the asset graph, reads the
report's metrics, launches a materialization and executes an asset check from the UI and sees
both succeed, and finds the demo's runs on the job's page. Screenshots go to the test's tmp
folder.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dev_server import ROOT, dagster_dev, graphql
from servers import free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Chromium is missing: `apt-get install -y chromium` (Debian's package; "
        "Playwright drives /usr/bin/chromium, never a downloaded browser)",
    ),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KINDS = {"ML_ASSETS_KINDS": "classifier"}
REPOSITORY = {"repositoryName": "__repository__", "repositoryLocationName": "ml_assets"}

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results {
      runId jobName status tags { key value } pipelineSnapshotId parentPipelineSnapshotId
      repositoryOrigin { repositoryName repositoryLocationName }
    } }
  }
}"""
JOBS = """
query Jobs($repo: RepositorySelector!) {
  repositoryOrError(repositorySelector: $repo) {
    ... on Repository { jobs { name pipelineSnapshotId } }
  }
}"""
LATEST_CHECKS = """
query Latest($asset: AssetKeyInput!) {
  assetNodeOrError(assetKey: $asset) { ... on AssetNode { assetChecksOrError {
    ... on AssetChecks { checks { name executionForLatestMaterialization { status runId } } }
  } } }
}"""
CHECK_EXECUTIONS = """
query Checks($asset: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $asset, checkName: $name, limit: 5) {
    runId status evaluation { partition }
  }
}"""


def run_demo_subprocess(home: Path) -> None:
    env = {
        **os.environ,
        **KINDS,
        "ML_ASSETS_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    command = [str(Path(sys.executable).parent / "ml-assets"), "demo", "--images", "12"]
    command += ["--folds", "2", "--epochs", "1", "--models", "classifier"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def runs(port: int, **filters) -> list[dict]:
    return graphql(port, RUNS, {"filter": filters})["runsOrError"]["results"]


def finished(port: int, run_ids: set[str]) -> list[dict] | None:
    found = [r for r in runs(port, runIds=sorted(run_ids))]
    done = [r for r in found if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
    return done if len(done) == len(run_ids) else None


def new_run_ids(port: int, before: set[str]) -> set[str] | None:
    return {r["runId"] for r in runs(port)} - before or None


def launch_all_partitions(page, base: str, port: int, asset: str, shots: Path) -> dict:
    """Materialize ``asset`` from its page for every partition (the demo made one); wait for
    the run and return it."""
    from playwright.sync_api import expect

    before = {r["runId"] for r in runs(port)}
    page.goto(f"{base}/assets/{asset}")
    page.locator("button", has_text="Materialize").first.click()
    page.get_by_role("button", name="All", exact=True).click()
    launch = page.locator("button", has_text=re.compile(r"^Launch")).last
    expect(launch).to_be_enabled()
    page.screenshot(path=str(shots / f"launch_{asset}.png"))
    launch.click()
    launched = wait_for(f"the run of {asset}", lambda: new_run_ids(port, before), 120)
    (run,) = wait_for(f"the run of {asset} to end", lambda: finished(port, launched), 600, 3)
    assert run["status"] == "SUCCESS", run
    return run


@pytest.mark.slow
def test_a_new_user_operates_the_pipeline_in_a_real_browser(home, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    run_demo_subprocess(home)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with dagster_dev(home, port, env=KINDS), sync_playwright() as playwright:
        # The demo's runs are runs of the code location: the UI files them under their job.
        jobs = graphql(port, JOBS, {"repo": REPOSITORY})["repositoryOrError"]["jobs"]
        snapshots = {j["name"]: j["pipelineSnapshotId"] for j in jobs}
        demo_runs = runs(port)
        (version,) = {
            t["value"]
            for r in demo_runs
            for t in r["tags"]
            if t["key"] == "dagster/partition/version"
        }
        assert {r["jobName"] for r in demo_runs} == {
            "ingest_job",
            "training_job",
            "report_job",
            "quality_job",
        }
        # ... and of the same job snapshot, so re-executing one raises no "may be a different
        # version of the job" warning (a run of a subset records its job's as its parent).
        for run in demo_runs:
            assert run["repositoryOrigin"] == REPOSITORY
            snapshot = run["parentPipelineSnapshotId"] or run["pipelineSnapshotId"]
            assert snapshot == snapshots[run["jobName"]], run

        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(60_000)
        try:
            # The asset graph, with the pipeline's stages.
            page.goto(f"{base}/asset-groups")
            expect(page.get_by_text("Global asset lineage")).to_be_visible()
            for group in ("data", "training", "evaluation", "reports"):
                expect(page.get_by_text(group, exact=True).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "lineage.png"))

            # The report leads with the decision, and its report.html opens in the MLflow UI.
            page.goto(f"{base}/assets/classifier_report")
            decision = re.compile(r"^(promotable: macro_f1 |not promotable: )")
            expect(page.get_by_text(decision)).to_be_visible()
            expect(page.get_by_text("mean_macro_f1", exact=True)).to_be_visible()
            expect(page.get_by_text("report_html", exact=True)).to_be_visible()
            expect(page.get_by_text("per_fold", exact=True)).to_be_visible()
            expect(page.get_by_text("Owners", exact=True)).to_be_visible()
            expect(page.get_by_text(re.compile(r"Open models\.py"))).to_be_visible()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

            # A materialization launched from the UI succeeds.
            run = launch_all_partitions(page, base, port, "raw_dataset", tmp_path)
            page.goto(f"{base}/runs/{run['runId']}")
            expect(page.get_by_text("Success").first).to_be_visible()
            page.screenshot(path=str(tmp_path / "materialized.png"))

            # Asset checks run for the partition chosen. Dagster 1.13 cannot yet execute a check
            # of a partitioned asset on its own (its Execute button says so): materializing the
            # asset for a partition runs its checks for that partition, as here.
            page.goto(f"{base}/assets/folds?view=checks")
            execute = page.locator("button", has_text=re.compile(r"^Execute$")).first
            expect(execute).to_be_disabled()
            run = launch_all_partitions(page, base, port, "folds", tmp_path)
            executions = graphql(
                port,
                CHECK_EXECUTIONS,
                {"asset": {"path": ["folds"]}, "name": "folds_are_disjoint"},
            )["assetCheckExecutions"]
            latest = next(e for e in executions if e["runId"] == run["runId"])
            assert latest["status"] == "SUCCEEDED", latest
            assert latest["evaluation"]["partition"] == version
            page.goto(f"{base}/assets/folds?view=checks")
            expect(page.get_by_text("Passed").first).to_be_visible()
            expect(page.get_by_text(version).first).to_be_visible()
            page.screenshot(path=str(tmp_path / "check_passed.png"))

            # "Execute all" (the only clickable button there) launches a run naming no
            # partition: it succeeds, the check is skipped, and the asset stays healthy.
            before = {r["runId"] for r in runs(port)}
            execute_all = page.locator("button", has_text=re.compile(r"Execute all"))
            assert execute_all.count(), page.locator("button").all_inner_texts()
            execute_all.first.click()
            launched = wait_for("the checks' run", lambda: new_run_ids(port, before), 120)
            (checks_run,) = wait_for("it to end", lambda: finished(port, launched), 300, 3)
            assert checks_run["status"] == "SUCCESS", checks_run
            executions = graphql(
                port,
                CHECK_EXECUTIONS,
                {"asset": {"path": ["folds"]}, "name": "folds_are_disjoint"},
            )["assetCheckExecutions"]
            skipped = next(e for e in executions if e["runId"] == checks_run["runId"])
            assert skipped["status"] == "SKIPPED" and skipped["evaluation"] is None, skipped
            # What the graph colours the asset by: its checks' results for its latest
            # materialization; the click's skipped run must not turn them into a failure.
            node = graphql(port, LATEST_CHECKS, {"asset": {"path": ["folds"]}})
            (check,) = node["assetNodeOrError"]["assetChecksOrError"]["checks"]
            assert check["executionForLatestMaterialization"]["status"] != "FAILED", check
            page.goto(f"{base}/assets/folds?view=checks")
            expect(page.get_by_text("Succeeded").first).to_be_visible()  # still green
            expect(page.get_by_text("Skipped").first).to_be_visible()  # the click's run
            page.screenshot(path=str(tmp_path / "checks_executed_without_partition.png"))
            page.goto(f"{base}/assets/folds?view=lineage")
            expect(page.get_by_text("annotations", exact=True).first).to_be_visible()
            expect(page.get_by_text("1 / 1 Passed").first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / "folds_lineage.png"))

            # The demo's runs on the job's page, whose header tells automation's true state.
            page.goto(f"{base}/locations/ml_assets/jobs/training_job/runs")
            expect(page.get_by_text("ml_assets/trigger: demo").first).to_be_visible()
            expect(page.get_by_text("Auto-materialize on").first).to_be_visible()
            assert page.get_by_text("No runs found").count() == 0
            page.screenshot(path=str(tmp_path / "job_runs.png"))
        finally:
            page.screenshot(path=str(tmp_path / "last.png"))
            browser.close()
