"""Resources: where state lives and which device trains."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from ml_assets import runtime
from ml_assets.data.store import Store


class MLAssetsHome(dg.ConfigurableResource):
    """The one folder that holds landing data, the store, versions, models, reports and MLflow."""

    root: str = Field(
        default="", description="Home folder; empty means $ML_ASSETS_HOME or .ml_assets"
    )
    landing: str = Field(
        default="",
        description="Landing location to watch: a folder or s3://bucket/prefix; empty means "
        "$ML_ASSETS_LANDING, else <home>/landing",
    )
    s3_endpoint_url: str = Field(
        default="",
        description="S3 API address (MinIO, moto...); empty means $AWS_ENDPOINT_URL, else AWS",
    )
    s3_region: str = Field(default="", description="S3 region; empty means $AWS_REGION")
    aws_access_key_id: str = Field(
        default="", description="S3 key id (use EnvVar); empty means the AWS environment"
    )
    aws_secret_access_key: str = Field(
        default="", description="S3 secret (use EnvVar); empty means the AWS environment"
    )

    @property
    def path(self) -> Path:
        return Path(self.root).resolve() if self.root else runtime.home()

    @property
    def landing_location(self) -> str:
        """The landing setting, else $ML_ASSETS_LANDING, else <home>/landing."""
        from ml_assets.data.landing import landing_location

        return landing_location(self.landing, self.path)

    @property
    def landing_path(self) -> Path:
        """The landing folder, when the landing location is one (not S3)."""
        if self.landing_location.startswith("s3://"):
            raise ValueError(f"the landing location {self.landing_location} is not a folder")
        return Path(self.landing_location)

    def open_landing(self):
        """The landing location, listed and read through ``ml_assets.data.landing``; an S3 one
        through dagster-aws's S3Resource built from the settings above (empty: environment)."""
        from ml_assets.data.landing import open_landing

        return open_landing(self.landing_location, self.s3_client)

    def s3_client(self):
        from dagster_aws.s3 import S3Resource

        settings = {
            "endpoint_url": self.s3_endpoint_url,
            "region_name": self.s3_region,
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": self.aws_secret_access_key,
        }
        return S3Resource(**{k: v for k, v in settings.items() if v}).get_client()

    @property
    def store(self) -> Store:
        return Store(self.path / "store")

    def tables_dir(self, version: str) -> Path:
        return self.store.version_dir(version) / "tables"

    def export_dir(self, fmt: str, version: str) -> Path:
        return self.store.version_dir(version) / fmt

    def folds_path(self, version: str) -> Path:
        return self.store.version_dir(version) / "folds.parquet"

    def model_dir(self, kind: str, version: str, fold: int | None) -> Path:
        """A fold's model, or with ``fold=None`` the final model trained on every fold."""
        return (
            self.path
            / "models"
            / kind
            / version
            / (f"fold-{fold}" if fold is not None else "final")
        )

    def exports_dir(self, kind: str, version: str) -> Path:
        """The deployable export (ONNX, TorchScript) of a version's promoted model."""
        return self.path / "exports" / kind / version

    def predictions_dir(self, kind: str, version: str) -> Path:
        """A kind's champion's batch predictions over a version (or a folder) of images."""
        return self.path / "predictions" / kind / version

    def champion_path(self, kind: str) -> Path:
        """The record of a kind's current champion (the promoted final model)."""
        return self.path / "models" / kind / "champion.json"

    def run_dir(self, kind: str, version: str, fold: int | None) -> Path:
        """Where a training run checkpoints; it survives a crash so the next attempt resumes."""
        return (
            self.path / "runs" / kind / version / (f"fold-{fold}" if fold is not None else "final")
        )

    def evaluation_dir(self, kind: str, version: str, fold: int) -> Path:
        return self.path / "evaluations" / kind / version / f"fold-{fold}"

    def report_dir(self, kind: str, version: str) -> Path:
        return self.path / "reports" / kind / version

    def quality_dir(self, asset: str, version: str) -> Path:
        """What a quality asset (label issues, image issues, version diff...) found."""
        return self.path / "quality" / asset / version

    @property
    def mlflow_dir(self) -> Path:
        return self.path / "mlflow"


class TrainingDevice(dg.ConfigurableResource):
    """The accelerator training and evaluation use, and how the data loaders and seeds run."""

    device: str = Field(
        default="auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
    )
    threads: int = Field(
        default=0, description="CPU threads for torch; 0 means all this process may use"
    )
    workers: int | None = Field(
        default=None, description="Data loader workers for every kind; empty keeps each config's"
    )
    seed: int | None = Field(
        default=None, description="Seed for every kind; empty keeps each config's own seed"
    )
    deterministic: bool = Field(
        default=False, description="Deterministic algorithms (slower on GPUs, same results)"
    )

    def torch_device(self):
        """The torch device; sets torch's thread count and deterministic mode for this process."""
        from ml_assets.train.device import configure_threads, select_device, set_deterministic

        configure_threads(self.threads or None)
        set_deterministic(self.deterministic)
        return select_device(self.device)

    def overrides(self, config: dg.Config) -> dict:
        """The settings of this resource that replace a training config's own."""
        wanted = {"workers": self.workers, "seed": self.seed}
        return {k: v for k, v in wanted.items() if v is not None and k in type(config).model_fields}


class MLflowTracking(dg.ConfigurableResource):
    """MLflow for training runs (field names as in dagster-mlflow's resource). One MLflow run per
    model materialization, tagged with the Dagster run, asset, version and fold; one registered
    model per kind."""

    mlflow_tracking_uri: str = Field(
        default="",
        description="A tracking server's URI; empty means $ML_ASSETS_MLFLOW_URI when set, else a "
        "sqlite store with an artifact folder in <home>/mlflow",
    )
    artifact_root: str = Field(
        default="",
        description="Where a local store keeps artifacts: empty means <home>/mlflow/artifacts; "
        "an s3://bucket/prefix puts them on S3 (endpoint and keys from the AWS environment)",
    )
    ui_url: str = Field(
        default="",
        description="Address of the MLflow UI that links open; empty means the tracking "
        "server's URI when it is http(s), else $ML_ASSETS_MLFLOW_UI (the Makefile sets it from "
        "MLFLOW_PORT), else mlflow ui's default address",
    )
    enabled: bool = Field(default=True, description="Track training runs in MLflow")

    def tracking(self, local_folder: Path):
        """Where runs go and the UI address their links use, read from the settings and the
        environment now; None when tracking is off."""
        import os

        from ml_assets.train.tracking import Tracking, ui_address

        if not self.enabled:
            return None
        # Not $MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() writes that variable itself, so
        # it would carry one home's store into the next run of the same process.
        uri = self.mlflow_tracking_uri or os.environ.get("ML_ASSETS_MLFLOW_URI", "")
        artifacts = self.artifact_root or os.environ.get("ML_ASSETS_MLFLOW_ARTIFACTS", "")
        ui = ui_address(self.ui_url, uri)
        return Tracking(uri, ui=ui) if uri else Tracking.local(local_folder, artifacts, ui)
