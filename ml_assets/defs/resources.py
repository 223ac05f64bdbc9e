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
        default="", description="Landing folder to watch; empty means <home>/landing"
    )

    @property
    def path(self) -> Path:
        return Path(self.root).resolve() if self.root else runtime.home()

    @property
    def landing_path(self) -> Path:
        return Path(self.landing).resolve() if self.landing else self.path / "landing"

    @property
    def store(self) -> Store:
        return Store(self.path / "store")

    def tables_dir(self, version: str) -> Path:
        return self.store.version_dir(version) / "tables"

    def export_dir(self, fmt: str, version: str) -> Path:
        return self.store.version_dir(version) / fmt

    def folds_path(self, version: str) -> Path:
        return self.store.version_dir(version) / "folds.parquet"

    def model_dir(self, kind: str, version: str, fold: int) -> Path:
        return self.path / "models" / kind / version / f"fold-{fold}"

    def evaluation_dir(self, kind: str, version: str, fold: int) -> Path:
        return self.path / "evaluations" / kind / version / f"fold-{fold}"

    def report_dir(self, kind: str, version: str) -> Path:
        return self.path / "reports" / kind / version

    @property
    def mlflow_dir(self) -> Path:
        return self.path / "mlflow"


class TrainingDevice(dg.ConfigurableResource):
    """The accelerator training and evaluation use: CUDA when present, else the CPU."""

    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    threads: int = Field(
        default=0, description="CPU threads for torch; 0 means all this process may use"
    )

    def torch_device(self):
        from ml_assets.train.device import configure_threads, select_device

        configure_threads(self.threads or None)
        return select_device(self.device)
