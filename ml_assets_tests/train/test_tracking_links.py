"""Links that open: the MLflow UI address is a setting (the resource's ui_url, a tracking
server's own address, $ML_ASSETS_MLFLOW_UI that `make ui` exports from MLFLOW_PORT), and a
report logged to MLflow is served by a real `mlflow ui` at the page the link names."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from dev_server import stop_group
from servers import free_port, wait_for

from ml_assets.defs.resources import MLflowTracking
from ml_assets.train.tracking import DEFAULT_UI, UI_ENV, Tracking, ui_address

RUN = SimpleNamespace(info=SimpleNamespace(experiment_id="7", run_id="abc123"))
PAGE = "/#/experiments/7/runs/abc123"
UI_BUNDLE = Path(importlib.util.find_spec("mlflow").origin).parent / "server/js/build/static/js"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A local MLflow store's folder, its tables made once (MLflow's migrations take seconds)."""
    folder = tmp_path_factory.mktemp("mlflow")
    Tracking.local(folder)
    return folder


@pytest.fixture(autouse=True)
def no_ui_setting(monkeypatch):
    monkeypatch.delenv(UI_ENV, raising=False)
    monkeypatch.delenv("ML_ASSETS_MLFLOW_URI", raising=False)


def test_the_address_is_the_setting_then_the_server_then_the_environment(monkeypatch):
    assert ui_address() == DEFAULT_UI
    monkeypatch.setenv(UI_ENV, "http://127.0.0.1:5123/")
    assert ui_address() == "http://127.0.0.1:5123"
    assert ui_address(uri="sqlite:////tmp/mlflow.db") == "http://127.0.0.1:5123"
    assert ui_address(uri="https://mlflow.example.com/") == "https://mlflow.example.com"
    assert ui_address("http://proxy:8080", "https://mlflow.example.com") == "http://proxy:8080"


def test_links_follow_the_resource_setting(store, tmp_path, monkeypatch):
    local = MLflowTracking(ui_url="http://mlflow.team:8000").tracking(store)
    assert local.uri.startswith("sqlite:///") and local.url(RUN) == f"http://mlflow.team:8000{PAGE}"

    monkeypatch.setenv(UI_ENV, "http://127.0.0.1:5123")  # what `make ui MLFLOW_PORT=5123` exports
    store = MLflowTracking(mlflow_tracking_uri=local.uri)  # the same store, named: not re-made
    assert store.tracking(tmp_path).url(RUN) == f"http://127.0.0.1:5123{PAGE}"

    server = MLflowTracking(mlflow_tracking_uri="http://mlflow.example:8080").tracking(tmp_path)
    assert server.url(RUN) == f"http://mlflow.example:8080{PAGE}"
    artifact = server.url(RUN, "report/report.html")
    assert artifact == f"http://mlflow.example:8080{PAGE}/artifacts/report/report.html"
    assert MLflowTracking(enabled=False).tracking(tmp_path) is None


def test_a_torchrun_worker_rebuilds_the_same_links(tmp_path, monkeypatch):
    """Training under torchrun sends the tracking settings to rank 0 as a dict (vars)."""
    monkeypatch.setenv(UI_ENV, "http://127.0.0.1:5123")
    sent = vars(MLflowTracking(mlflow_tracking_uri="sqlite:///x.db").tracking(tmp_path))
    monkeypatch.setenv(UI_ENV, "http://elsewhere:1")  # the worker's environment differs
    rebuilt = Tracking(sent["uri"], sent["artifacts"] or None, sent["ui"])
    assert rebuilt.url(RUN) == f"http://127.0.0.1:5123{PAGE}"


def test_the_installed_ui_routes_artifact_pages_as_we_link_them():
    """MLflow's UI (a hash router) opens ``#/experiments/E/runs/R/artifacts/<path>`` as the run
    page's artifacts tab with ``<path>`` selected; its artifact viewer fetches the file from
    ``get-artifact?path=<path>&run_uuid=R`` (the route the served-report test below reads)."""
    main = next(UI_BUNDLE.glob("main.*.js")).read_text()
    assert '"/experiments/:experimentId/runs/:runUuid/*"' in main
    assert re.search(r'getRunPageTabRoute\(\w,\w,\["artifacts",\w\]\.join\("/"\)\)', main)
    assert 'get-artifact")}?path=${encodeURIComponent(' in main


@contextlib.contextmanager
def mlflow_ui(uri: str, port: int, log: Path):
    """`mlflow ui` on ``uri``, on loopback, stopped with everything it started; one worker and
    no job runner (a pool of processes each importing mlflow: 10 s more to start)."""
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:

            def up() -> bool:
                assert process.poll() is None, log.read_text()
                with contextlib.suppress(requests.RequestException):
                    return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
                return False

            wait_for("mlflow ui", up, timeout=90, every=0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_group(process, grace_s=10)


def test_a_logged_report_is_served_at_its_link(store, tmp_path):
    port = free_port()
    tracking = Tracking.local(store, ui=f"http://127.0.0.1:{port}")
    report = tmp_path / "report"
    report.mkdir()
    html = "<!doctype html><html><body><h1>classifier report</h1></body></html>\n"
    (report / "report.html").write_text(html)
    (report / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    url = tracking.log_report("image_classifier", "v1", report, {"mean_macro_f1": 0.9})

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.uri)
    experiment = client.get_experiment_by_name("image_classifier_reports")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "v1"
    assert run.data.tags["kind"] == "image_classifier" and run.data.tags["version"] == "v1"
    assert run.data.metrics == {"mean_macro_f1": 0.9}
    assert url == (
        f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs/"
        f"{run.info.run_id}/artifacts/report/report.html"
    )

    with mlflow_ui(tracking.uri, port, tmp_path / "mlflow-ui.log") as address:
        assert url.startswith(address)
        page = requests.get(url.split("#")[0], timeout=10)  # the UI's single page
        assert page.ok and "<!doctype html>" in page.text.lower()
        served = requests.get(
            f"{address}/get-artifact",
            params={"path": "report/report.html", "run_uuid": run.info.run_id},
            timeout=10,
        )
        assert served.ok and served.headers["content-type"].startswith("text/html")
        assert served.text == html
        listed = requests.get(
            f"{address}/ajax-api/2.0/mlflow/artifacts/list",
            params={"run_id": run.info.run_id, "path": "report"},
            timeout=10,
        ).json()
        assert {f["path"] for f in listed["files"]} == {
            "report/report.html",
            "report/confusion_matrix.png",
        }
