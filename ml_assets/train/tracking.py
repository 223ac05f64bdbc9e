"""MLflow tracking: by default a sqlite store and an artifact folder in our home (no server);
a tracking server when one is configured.

Browse the local store with ``make mlflow`` (``mlflow ui`` on the same store); each run's address
is :meth:`Tracking.url`, on the UI that :func:`ui_address` names. Every model kind registers its
trained models under one registered model named after the kind; reports are logged as runs of
``<kind>_reports`` whose artifacts the UI shows (:meth:`Tracking.log_report`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

UI_ENV = "ML_ASSETS_MLFLOW_UI"
"""The environment variable naming the MLflow UI address (the Makefile sets it from MLFLOW_PORT)."""
DEFAULT_UI = "http://127.0.0.1:5000"
"""``mlflow ui``'s own default address."""
REPORT_ARTIFACTS = "report"
"""Where a report folder goes among its run's artifacts."""


def ui_address(ui: str = "", uri: str = "") -> str:
    """The MLflow UI address links point at: ``ui`` when set; else the tracking ``uri`` when it
    is a server (http or https: its UI is at the same address); else ``$ML_ASSETS_MLFLOW_UI``;
    else ``mlflow ui``'s default. Read when called, never at import."""
    if ui:
        return ui.rstrip("/")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return (os.environ.get(UI_ENV) or DEFAULT_UI).rstrip("/")


def tracking_uri(folder: Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


@dataclass(frozen=True)
class Tracking:
    """Where runs go: ``uri`` is an MLflow tracking URI; ``artifacts`` the root URI of the
    artifacts of new experiments (a local folder's ``file://`` URI or ``s3://bucket/prefix``;
    None: the server decides); ``ui`` the MLflow UI address links point to (empty: see
    :func:`ui_address`)."""

    uri: str
    artifacts: str | None = None
    ui: str = ""

    @classmethod
    def local(cls, folder: Path, artifacts: str = "", ui: str = "") -> Tracking:
        """The sqlite store in ``folder``, artifacts in ``folder/artifacts`` or at ``artifacts``
        (an ``s3://`` URI: MLflow reads the endpoint and keys from the AWS environment and
        MLFLOW_S3_ENDPOINT_URL). A new store's tables are created here, once, under a file
        lock: MLflow's own set-up races when several runs open a fresh store at once
        ("table _alembic_tmp_experiments already exists")."""
        import fcntl

        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        uri = tracking_uri(folder)
        ready = folder / ".initialized"
        if not ready.exists():
            with open(folder / ".init.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not ready.exists():
                    from mlflow.tracking import MlflowClient

                    MlflowClient(uri).search_experiments(max_results=1)  # creates the tables
                    ready.touch()
        return cls(uri, artifacts or (folder / "artifacts").as_uri(), ui)

    @contextlib.contextmanager
    def run(self, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator:
        """Start an MLflow run (setting MLflow's process-wide tracking URI to ours); it ends
        when the block does, marked failed if the block raised."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            location = f"{self.artifacts.rstrip('/')}/{experiment}" if self.artifacts else None
            # Another run may create it first: then it is simply looked up below.
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                mlflow.create_experiment(experiment, artifact_location=location)
            found = mlflow.get_experiment_by_name(experiment)
        with mlflow.start_run(
            experiment_id=found.experiment_id, run_name=run_name, tags=tags
        ) as run:
            yield run

    def url(self, run, artifact: str = "") -> str:
        """The MLflow UI page of ``run``; with ``artifact`` (a path among its artifacts), the
        run's artifact viewer showing that file (the UI renders HTML, images and text there)."""
        page = f"{ui_address(self.ui, self.uri)}/#/experiments/{run.info.experiment_id}/runs/"
        page += run.info.run_id
        return f"{page}/artifacts/{artifact}" if artifact else page

    def log_report(
        self, kind: str, version: str, folder: Path, metrics: dict[str, float] | None = None
    ) -> str:
        """Log a report ``folder`` (``report.html`` and its files) as the artifacts, under
        ``report/``, of a new run named ``version`` in the experiment ``<kind>_reports``, tagged
        with the kind and version, with the finite ``metrics``; returns the address of the UI
        page that shows its ``report.html``."""
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        tags = {"kind": kind, "version": version}
        with self.run(f"{kind}_reports", version, tags) as run:
            client = MlflowClient(self.uri)
            client.log_artifacts(run.info.run_id, str(folder), REPORT_ARTIFACTS)
            now = int(time.time() * 1000)
            finite = [
                Metric(name, float(value), now, 0)
                for name, value in (metrics or {}).items()
                if value is not None and math.isfinite(value)
            ]
            client.log_batch(run.info.run_id, metrics=finite)
        return self.url(run, f"{REPORT_ARTIFACTS}/report.html")

    def register(self, name: str, run, artifact_path: str = "model") -> str:
        """Register the run's ``artifact_path`` as a new version of the model ``name``."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        with contextlib.suppress(MlflowException):  # it exists already
            client.create_registered_model(name)
        version = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/{artifact_path}", run_id=run.info.run_id
        )
        return str(version.version)

    def set_alias(self, name: str, run_id: str, alias: str) -> str:
        """Point the registered model ``name``'s ``alias`` at the version made from ``run_id``;
        returns that version."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if not found:
            raise LookupError(f"no version of registered model {name!r} comes from run {run_id}")
        version = str(max(int(v.version) for v in found))
        client.set_registered_model_alias(name, alias, version)
        return version
