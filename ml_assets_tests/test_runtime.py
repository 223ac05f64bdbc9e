import os
import subprocess
import sys
from pathlib import Path

from ml_assets import runtime


def test_configure_points_every_library_into_the_home(tmp_path):
    code = (
        "import os, ml_assets; "
        "print(os.environ['YOLO_CONFIG_DIR']); print(os.environ['HF_HOME']); "
        "print(os.environ['HF_HUB_OFFLINE'], os.environ['YOLO_OFFLINE'], os.environ['NO_ALBUMENTATIONS_UPDATE'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"YOLO_CONFIG_DIR", "HF_HOME"}}
    env["ML_ASSETS_HOME"] = str(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    yolo_dir, hf_home, flags = out.stdout.splitlines()
    assert Path(yolo_dir).is_relative_to(tmp_path) and Path(hf_home).is_relative_to(tmp_path)
    assert flags == "1 1 1"
    assert list(tmp_path.iterdir()) == []  # configuring writes nothing


def test_ultralytics_gets_a_local_font_and_no_callbacks():
    runtime.ultralytics_ready()
    from ultralytics import settings

    fonts = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    assert (fonts / "Arial.ttf").stat().st_size > 100_000
    assert (fonts / "Arial.Unicode.ttf").is_file()
    assert not any(
        settings[k]
        for k in ("sync", "mlflow", "clearml", "comet", "dvc", "raytune", "wandb", "tensorboard")
    )
