"""Shared fixtures. Every test runs with its own ML_ASSETS_HOME; the fold dimension has k=2."""

import os
import shutil
import tempfile

# The tests build their code location with 2 folds (pipelines.LOCATION_SETTINGS); the processes
# they start (dagster dev, the daemon, runs) build it from the environment: 2 folds there too.
os.environ["ML_ASSETS_FOLDS"] = "2"
# Library settings (ultralytics, Hugging Face) go to a throwaway home, not the user's.
os.environ["ML_ASSETS_HOME"] = tempfile.mkdtemp(prefix="ml_assets_tests_")
# Settings of a user's shell (what make exports for demo, train and ui) would narrow what the
# tests build: every kind, the default MLflow link.
for variable in (
    "YOLO_CONFIG_DIR",
    "HF_HOME",
    "TORCH_HOME",
    "MPLCONFIGDIR",
    "ML_ASSETS_KINDS",
    "ML_ASSETS_MLFLOW_UI",
):
    os.environ.pop(variable, None)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from real_sets import write_digits  # noqa: E402

from ml_assets.data.sample import write_sample  # noqa: E402


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("ML_ASSETS_HOME", str(folder))
    monkeypatch.setenv("DAGSTER_HOME", str(folder / "dagster"))
    (folder / "dagster").mkdir(parents=True)
    return folder


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> Path:
    """A dozen 48-pixel images in COCO layout: treat as read-only."""
    return write_sample(tmp_path_factory.mktemp("sample") / "shapes", images=12, seed=3, size=48)


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, to prove a folder was left unchanged."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def landed(tmp_path, tiny_sample):
    """A landing folder holding a copy of the tiny sample, and a home resource watching it."""
    from ml_assets.defs.resources import MLAssetsHome

    landing = tmp_path / "landing"
    shutil.copytree(tiny_sample, landing)
    return landing, MLAssetsHome(root=str(tmp_path / "home"), landing=str(landing))


@pytest.fixture(name="tree_digest")
def tree_digest_fixture():
    return tree_digest


# Real public datasets nobody here wrote (Ultralytics' coco8, coco8-seg, imagenet10; see its
# SOURCES.md), beside the checkout in ../shared/data/real, or where ML_ASSETS_REAL_DATA says.
REAL_DATA = Path(
    os.environ.get("ML_ASSETS_REAL_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
)


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path:
    """A copy of the real public datasets (the originals are never handed to a test)."""
    if not (REAL_DATA / "coco8").is_dir():
        pytest.skip(f"the real public datasets are not at {REAL_DATA} (set ML_ASSETS_REAL_DATA)")
    copy = tmp_path_factory.mktemp("real")
    for name in ("coco8", "coco8-seg", "imagenet10"):
        shutil.copytree(REAL_DATA / name, copy / name)
    return copy


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Path:
    """All 1,797 digits as ``<digit>/<index>.png`` (read-only for tests)."""
    return write_digits(tmp_path_factory.mktemp("digits") / "digits")
