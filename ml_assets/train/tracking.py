"""MLflow tracking in our home: a sqlite backend and a local artifact folder, no server needed.

Browse with ``make mlflow`` (``mlflow ui`` on the same store); each run's address is
:func:`run_url`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

UI_ADDRESS = "http://127.0.0.1:5000"


def tracking_uri(folder: Path) -> str:
    return f"sqlite:///{Path(folder).resolve() / 'mlflow.db'}"


@contextlib.contextmanager
def mlflow_run(folder: Path, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator:
    """Start an MLflow run in ``folder``'s store; ends it (failed if the block raised)."""
    import mlflow

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(folder))
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        # Another run may create it first: then it is simply looked up below.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(
                experiment, artifact_location=(folder / "artifacts" / experiment).as_uri()
            )
        found = mlflow.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        yield run


def run_url(run) -> str:
    return f"{UI_ADDRESS}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
