"""One place that keeps the ML libraries offline and inside our home.

``configure()`` must run before ultralytics, transformers, peft, mlflow or albumentations are
imported: they read these settings at import time. ``ml_assets/__init__.py`` calls it, so any
import of this package (assets, CLI, tests) applies it first. It never imports those libraries.
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

HOME_ENV = "ML_ASSETS_HOME"


def home() -> Path:
    """The folder that holds all state: landing, store, versions, runs, MLflow, Dagster."""
    return Path(os.environ.get(HOME_ENV, ".ml_assets")).expanduser().resolve()


_OFFLINE_ENV = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "False",
    "YOLO_VERBOSE": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TQDM_DISABLE": "1",
}


def configure(root: Path | None = None) -> Path:
    """Set the environment so no library reaches the network or writes outside ``root``.

    Returns the folder used for ultralytics' settings. Idempotent; explicit user settings win.
    """
    root = Path(root) if root else home()
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    config_dir = root / "config"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir / "ultralytics"))
    os.environ.setdefault("HF_HOME", str(config_dir / "huggingface"))
    os.environ.setdefault("TORCH_HOME", str(config_dir / "torch"))
    os.environ.setdefault("MPLCONFIGDIR", str(config_dir / "matplotlib"))
    return Path(os.environ["YOLO_CONFIG_DIR"])


@cache
def ultralytics_ready() -> None:
    """Place a local font and turn off every ultralytics integration; call before training.

    Imports ultralytics (slow), so it is called from the functions that train, not at import.
    """
    config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or configure())
    fonts = config_dir / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(dejavu, fonts / name)

    from ultralytics import settings

    settings.update(
        {
            "sync": False,
            "mlflow": False,
            "clearml": False,
            "comet": False,
            "dvc": False,
            "raytune": False,
            "tensorboard": False,
            "wandb": False,
            "vscode_msg": False,
            "openvino_msg": False,
            "datasets_dir": str(config_dir.parent.parent / "datasets"),
            "weights_dir": str(config_dir.parent.parent / "weights"),
            "runs_dir": str(config_dir.parent.parent / "runs"),
        }
    )
